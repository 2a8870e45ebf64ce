"""Where the bytes of a project are: the run folder, the stage outputs, the DVC cache and remote, and
each MLflow run (its artifacts and its logged models).

Hard links are counted once: with DVC's hardlink cache a checkpoint in outputs/ and its cache
entry are one file, and the total says so.
"""

from __future__ import annotations

import configparser
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nectargan_core.layout import RunPaths
from nectargan_core.settings import Settings


@dataclass(frozen=True)
class DiskRow:
    what: str
    where: str
    files: int
    bytes: int


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
    elif root.is_dir():
        yield from (p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _row(what: str, root: Path, seen: set[tuple[int, int]], base: Path = Path()) -> tuple[DiskRow, int]:
    """The row (every file of ``root``, relative to ``base``) and the bytes not already counted under another name."""
    files = list(_files(base / root))
    total = new = 0
    for path in files:
        stat = path.stat()
        total += stat.st_size
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            new += stat.st_size
    return DiskRow(what, str(root), len(files), total), new


def dvc_remote_folders(project_dir: Path) -> list[Path]:
    """Local folders of the DVC remotes configured in .dvc/config (S3 and other URLs are skipped)."""
    config = configparser.ConfigParser()
    config.read(project_dir / ".dvc" / "config")
    folders = []
    for section in config.sections():
        url = config[section].get("url", "")
        if section.startswith("'remote") and url and "://" not in url:
            folders.append((project_dir / ".dvc" / url).resolve())
    return folders


def disk_report(
    settings: Settings, project_dir: Path, mlflow: list[DiskRow], mlflow_folder: Path | None = None
) -> tuple[list[DiskRow], int]:
    """Rows for the project's stores and ``mlflow`` (a row per MLflow run, see ``tracking.storage``);
    the total counts every file once. ``mlflow_folder``: where a local store keeps those runs' files,
    counted by walking it (hard links once); without it the runs' rows are added up. Relative
    settings are folders of ``project_dir``, wherever the caller runs."""
    run = RunPaths.of(settings)
    places = [
        ("run: full state", run.latest),
        ("run: snapshots", run.snapshots),
        ("run: example strips", run.examples),
        ("run: previous run, set aside", run.previous),
        *((f"stage: {name}", Path(folder)) for name, folder in settings.outputs.model_dump().items()),
        ("decoded image cache (data.cache_dir)", Path(settings.data.cache_dir)),
        ("DVC cache", project_dir / ".dvc" / "cache"),
        *(("DVC remote", folder) for folder in dvc_remote_folders(project_dir)),
    ]
    seen: set[tuple[int, int]] = set()
    rows, total = [], 0
    for what, root in places:
        row, new = _row(what, root, seen, project_dir)
        rows.append(row)
        total += new
    if mlflow_folder is not None:
        _, new = _row("MLflow", mlflow_folder, seen)
        total += new
    else:
        total += sum(row.bytes for row in mlflow)
    return rows + mlflow, total


def format_report(rows: list[DiskRow], total: int) -> str:
    def size(n: int) -> str:
        return f"{n / 2**20:,.1f} MiB"

    width = max(len(row.what) for row in rows)
    lines = [f"{'what':<{width}}  {'files':>6}  {'size':>12}  where"]
    lines += [f"{row.what:<{width}}  {row.files:>6}  {size(row.bytes):>12}  {row.where}" for row in rows]
    lines.append(f"{'total, hard links once':<{width}}  {'':>6}  {size(total):>12}")
    return "\n".join(lines)
