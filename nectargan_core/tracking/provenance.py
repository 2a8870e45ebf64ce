"""Provenance of a run: the git commit, the params hash and the checkpoint hash that tie tools together."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from nectargan_core.settings import Settings


def params_hash(settings: Settings) -> str:
    return hashlib.sha256(json.dumps(settings.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def git_commit(project_dir: Path) -> str:
    """HEAD of the project's git repo, with '-dirty' when tracked files are modified; 'unknown' outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_dir, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def file_md5(path: Path) -> str:
    """MD5 of the file's bytes: what DVC records as the hash of a file output."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_tags(settings: Settings, project_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """One id across tools: git commit, params hash, DVC experiment name (and the caller's, e.g. Prefect)."""
    tags = {"git_commit": git_commit(project_dir), "params_hash": params_hash(settings)}
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = exp
    return {**tags, **(extra or {})}
