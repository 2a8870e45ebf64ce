"""The fault corpus: bad input and faults a user can cause or meet, each through the real `nectargan`
entry point, in a copy of a project that already holds a trained, registered run.

Every case asserts three things: the exit code; one `error:` message, no traceback, that names the
file or key involved; and that nothing written before is gone or changed (the run's files, the
dataset, the MLflow runs and the registered versions). Kill points are in test_kill.py, signals
in test_signals.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import sqlite3
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nectargan_core.files as files
import nectargan_core.training.records as records
from nectargan_core.cli import main
from nectargan_core.files import EIGHT_BIT_NOTE, held_lock

from .helpers import png16

TRAIN = "outputs/train"


@dataclass(frozen=True)
class Case:
    """``argv`` and ``names`` may hold ``{p}``, the case's project folder. ``setup`` breaks something
    in that copy first; ``fault`` is a context manager factory for faults of the machine itself."""

    argv: str
    names: tuple[str, ...]
    setup: Callable[[Path], None] | None = None
    fault: Callable[[pytest.MonkeyPatch, Path], AbstractContextManager | None] | None = None
    code: int = 2
    kept: tuple[str, ...] = field(default=(TRAIN, "data"))


# ----------------------------------------------------------------------------- setups


def _write(rel: str, content: bytes | str) -> Callable[[Path], None]:
    def setup(p: Path) -> None:
        path = p / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def _params(**changes: object) -> Callable[[Path], None]:
    """bad.yaml: the project's params with top-level-group changes ``group__key=value``."""

    def setup(p: Path) -> None:
        tree = json.loads((p / "params.yaml").read_text())
        for dotted, value in changes.items():
            node = tree
            *parents, leaf = dotted.split("__")
            for part in parents:
                node = node[part]
            node[leaf] = value
        (p / "bad.yaml").write_text(json.dumps(tree))

    return setup


