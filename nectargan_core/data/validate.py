"""Dataset validation before any training, with pandera.

A manifest holds one row per pair with the facts read from disk (size, mode, content hash,
decode error); pandera checks every rule over every row lazily, so the report lists each
failing file with each rule it broke, not just the first.
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
from PIL import Image

from nectargan_core.data.dataset import split_layout
from nectargan_core.files import (
    EIGHT_BIT_NOTE,
    HIGH_DEPTH_MODES,
    REQUIRED_SPLITS,
    SIXTEEN_BIT_MODES,
    SPLITS,
    atomic_path,
    image_mode,
    list_images,
    printable,
    write_json_atomic,
)
from nectargan_core.layout import ValidationPaths
from nectargan_core.settings import DataSettings

_CHANNELS = {"1": 1, "L": 1, "LA": 1, "I": 1, "F": 1, "P": 3, "RGB": 3, "RGBA": 3, "CMYK": 3, "YCbCr": 3}
_CHANNELS |= {"I;16": 1, "I;16B": 1, "I;16L": 1, "I;16N": 1, "LA;16": 1, "RGB;16": 3, "RGBA;16": 3}


@dataclass(frozen=True)
class ValidationResult:
    ok: bool
    pairs: int
    failures: list[dict[str, str]]
    report_csv: Path | None  # None when checked without writing a report
    report_json: Path | None
    converted: list[dict[str, str]] = field(default_factory=list)  # 16-bit files read as 8 bits

    def table(self) -> str:
        """The failures as a fixed-width text table (or a one-line all-clear), then the converted files."""
        notes = [f"note: {c['file']}: {c['mode']}: {c['note']}" for c in self.converted]
        if self.ok:
            return "\n".join([f"dataset OK: {self.pairs} pairs, every rule passed", *notes])
        rows = [("file", "split", "rule", "detail")] + [
            (printable(f["file"]), f["split"], f["rule"], printable(f["detail"])) for f in self.failures
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]
        return "\n".join([f"dataset INVALID: {len(self.failures)} problem(s) in {self.pairs} pairs", *lines, *notes])


def _read(path: Path) -> dict[str, object]:
    """Facts about one image file; decoding fully (not just the header) catches truncated files."""
    facts: dict[str, object] = {"width": pd.NA, "height": pd.NA, "mode": pd.NA, "error": pd.NA}
    try:
        data = path.read_bytes()
        facts["sha256"] = hashlib.sha256(data).hexdigest()
        # Past Pillow's pixel limit a header alone could make us decode gigabytes: refused, not decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                mode = image_mode(image)
                image.load()
                facts.update(width=image.width, height=image.height, mode=mode)
    except Exception as exc:
        facts["error"] = f"{exc.__class__.__name__}: {exc}"
        facts.setdefault("sha256", pd.NA)
    return facts


def build_manifest(data: DataSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per pair, one row per split with its pair count)."""
    root = Path(data.root)
    rows, counts = [], []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            counts.append({"split": split, "pairs": 0, "required": split in REQUIRED_SPLITS, "exists": False})
            continue
        layout = split_layout(split_dir, data.layout)
        if layout == "aligned":
            for path in list_images(split_dir):
                rows.append({"split": split, "layout": layout, "file": str(path), **_read(path), "partner": pd.NA})
        else:
            b_dir = split_dir / "B"
            for path in list_images(split_dir / "A"):
                partner = b_dir / path.name
                row = {"split": split, "layout": layout, "file": str(path), **_read(path)}
                if partner.is_file():
                    facts = _read(partner)
                    row.update(
                        partner=str(partner),
                        partner_width=facts["width"],
                        partner_height=facts["height"],
                        partner_mode=facts["mode"],
                        partner_error=facts["error"],
                        partner_sha256=facts["sha256"],
                    )
                else:
                    row["partner"] = pd.NA
                rows.append(row)
        pairs = sum(1 for r in rows if r["split"] == split)
        counts.append({"split": split, "pairs": pairs, "required": split in REQUIRED_SPLITS, "exists": True})
    columns = ["split", "layout", "file", "width", "height", "mode", "sha256", "error", "partner"]
    partner_columns = ["partner_width", "partner_height", "partner_mode", "partner_error", "partner_sha256"]
    manifest = pd.DataFrame(rows, columns=[*columns, *partner_columns])
    # A pair's identity is its content: the file, or both files in the folders layout.
    manifest["pair_sha256"] = [
        pd.NA if pd.isna(a) else a if pd.isna(b) else f"{a}:{b}"
        for a, b in zip(manifest["sha256"], manifest["partner_sha256"], strict=True)
    ]
    for column in ("width", "height", "partner_width", "partner_height"):
        manifest[column] = manifest[column].astype("Int64")  # nullable: comparisons with NA stay boolean
    return manifest, pd.DataFrame(counts)


