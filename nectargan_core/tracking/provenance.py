"""Provenance of a run: the git commit, the params hash and the checkpoint hash that tie tools together."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

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


@dataclass(frozen=True)
class TrainingData:
    """The data a run trained on, as MLflow's dataset input shows it: the runs table's Dataset column."""

    name: str
    digest: str
    source: str


def training_data(settings: Settings, project_dir: Path) -> TrainingData:
    """``data.root``: its folder name, DVC's md5 of it where dvc.lock (or ``ROOT.dvc``) records one that
    still fits the folder (same file count and bytes), else a digest of its file names, sizes and mtimes
    (cheap: no file is read)."""
    root = Path(settings.data.root).resolve()
    files = sorted(path for path in root.rglob("*") if path.is_file()) if root.is_dir() else []
    listing = [(str(path.relative_to(root)), path.stat()) for path in files]
    size = sum(stat.st_size for _, stat in listing)
    recorded = _dvc_record(root, project_dir.resolve())
    if recorded is not None and recorded.get("nfiles") == len(listing) and recorded.get("size") == size:
        digest = str(recorded["md5"])
    else:
        text = json.dumps([(name, stat.st_size, stat.st_mtime_ns) for name, stat in listing])
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    return TrainingData(root.name, digest, str(root))


def _dvc_record(root: Path, project_dir: Path) -> dict | None:
    """DVC's entry (md5, size, nfiles) for the folder ``root``: an out or dep of dvc.lock, or ``ROOT.dvc``."""
    candidates: list[tuple[Path, dict]] = []
    for lock, base in ((project_dir / "dvc.lock", project_dir), (root.with_name(root.name + ".dvc"), root.parent)):
        try:
            tree = yaml.safe_load(lock.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        stages = tree.get("stages", {}).values() if "stages" in tree else [tree]
        candidates += [
            (base / entry["path"], entry)
            for stage in stages
            if isinstance(stage, dict)
            for entry in (stage.get("outs") or []) + (stage.get("deps") or [])
            if isinstance(entry, dict) and "path" in entry and "md5" in entry
        ]
    return next((entry for path, entry in candidates if path.resolve() == root), None)