def _image(rel: str, array: np.ndarray) -> Callable[[Path], None]:
    def setup(p: Path) -> None:
        (p / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(p / rel)

    return setup


def _truncate(rel: str, keep: int = 100) -> Callable[[Path], None]:
    def setup(p: Path) -> None:
        (p / rel).write_bytes((p / rel).read_bytes()[:keep])

    return setup


def _symlink(rel: str, target: str) -> Callable[[Path], None]:
    def setup(p: Path) -> None:
        (p / rel).symlink_to(target)

    return setup


def _folders_layout(p: Path) -> None:
    """data/train as A/ and B/ folders (the halves of each aligned image)."""
    train = p / "data" / "train"
    for path in sorted(train.glob("*.png")):
        with Image.open(path) as image:
            w, h = image.size
            for side, box in (("A", (0, 0, w // 2, h)), ("B", (w // 2, 0, w, h))):
                (train / side).mkdir(exist_ok=True)
                image.crop(box).save(train / side / path.name)
        path.unlink()


def _then(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(p: Path) -> None:
        for step in setups:
            step(p)

    return setup


def _remove(rel: str) -> Callable[[Path], None]:
    def setup(p: Path) -> None:
        target = p / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return setup


def _bare_state_dict(p: Path) -> None:
    torch.save({"downs.0.weight": torch.zeros(1)}, p / "weights.pt")


def _generator_only(p: Path) -> None:
    state = torch.load(p / TRAIN / "checkpoints" / "latest.pt", weights_only=True)
    torch.save(state["generator"], p / "gen.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _malicious(p: Path) -> None:
    (p / "evil.pt").write_bytes(pickle.dumps({"epoch": 1, "x": _Evil()}))


def _corrupt_db(p: Path) -> None:
    (p / "broken.db").write_bytes(b"this is not a database" * 100)


# ----------------------------------------------------------------------------- machine faults


def _no_space(target: str) -> Callable[[pytest.MonkeyPatch, Path], None]:
    """The disk fills up while a file whose name contains ``target`` is written: its bytes went to
    the temp file, then the write fails as a full disk fails it."""

    def fault(monkeypatch: pytest.MonkeyPatch, p: Path) -> None:
        real = files.atomic_path

        @contextmanager
        def full(path: Path, *args, **kwargs):
            with real(path, *args, **kwargs) as tmp:
                yield tmp
                if target in Path(path).name:
                    raise OSError(errno.ENOSPC, "No space left on device", str(path))

        for module in list(sys.modules.values()):  # every module that imported it by name
            if getattr(module, "atomic_path", None) is real:
                monkeypatch.setattr(module, "atomic_path", full)

        real_append = records._append

        def append(path: Path, columns, rows) -> None:
            if target not in path.name:
                return real_append(path, columns, rows)
            with path.open("a") as handle:
                handle.write("3,0.1")  # a torn row: the disk filled up mid-line
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(records, "_append", append)

    return fault


def _lock_held(monkeypatch: pytest.MonkeyPatch, p: Path) -> AbstractContextManager:
    return held_lock(p / TRAIN / ".nectargan.lock", "another trainer")


# ----------------------------------------------------------------------------- the corpus

GRAY16 = np.full((64, 128), 60000, np.uint16)
FLOAT = np.full((64, 128), 0.5, np.float32)


TINY_IMAGE = np.zeros((16, 32, 3), np.uint8)
SQUARE = np.zeros((64, 64, 3), np.uint8)
RGB = np.zeros((16, 16, 3), np.uint8)

CASES: dict[str, Case] = {
    # params files and overrides
    "empty params": Case("settings --params {p}/e.yaml", ("e.yaml", "is empty"), _write("e.yaml", "")),
    "duplicate key": Case("settings --params {p}/t.yaml", ("t.yaml", "'seed'"), _write("t.yaml", "seed: 1\nseed: 2\n")),
    "missing params": Case("settings --params {p}/none.yaml", ("none.yaml",)),
    "params not yaml": Case("settings --params {p}/g.yaml", ("g.yaml",), _write("g.yaml", "seed: [1, 2\n")),
    "params a list": Case("settings --params {p}/l.yaml", ("l.yaml",), _write("l.yaml", "- 1\n- 2\n")),
    "params binary": Case("settings --params {p}/b.yaml", ("b.yaml",), _write("b.yaml", b"\x89PNG\x00\xff\xfe")),
    "unknown key": Case("settings -s train.loss.l3=1", ("train.loss.l3",)),
    "unknown group": Case("settings -s trian.epochs=1", ("trian",)),
    "override without =": Case("settings -s train.loss.l1", ("train.loss.l1", "key.sub=value")),
    "wrong type": Case("settings -s data.batch_size=four", ("data.batch_size",)),
    "negative epochs": Case("settings -s train.generator.epochs=-3", ("train.generator.epochs",)),
    "zero batch": Case("settings -s data.batch_size=0", ("data.batch_size",)),
    "crop above load": Case("settings -s data.crop_size=64", ("data.crop_size", "data.load_size")),
    "crop vs depth": Case("settings -s data.crop_size=30 -s data.load_size=30", ("data.crop_size",)),
    "negative loss weight": Case("settings -s train.loss.l1=-1", ("train.loss.l1",)),
    "load_epoch zero": Case("settings -s train.load_epoch=0", ("load_epoch",)),
    "continue_from alone": Case("settings -s train.continue_from=x.pt", ("train.continue_from", "continue_train")),
    "bad key in file": Case("settings --params {p}/bad.yaml", ("bad.yaml", "train.nope"), _params(train__nope=1)),
    "bad value in file": Case("settings --params {p}/bad.yaml", ("bad.yaml", "seed"), _params(seed="x")),
    # the dataset (validate, and train without it)
    "missing data root": Case("validate -s data.root={p}/nowhere", ("nowhere",)),
    "empty split": Case("validate", ("val",), _then(_remove("data/val"), lambda p: (p / "data/val").mkdir())),
    "missing split": Case("validate", ("val",), _remove("data/val")),
    "truncated image": Case("validate", ("train_0003.png",), _truncate("data/train/train_0003.png")),
    "zero-byte image": Case("validate", ("train_0002.png",), _write("data/train/train_0002.png", b"")),
    "text as png": Case("validate", ("notes.png",), _write("data/train/notes.png", "hello")),
    "float image": Case("validate", ("deep.tif", "no 8-bit scale"), _image("data/train/deep.tif", FLOAT)),
    "square aligned image": Case("validate", ("square.png",), _image("data/train/square.png", SQUARE)),
    "smaller than crop": Case("validate", ("small.png",), _image("data/train/small.png", TINY_IMAGE)),
    "B without A": Case(
        "validate", ("extra.png",), _then(_folders_layout, _image("data/train/B/extra.png", SQUARE[:, :32]))
    ),
    "A without B": Case(
        "validate", ("lonely.png",), _then(_folders_layout, _image("data/train/A/lonely.png", SQUARE[:, :32]))
    ),
    "mixed layouts": Case("validate", ("mixed.png",), _then(_folders_layout, _image("data/train/mixed.png", GRAY16))),
    "dangling symlink": Case("validate", ("gone.png",), _symlink("data/train/gone.png", "/nonexistent/x.png")),
    "symlink outside": Case("validate", ("out.png",), _symlink("data/train/out.png", "/etc/hostname")),
    "train on a corrupt image": Case("train", ("train_0003.png",), _truncate("data/train/train_0003.png")),
    "train on a small image": Case("train", ("small.png",), _image("data/train/small.png", TINY_IMAGE)),
    # checkpoints
    "continue from zero bytes": Case(
        "train -s train.continue_train=true",
        ("latest.pt", "epoch_0001.pt"),
        _write(f"{TRAIN}/checkpoints/latest.pt", b""),
    ),
    "continue from truncated": Case(
        "train -s train.continue_train=true", ("latest.pt",), _truncate(f"{TRAIN}/checkpoints/latest.pt", 1000)
    ),
    "continue from text": Case(
        "train -s train.continue_train=true -s train.continue_from={p}/n.pt", ("n.pt",), _write("n.pt", "text")
    ),
    "continue from a bare state_dict": Case(
        "train -s train.continue_train=true -s train.continue_from={p}/weights.pt", ("weights.pt",), _bare_state_dict
    ),
    "continue from generator only": Case(
        "train -s train.continue_train=true -s train.continue_from={p}/gen.pt", ("gen.pt",), _generator_only
    ),
    "continue from a missing epoch": Case("train -s train.continue_train=true -s train.load_epoch=7", ("7",)),
    "continue from a missing path": Case(
        "train -s train.continue_train=true -s train.continue_from={p}/no.pt", ("no.pt",)
    ),
    "continue with a wider model": Case(
        "train -s train.continue_train=true -s model.generator.features=16", ("model.generator.features",)
    ),
    "continue from an unknown model": Case(
        "train -s train.continue_train=true -s train.continue_from=models:/nope@current", ("models:/nope",)
    ),
    "continue from an unknown alias": Case(
        "train -s train.continue_train=true -s train.continue_from=models:/nectargan-generator@nightly",
        ("nightly", "current"),
    ),
    "a malicious pickle": Case(
        "predict --model {p}/evil.pt --input {p}/data/test --out {p}/o", ("evil.pt",), _malicious
    ),
    # evaluate, examples, predict, export
    "evaluate a corrupt test image": Case("evaluate", ("test_0001.png",), _truncate("data/test/test_0001.png")),
    "evaluate without a run": Case("evaluate -s train.output_dir={p}/fresh", ("fresh",)),
    "examples without a run": Case("examples -s train.output_dir={p}/fresh", ("fresh",)),
    "predict a text file": Case(
        "predict --strict --model {p}/" + TRAIN + "/checkpoints/latest.pt --input {p}/in --out {p}/o",
        ("notes.png",),
        _then(_image("in/good.png", RGB), _write("in/notes.png", "text")),
    ),
    "predict into its input": Case(
        "predict --model {p}/" + TRAIN + "/checkpoints/latest.pt --input {p}/in --out {p}/in",
        ("is the input folder",),
        _image("in/good.png", RGB),
    ),
    "predict a missing folder": Case(
        "predict --model {p}/" + TRAIN + "/checkpoints/latest.pt --input {p}/absent --out {p}/o", ("absent",)
    ),
    "predict an empty folder": Case(
        "predict --model {p}/" + TRAIN + "/checkpoints/latest.pt --input {p}/in --out {p}/o",
        ("in",),
        lambda p: (p / "in").mkdir(),
    ),
    "predict with a corrupt onnx": Case(
        "predict --model {p}/m.onnx --input {p}/data/test --out {p}/o", ("m.onnx",), _write("m.onnx", b"\x00garbage")
    ),
    "predict with a missing model": Case("predict --model {p}/m.pt --input {p}/data/test --out {p}/o", ("m.pt",)),
    "predict into a file": Case(
        "predict --model {p}/" + TRAIN + "/checkpoints/latest.pt --input {p}/data/test --out {p}/f/o",
        ("f",),
        _write("f", "a file"),
    ),
    # tracking store
    "unknown uri scheme": Case("compare -s tracking.uri=nope://x", ("tracking",)),
    "corrupt mlflow db": Case("compare -s tracking.uri=sqlite:///{p}/broken.db", ("broken.db",), _corrupt_db),
    "tracking store is a folder": Case("compare -s tracking.uri=sqlite:///{p}/data", ("tracking",)),
    # the file system and the machine
    "output_dir under a file": Case(
        "train -s train.output_dir={p}/blocker/run", ("blocker", "not a folder"), _write("blocker", "a file")
    ),
    "output folder in use": Case("train", (".nectargan.lock", "is in use by pid"), fault=_lock_held),
    "disk full at the checkpoint": Case(
        "train -s train.output_dir={p}/new", ("latest.pt", "free space"), fault=_no_space("latest.pt")
    ),
    "disk full at a strip": Case(
        "train -s train.output_dir={p}/new", ("sample_00.png", "disk is full"), fault=_no_space("sample_")
    ),
    "disk full at the loss log": Case(
        "train -s train.output_dir={p}/new", ("loss_log.csv", "disk is full"), fault=_no_space("loss_log")
    ),
    "disk full at the epoch table": Case(
        "train -s train.output_dir={p}/new", ("epochs.csv", "disk is full"), fault=_no_space("epochs.csv")
    ),
    "disk full at the validation report": Case(
        "validate", ("validation", "disk is full"), fault=_no_space("validation")
    ),
    "a second fresh run after a failed one": Case(
        "train",
        ("previous", "never registered"),
        _then(lambda p: shutil.copytree(p / TRAIN / "checkpoints", p / TRAIN / "previous" / "checkpoints")),
    ),
}


# ----------------------------------------------------------------------------- the check


def _fingerprint(project: Path, kept: tuple[str, ...]) -> dict[str, str]:
    """Every file under ``kept`` with its hash, and the MLflow runs and registered versions."""
    files = {
        str(path.relative_to(project)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in kept
        for path in sorted((project / folder).rglob("*"))
        if path.is_file() and not path.is_symlink()
    }
    with sqlite3.connect(project / "mlflow.db") as db:
        runs = db.execute("select run_uuid from runs").fetchall()
        versions = db.execute("select name, version, run_id from model_versions").fetchall()
    return files | {f"run {run_id}": "" for (run_id,) in runs} | {f"version {v}": "" for v in versions}


@pytest.mark.parametrize("name", list(CASES))
def test_the_corpus(name, finished_project, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    project = tmp_path / "p"
    shutil.copytree(finished_project, project, symlinks=True)
    monkeypatch.chdir(project)
    if case.setup is not None:
        case.setup(project)
    before = _fingerprint(project, case.kept)
    capsys.readouterr()

    with ExitStack() as faults:
        held = case.fault(monkeypatch, project) if case.fault is not None else None
        if held is not None:
            faults.enter_context(held)
        code = main(case.argv.format(p=project).split())

    out, err = capsys.readouterr()
    assert code == case.code, (out, err)
    assert "Traceback" not in out + err
    assert err.count("error: ") == 1, err  # one message: its line, and the problems it lists below it
    message = err[err.index("error: ") :]
    for needle in case.names:
        assert needle.format(p=project) in message, (needle, message)
    after = _fingerprint(project, case.kept)
    assert {k: v for k, v in before.items() if after.get(k) != v} == {}, "something written before is gone"
    assert not (project / "PWNED").exists()
    assert not [path for path in project.rglob("*.tmp")], "temp files left behind"


def test_16_bit_images_are_converted_and_noted(finished_project, tmp_path, monkeypatch, capsys):
    """16-bit scans pass validation as the 8-bit images loading makes of them, and the report says so."""
    shutil.copytree(finished_project, tmp_path / "p", symlinks=True)
    monkeypatch.chdir(tmp_path / "p")
    Path("data/train/rgb16.png").write_bytes(png16(np.full((64, 128, 3), 0x80FF, np.uint16)))
    capsys.readouterr()
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:2] == [
        "dataset OK: 11 pairs, every rule passed",
        f"note: data/train/rgb16.png: RGB;16: {EIGHT_BIT_NOTE}",
    ]
    report = json.loads(Path("outputs/validation/validation.json").read_text())
    assert report["ok"] and report["converted"] == [
        {"file": "data/train/rgb16.png", "mode": "RGB;16", "note": EIGHT_BIT_NOTE}
    ]