def _rules(data: DataSettings) -> dict[str, tuple[pa.Check, str]]:
    """Rule name -> (DataFrame-wide pandera check, what to do about it). Unreadable rows pass
    every rule but 'decodes' so each problem is reported once."""
    readable = lambda df: df["error"].isna() & (df["layout"].ne("folders") | df["partner_error"].isna())  # noqa: E731
    aligned = lambda df: df["layout"].eq("aligned")  # noqa: E731
    folders = lambda df: df["layout"].eq("folders")  # noqa: E731

    def half_width(df: pd.DataFrame) -> pd.Series:
        return df["width"].where(~aligned(df), df["width"] // 2)

    def channels(mode: pd.Series) -> pd.Series:
        return mode.map(_CHANNELS)

    input_is_a = data.direction == "AtoB"
    a_channels = data.input_channels if input_is_a else data.output_channels
    b_channels = data.output_channels if input_is_a else data.input_channels
    b_mode = lambda df: df["mode"].where(aligned(df), df["partner_mode"])  # noqa: E731

    def check(fn, name: str) -> pa.Check:
        return pa.Check(fn, name=name, error=name)

    return {
        "decodes": (
            check(lambda df: df["error"].isna() & df["partner_error"].isna(), "decodes"),
            "the file does not open as an image: replace or remove it",
        ),
        "partner_exists": (
            check(lambda df: ~folders(df) | df["partner"].notna(), "partner_exists"),
            "no file of the same name in B/: add it or remove the A file",
        ),
        "aligned_pair": (
            check(lambda df: ~readable(df) | ~aligned(df) | (df["width"] == 2 * df["height"]), "aligned_pair"),
            "an aligned pair is A|B side by side, width = 2 x height: re-export it",
        ),
        "partner_same_size": (
            check(
                lambda df: (
                    ~readable(df)
                    | ~folders(df)
                    | df["partner"].isna()
                    | ((df["width"] == df["partner_width"]) & (df["height"] == df["partner_height"]))
                ),
                "partner_same_size",
            ),
            "A and B differ in size: resize one to match",
        ),
        "channels": (
            check(
                lambda df: (
                    ~readable(df)
                    | (
                        (channels(df["mode"]) == a_channels)
                        & ((channels(b_mode(df)) == b_channels) | (folders(df) & df["partner"].isna()))
                    ).fillna(False)
                ),
                "channels",
            ),
            f"image mode does not have the configured channels (A: {a_channels}, B: {b_channels}); convert the "
            "file or change data.input_channels / data.output_channels",
        ),
        "eight_bit": (
            check(
                lambda df: ~readable(df) | ~(df["mode"].isin(HIGH_DEPTH_MODES) | b_mode(df).isin(HIGH_DEPTH_MODES)),
                "eight_bit",
            ),
            "a 32-bit integer or float image has no 8-bit scale: convert it to an 8-bit PNG/JPEG",
        ),
        "large_enough": (
            check(
                lambda df: (
                    ~readable(df) | ((half_width(df) >= data.crop_size) & (df["height"] >= data.crop_size)).fillna(True)
                ),
                "large_enough",
            ),
            f"smaller than data.crop_size ({data.crop_size}) on a side: use larger images or a smaller crop",
        ),
        "unique_across_splits": (
            check(
                lambda df: df["pair_sha256"].isna() | (df.groupby("pair_sha256")["split"].transform("nunique") == 1),
                "unique_across_splits",
            ),
            "the same file content is in more than one split: keep it in one",
        ),
    }


def layout_problems(data: DataSettings) -> list[dict[str, str]]:
    """What the pair table cannot show: B files without an A partner, aligned files beside A/ and B/
    folders, and symbolic links that dangle or lead outside data.root (DVC would not version those)."""
    root = Path(data.root)
    problems = []

    def problem(path: Path, split: str, rule: str, detail: str) -> None:
        problems.append({"file": str(path), "split": split, "rule": rule, "detail": detail})

    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for path in sorted(split_dir.rglob("*")):
            if not path.is_symlink():
                continue
            if not path.exists():
                problem(path, split, "symlink", "a dangling symbolic link: point it at a file or remove it")
            elif not path.resolve().is_relative_to(root.resolve()):
                problem(path, split, "symlink", f"links outside data.root ({path.resolve()}): copy the file in")
        if split_layout(split_dir, data.layout) != "folders":
            continue
        a_names = {p.name for p in list_images(split_dir / "A")}
        for path in list_images(split_dir / "B"):
            if path.name not in a_names:
                problem(path, split, "partner_exists", "no file of the same name in A/: add it or remove the B file")
        for path in list_images(split_dir):
            problem(
                path, split, "one_layout", "an image beside the A/ and B/ folders: split it into A/ and B/ or remove it"
            )
    return problems


def dataset_fingerprint(data: DataSettings) -> str:
    """What a validation result holds for: the rules (their texts carry the settings they check) and
    every file under the splits by name, size and modification time. Any change means: check again."""
    digest = hashlib.sha256(json.dumps(sorted((k, m) for k, (_, m) in _rules(data).items())).encode())
    digest.update(json.dumps([data.layout, data.direction]).encode())
    root = Path(data.root)
    for split in SPLITS:
        for path in sorted((root / split).rglob("*")) if (root / split).is_dir() else []:
            stat = path.lstat()
            digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}|{path.is_symlink()}\n".encode())
    return digest.hexdigest()


