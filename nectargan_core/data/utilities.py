"""Dataset preparation helpers: pair A/ and B/ folders, split a folder, import a dataset under DVC.

Real data rarely arrives in the aligned pix2pix layout the trainer reads (``ROOT/train/x.png`` = A | B
side by side). These helpers turn what people usually have (two folders of partner images, or one
flat folder of pairs) into that layout without losing files silently, and put the result under DVC
so a training run can name exactly which data it saw.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from nectargan_core.data.dataset import list_pairs, split_layout
from nectargan_core.files import IMAGE_SUFFIXES, REQUIRED_SPLITS, SPLITS, list_images, write_atomic, write_text_atomic

__all__ = ["PairingReport", "import_dataset", "pair_folders", "split_dataset"]

REPORT_NAME = "pairing_report.csv"


# ---- small shared helpers ---------------------------------------------------------------------------


def _require_dir(folder: Path, what: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {what} folder not found; check the path")
    return folder


def _image_names(folder: Path) -> list[str]:
    """Same selection as the dataset loader: plain files with an image suffix, sorted by name."""
    return [p.name for p in list_images(folder)]


def _same_dir(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _is_within(inner: Path, outer: Path) -> bool:
    return inner.resolve().is_relative_to(outer.resolve())


# ---- pairing A/ and B/ folders ----------------------------------------------------------------------


@dataclass(frozen=True)
class PairingReport:
    """What :func:`pair_folders` did; every input file appears in exactly one of paired/only_in_a/only_in_b.

    ``resized`` lists the paired names whose A and B sizes differed (B was scaled to A's size, or
    both to ``size``), so a user can check those pairs were meant to be partners.
    """

    paired: list[str]
    only_in_a: list[str]
    only_in_b: list[str]
    resized: list[str]

    def table(self) -> str:
        """Readable summary that names every unmatched file, for printing after a pairing run."""
        lines = [
            f"paired: {len(self.paired)}   only in A: {len(self.only_in_a)}   "
            f"only in B: {len(self.only_in_b)}   sizes differed: {len(self.resized)}"
        ]
        for title, names in (
            ("only in A (no B file of the same name, not written):", self.only_in_a),
            ("only in B (no A file of the same name, not written):", self.only_in_b),
            ("A and B sizes differed (resized):", self.resized),
        ):
            if names:
                lines.append(title)
                lines.extend(f"  {name}" for name in names)
        return "\n".join(lines)


def _check_size(size: object) -> int | None:
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int or None, got {size!r}; pass e.g. size=256")
    return size


def pair_folders(a_dir: Path, b_dir: Path, out_dir: Path, size: int | None = None) -> PairingReport:
    """Write each A/B partner pair (same file name) as one aligned RGB PNG ``out_dir/<stem>.png``.

    The trainer's aligned layout needs one file per pair; matching by full file name mirrors the
    folders layout of the loader. Files without a partner are reported (return value and
    ``out_dir/pairing_report.csv``), never silently dropped. With ``size`` both halves are resized
    to ``size`` x ``size`` (bicubic); without it a B of another size is resized to A's size.
    """
    a_dir, b_dir = _require_dir(a_dir, "A"), _require_dir(b_dir, "B")
    out_dir = Path(out_dir)
    size = _check_size(size)
    for src in (a_dir, b_dir):
        if out_dir.exists() and _same_dir(out_dir, src):
            raise ValueError(f"{out_dir}: out_dir is an input folder; choose a separate output folder")
    a_names, b_names = _image_names(a_dir), _image_names(b_dir)
    for folder, names in ((a_dir, a_names), (b_dir, b_names)):
        if not names:
            raise ValueError(
                f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); point to the folder holding them"
            )
    b_set = set(b_names)
    paired = [name for name in a_names if name in b_set]
    paired_set = set(paired)
    only_in_a = [name for name in a_names if name not in b_set]
    only_in_b = [name for name in b_names if name not in paired_set]

    # a.png and a.jpg would both become a.png: refuse before writing anything.
    stems: dict[str, str] = {}
    for name in paired:
        stem = Path(name).stem
        if stem in stems:
            raise ValueError(
                f"{a_dir}: {stems[stem]} and {name} would both be written as {stem}.png; rename one of them"
            )
        stems[stem] = name

    out_dir.mkdir(parents=True, exist_ok=True)
    resized = []
    for name in paired:
        with Image.open(a_dir / name) as img:
            a = img.convert("RGB")
        with Image.open(b_dir / name) as img:
            b = img.convert("RGB")
        if a.size != b.size:
            resized.append(name)
        target = (size, size) if size is not None else a.size
        if a.size != target:
            a = a.resize(target, Image.Resampling.BICUBIC)
        if b.size != target:
            b = b.resize(target, Image.Resampling.BICUBIC)
        pair = Image.new("RGB", (2 * target[0], target[1]))
        pair.paste(a, (0, 0))
        pair.paste(b, (target[0], 0))
        write_atomic(out_dir / f"{Path(name).stem}.png", lambda tmp, img=pair: img.save(tmp, format="PNG"))

    report = PairingReport(paired=paired, only_in_a=only_in_a, only_in_b=only_in_b, resized=resized)
    rows = sorted(
        [(n, "paired") for n in paired] + [(n, "only_in_a") for n in only_in_a] + [(n, "only_in_b") for n in only_in_b]
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "status"])
    writer.writerows(rows)
    write_text_atomic(out_dir / REPORT_NAME, buffer.getvalue())
    return report


# ---- splitting one folder into train/val/test -------------------------------------------------------


def _check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, val, test), got {fractions!r}; e.g. (0.8, 0.1, 0.1)")
    values = tuple(float(f) for f in fractions)
    if any(not math.isfinite(f) or f < 0 for f in values):
        raise ValueError(f"fractions must each be >= 0, got {fractions!r}; e.g. (0.8, 0.1, 0.1)")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(values):g}); e.g. (0.8, 0.1, 0.1)")
    return values  # type: ignore[return-value]


def split_dataset(
    source: Path,
    out_root: Path,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, list[str]]:
    """Copy the images of ``source`` into ``out_root/{train,val,test}`` by ``fractions``; return split -> names.

    Files are sorted by name and then shuffled with ``random.Random(seed)``, so the same folder and
    seed always give the same split. Sizes: val = round(n * f_val), test = round(n * f_test), train
    = the rest; train and val must get at least one file. A split folder that already holds
    anything is refused, so two datasets are never mixed.
    """
    source = _require_dir(source, "source")
    out_root = Path(out_root)
    _, f_val, f_test = _check_fractions(fractions)
    names = _image_names(source)
    n = len(names)
    if n == 0:
        raise ValueError(f"{source}: no image files to split; point source at the folder holding them")
    n_val, n_test = round(n * f_val), round(n * f_test)
    n_train = n - n_val - n_test
    if n_train < 1 or n_val < 1:
        raise ValueError(
            f"{source}: {n} files with fractions {tuple(fractions)} give train {n_train}, val {n_val}, "
            f"test {n_test}; train and val need at least one file each: add files or change fractions"
        )
    for split in SPLITS:
        split_dir = out_root / split
        if split_dir.is_dir() and any(split_dir.iterdir()):
            raise ValueError(f"{split_dir}: already holds files; choose an empty folder for out_root")

    random.Random(seed).shuffle(names)
    chosen = {
        "train": names[:n_train],
        "val": names[n_train : n_train + n_val],
        "test": names[n_train + n_val :],
    }
    for split, files in chosen.items():
        if not files:
            continue
        split_dir = out_root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        for name in files:
            write_atomic(split_dir / name, lambda tmp, src=source / name: shutil.copy2(src, tmp))
    return {split: sorted(files) for split, files in chosen.items()}


# ---- importing a dataset into a DVC project ---------------------------------------------------------


def _check_dataset(source: Path) -> None:
    """Refuse a folder the trainer could not read, before copying anything."""
    for split in REQUIRED_SPLITS:
        if not (source / split).is_dir():
            raise FileNotFoundError(
                f"{source / split}: split folder missing; a dataset needs train/ and val/ (test/ optional)"
            )
    for split in SPLITS:
        split_dir = source / split
        if not split_dir.is_dir():
            continue
        if split_layout(split_dir, "auto") == "folders" and not (split_dir / "B").is_dir():
            raise ValueError(f"{split_dir / 'B'}: missing; a split with an A/ folder needs a B/ folder of partners")
        if split in REQUIRED_SPLITS and not list_pairs(source, split):
            raise ValueError(
                f"{split_dir}: no image pairs; add aligned A|B images or A/ and B/ folders of same-named files"
            )


def _check_name(value: str, what: str) -> None:
    if not value or Path(value).name != value or value in {".", ".."}:
        raise ValueError(f"{what} must be a plain folder name, got {value!r}; e.g. 'facades'")


def import_dataset(source: Path, name: str, project_dir: Path, data_dir: str = "data") -> Path:
    """Copy dataset ``source`` to ``project_dir/data_dir/name`` and track it with ``dvc add``; return the copy.

    Tracking makes the data part of the project's history (``data_dir/name.dvc`` is committed to
    git, the files go to the DVC cache), so runs are reproducible. An existing destination is
    refused; if ``dvc add`` fails the copy is removed again and RuntimeError carries dvc's message.
    """
    source = _require_dir(source, "dataset source")
    project_dir = _require_dir(project_dir, "project")
    _check_name(name, "name")
    if Path(data_dir).is_absolute() or ".." in Path(data_dir).parts:
        raise ValueError(f"data_dir must be a folder inside the project, got {data_dir!r}; e.g. 'data'")
    _check_dataset(source)
    dest = project_dir / data_dir / name
    dvc_file = dest.with_name(f"{name}.dvc")
    if dest.exists() or dest.is_symlink():
        raise ValueError(f"{dest}: already exists; choose another name or remove it first")
    if dvc_file.exists():
        raise ValueError(f"{dvc_file}: dataset already tracked; run `dvc pull` for it or choose another name")
    if _is_within(dest, source):
        raise ValueError(f"{dest}: destination lies inside the source {source}; import from a folder outside it")
    dvc = Path(sys.executable).parent / "dvc"
    if not dvc.is_file():
        raise FileNotFoundError(f"{dvc}: dvc executable not found next to Python; install the project's dependencies")

    made_parent = not dest.parent.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")  # a folder: copied whole, then renamed
    try:
        shutil.copytree(source, tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)

    relative = dest.relative_to(project_dir).as_posix()
    result = subprocess.run([str(dvc), "add", relative], cwd=project_dir, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        dvc_file.unlink(missing_ok=True)
        if made_parent and not any(dest.parent.iterdir()):
            dest.parent.rmdir()
        raise RuntimeError(
            f"`dvc add {relative}` in {project_dir} failed (copy removed); is it a DVC project (`dvc init`)?\n"
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return dest