def passed_before(data: DataSettings, report_dir: Path) -> bool:
    """Whether the report in ``report_dir`` says this very dataset passed these very rules."""
    report = ValidationPaths(report_dir).json
    try:
        recorded = json.loads(report.read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("ok") is True and recorded.get("fingerprint") == dataset_fingerprint(data)


def validate_dataset(data: DataSettings, report_dir: Path | None) -> ValidationResult:
    """Check every rule over every pair; write ``validation.csv`` and ``validation.json`` either way
    (no files when ``report_dir`` is None)."""
    root = Path(data.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: {root} does not exist; generate the sample data or point it at a dataset")
    manifest, counts = build_manifest(data)
    rules = _rules(data)
    failures: list[dict[str, str]] = []

    schema = pa.DataFrameSchema(checks=[check for check, _ in rules.values()])
    try:
        schema.validate(manifest, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases.dropna(subset=["index"])  # one case per failing cell: keep one per row
        for index, rule in sorted({(int(i), str(c)) for i, c in zip(cases["index"], cases["check"], strict=True)}):
            if rule not in rules:
                continue
            row = manifest.loc[index]
            detail = rules[rule][1]
            if rule == "decodes":
                detail = f"{row['error'] if pd.notna(row['error']) else row['partner_error']}; {detail}"
            if rule == "channels":
                detail = f"mode {row['mode']}: {detail}"
            failures.append({"file": row["file"], "split": row["split"], "rule": rule, "detail": detail})

    failures += layout_problems(data)
    split_schema = pa.DataFrameSchema(
        checks=pa.Check(
            lambda df: ~(df["required"] | df["exists"]) | (df["pairs"] > 0),
            name="non_empty_split",
            error="non_empty_split",
        )
    )
    try:
        split_schema.validate(counts, lazy=True)
    except pa.errors.SchemaErrors as errors:
        for index in sorted({int(i) for i in errors.failure_cases["index"].dropna()}):
            split = counts.loc[index, "split"]
            what = "missing" if not counts.loc[index, "exists"] else "empty"
            failures.append(
                {
                    "file": str(root / split),
                    "split": split,
                    "rule": "non_empty_split",
                    "detail": f"split folder {what}: add image pairs (train/ and val/ are required)",
                }
            )

    failures.sort(key=lambda f: (f["file"], f["rule"]))
    converted = _sixteen_bit(manifest)
    if report_dir is None:
        return ValidationResult(not failures, len(manifest), failures, None, None, converted)
    report = ValidationPaths(report_dir)
    with atomic_path(report.csv) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "split", "rule", "detail"])
        writer.writeheader()
        writer.writerows(failures)
    by_split = {row.split: int(row.pairs) for row in counts.itertuples()}
    summary = {
        "ok": not failures,
        "pairs": len(manifest),
        "problems": len(failures),
        "pairs_per_split": by_split,
        "fingerprint": dataset_fingerprint(data),
        "converted": converted,
    }
    write_json_atomic(report.json, summary)
    return ValidationResult(not failures, len(manifest), failures, report.csv, report.json, converted)


def _sixteen_bit(manifest: pd.DataFrame) -> list[dict[str, str]]:
    """The 16-bit files (A files and B partners) that loading reads as 8 bits, for the report."""
    found = [
        {"file": str(file), "mode": str(mode), "note": EIGHT_BIT_NOTE}
        for files, modes in (("file", "mode"), ("partner", "partner_mode"))
        for file, mode in zip(manifest[files], manifest[modes], strict=True)
        if pd.notna(mode) and mode in SIXTEEN_BIT_MODES
    ]
    return sorted(found, key=lambda c: c["file"])
