import hashlib
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torchvision.models import alexnet

from nectargan_core.cli import main
from nectargan_core.data.sample import generate_sample_dataset
from nectargan_core.files import read_image
from nectargan_core.inference import onnx as onnx_module
from nectargan_core.inference import predict
from nectargan_core.inference.evaluate import evaluate_checkpoint
from nectargan_core.inference.generator import load_generator
from nectargan_core.inference.onnx import PARITY_TOLERANCE, cpu_cores, onnx_metadata, onnx_session
from nectargan_core.inference.predict import load_runner, predict_image
from nectargan_core.settings import SampleDataSettings, with_changes
from nectargan_core.stages import evaluate_stage, export_stage, predict_stage, train_stage
from nectargan_core.tracking.tracker import Tracker

from .helpers import tiny_settings

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def trained(sample_root, tmp_path_factory):
    project = tmp_path_factory.mktemp("export-project")
    settings = tiny_settings(sample_root, project / "outputs" / "train")
    result = train_stage(settings, Tracker.connect(settings.tracking, project), project)
    return project, settings, result


@pytest.fixture(scope="module")
def exported(trained):
    project, settings, _ = trained
    tracker = Tracker.connect(settings.tracking, project)
    return export_stage(settings, tracker, project / "outputs" / "export" / "generator.onnx", opset=18)


def test_onnx_export_matches_pytorch(trained, exported):
    project, settings, result = trained
    assert exported.ok and exported.epoch == 2
    assert set(exported.max_abs_diff) == {"random 1x32x32", "random 3x40x64", "validation x2"}
    assert all(value <= PARITY_TOLERANCE for value in exported.max_abs_diff.values())
    model = onnx.load(str(exported.path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # batch, C fixed, H, W dynamic
    assert model.opset_import[0].version == 18
    assert onnx_metadata(exported.path) == {
        "input_channels": 3,
        "output_channels": 3,
        "crop_size": 32,
        "side_multiple": 8,
        "epoch": 2,
    }
    parity = json.loads(exported.path.with_suffix(".parity.json").read_text())
    assert parity["max_abs_diff"] == exported.max_abs_diff
    client = Tracker.connect(settings.tracking, project).client
    assert {a.path for a in client.list_artifacts(result.run_id, "onnx")} == {"onnx/generator.parity.json"}
    tags = client.get_run(result.run_id).data.tags  # the ONNX file is a DVC output; MLflow says where and which
    assert tags["onnx_path"] == str(exported.path)
    assert tags["onnx_md5"] == hashlib.md5(exported.path.read_bytes()).hexdigest()


def test_every_onnx_consumer_gets_the_tuned_session(exported, monkeypatch):
    """One home for the session settings (measured in benchmarks/inference.py): predict gets them too."""
    options = onnx_session(exported.path).get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (cpu_cores(), 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert onnx_session(exported.path, threads=1).get_session_options().intra_op_num_threads == 1
    opened = []
    monkeypatch.setattr(onnx_module, "onnx_session", lambda path: opened.append(path) or onnx_session(path))
    run, _ = predict.load_runner(exported.path, torch.device("cpu"))
    assert opened == [exported.path] and run(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_inference_benchmark_times_every_variant_on_matching_outputs(trained, exported):
    """The benchmark's variants agree with eager within the parity bound (it refuses to time them otherwise)."""
    spec = importlib.util.spec_from_file_location("inference_bench", BENCHMARKS / "inference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    generator = load_generator(trained[2].checkpoint, torch.device("cpu")).generator
    runs = bench.variants(generator, exported.path, threads=1)
    runs |= bench.sweep(generator, exported.path, threads=1)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    ms = bench.measure(runs, x, rounds=1, iters=1)
    assert list(ms)[:3] == list(bench.VARIANTS) and len(ms) == 9 and all(value > 0 for value in ms.values())
    runs["onnx"] = lambda batch: runs["eager"](batch) + 2 * PARITY_TOLERANCE
    with pytest.raises(RuntimeError, match="onnx differs from eager"):
        bench.measure(runs, x, rounds=1, iters=1)


def _odd_inputs(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide.png": (45, 20), "tall.jpg": (17, 50), "square.png": (32, 32)}
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return sizes


@pytest.mark.parametrize("mode", ["resize", "pad"])
def test_predict_keeps_any_input_size_and_agrees_across_model_formats(trained, exported, tmp_path, mode):
    project, settings, result = trained
    sizes = _odd_inputs(tmp_path / "in")
    outputs = {}
    for label, source in {
        "checkpoint": str(result.checkpoint),
        "registry": "models:/nectargan-generator@current",
        "onnx": str(exported.path),
    }.items():
        tracker = Tracker.connect(settings.tracking, project)
        summary = predict_stage(settings, source, tmp_path / "in", tmp_path / label, mode, tracker, workers=0)
        assert (summary.written, summary.present, summary.bad) == (3, 0, ())
        written = sorted((tmp_path / label).iterdir())
        assert [p.name for p in written] == ["square.png", "tall.png", "wide.png"]
        for path in written:
            with Image.open(path) as image:
                assert image.size == sizes[f"{path.stem}.{'jpg' if path.stem == 'tall' else 'png'}"]
                assert image.mode == "RGB"
        outputs[label] = {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in written}
    for name, image in outputs["checkpoint"].items():
        assert np.array_equal(image, outputs["registry"][name])
        assert np.abs(image - outputs["onnx"][name]).max() <= 1  # uint8 rounding of a < 1e-4 difference


def test_predict_errors_name_the_input(trained, tmp_path):
    _, settings, result = trained
    with pytest.raises(FileNotFoundError, match="input folder does not exist"):
        predict_stage(settings, str(result.checkpoint), tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        predict_stage(settings, str(result.checkpoint), tmp_path / "empty", tmp_path / "out")
    _odd_inputs(tmp_path / "in")
    with pytest.raises(FileNotFoundError, match="no such checkpoint or ONNX file"):
        predict_stage(settings, str(tmp_path / "nope.pt"), tmp_path / "in", tmp_path / "out")


def test_evaluation_report_shows_best_and_worst_samples(trained):
    project, settings, result = trained
    tracker = Tracker.connect(settings.tracking, project)
    evaluation = evaluate_stage(settings, tracker, project / "outputs" / "eval", samples=1)
    report = evaluation.report.read_text()
    for title in ("## Best by L1", "## Worst by L1", "## Best by SSIM", "## Worst by SSIM"):
        assert title in report
    assert "LPIPS skipped" in report and "FID skipped" in report
    with (project / "outputs" / "eval" / "per_image.csv").open() as handle:
        rows = [line.split(",") for line in handle.read().splitlines()[1:]]
    best_l1 = min(rows, key=lambda r: float(r[1]))[0]
    strips = sorted(p.name for p in (project / "outputs" / "eval" / "samples").iterdir())
    assert f"best_l1_01_{best_l1.removesuffix('.png')}.png" in strips and len(strips) == 4
    with Image.open(project / "outputs" / "eval" / "samples" / strips[0]) as strip:
        assert strip.size == (96, 32)
    client = Tracker.connect(settings.tracking, project).client
    logged = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/report.md", "evaluation/samples"} <= logged


def _fake_inception_weights(path):
    """Random weights in the layout of torch-fidelity's Inception (stands in for the real file)."""
    from torch import nn
    from torch_fidelity.feature_extractor_inceptionv3 import (
        BasicConv2d,
        InceptionA,
        InceptionB,
        InceptionC,
        InceptionD,
        InceptionE_1,
        InceptionE_2,
    )

    net = nn.Module()
    net.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    net.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    net.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    net.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    net.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    net.Mixed_5b = InceptionA(192, pool_features=32)
    net.Mixed_5c = InceptionA(256, pool_features=64)
    net.Mixed_5d = InceptionA(288, pool_features=64)
    net.Mixed_6a = InceptionB(288)
    net.Mixed_6b = InceptionC(768, channels_7x7=128)
    net.Mixed_6c = InceptionC(768, channels_7x7=160)
    net.Mixed_6d = InceptionC(768, channels_7x7=160)
    net.Mixed_6e = InceptionC(768, channels_7x7=192)
    net.Mixed_7a = InceptionD(768)
    net.Mixed_7b = InceptionE_1(1280)
    net.Mixed_7c = InceptionE_2(2048)
    net.fc = nn.Linear(2048, 1008)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)


def test_lpips_and_fid_when_their_weights_are_local(trained, tmp_path, monkeypatch):
    _, settings, result = trained
    torch.manual_seed(0)
    lpips_file = tmp_path / "weights" / "my_alexnet.pth"  # a configured path ...
    lpips_file.parent.mkdir()
    torch.save(alexnet(weights=None).state_dict(), lpips_file)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # ... and the hub cache
    _fake_inception_weights(tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth")
    data = tmp_path / "data"
    generate_sample_dataset(SampleDataSettings(out=data, size=32, train=2, val=2, test=12))
    configured = with_changes(settings, {"data.root": data, "evaluate.lpips_weights": lpips_file})
    evaluation = evaluate_checkpoint(configured, result.checkpoint, tmp_path / "eval", samples=1)
    assert evaluation.metrics["lpips"] >= 0 and evaluation.metrics["fid"] >= 0
    assert evaluation.notices == ()
    assert json.loads(evaluation.metrics_file.read_text())["fid"] == pytest.approx(evaluation.metrics["fid"])
    configured = with_changes(configured, {"evaluate.lpips_weights": tmp_path / "missing.pth"})
    skipped = evaluate_checkpoint(configured, result.checkpoint, tmp_path / "eval2", samples=1)
    assert "lpips" not in skipped.metrics
    assert any(
        f"LPIPS skipped: no AlexNet ImageNet weights at {tmp_path / 'missing.pth'}" in n for n in skipped.notices
    )


def test_cli_export_and_predict(trained, tmp_path, capsys, monkeypatch):
    project, settings, _result = trained
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(settings.model_dump(mode="json")))
    monkeypatch.chdir(project)
    out = tmp_path / "cli.onnx"
    assert main(["export", "--params", str(params), "--out", str(out)]) == 0
    assert "max |onnxruntime - torch|" in capsys.readouterr().out and out.exists()
    _odd_inputs(tmp_path / "in")
    args = ["predict", "--params", str(params), "--model", str(out), "--input", str(tmp_path / "in"), "--mode", "pad"]
    assert main([*args, "--out", str(tmp_path / "pred")]) == 0
    assert "3 images written" in capsys.readouterr().out


def _images(folder, count, size=(16, 16), seed=0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"im{i:03d}.png")
    return folder


def _stamps(folder):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_predict_streams_batches_of_one_size_and_a_rerun_skips_what_is_done(trained, tmp_path):
    _, settings, result = trained
    folder = _images(tmp_path / "in", 8)
    for i, size in enumerate([(20, 12), (20, 12), (9, 30)]):  # pad mode: three sizes, never in one batch
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)).save(folder / f"odd{i}.jpg")
    for mode in ("resize", "pad"):
        out = tmp_path / mode
        summary = predict_stage(settings, str(result.checkpoint), folder, out, mode, batch_size=4, workers=1)
        assert (summary.written, summary.present, summary.bad) == (11, 0, ())
        assert len(list(out.iterdir())) == 11
        with Image.open(out / "odd2.png") as image:
            assert image.size == (9, 30)
        before = _stamps(out)
        again = predict_stage(settings, str(result.checkpoint), folder, out, mode, workers=0)
        assert (again.written, again.present) == (0, 11) and _stamps(out) == before
    # a batch of 4 gives what one image at a time gives (instance norm: each image is normalised alone)
    run, info = load_runner(result.checkpoint, torch.device("cpu"))
    for name in ("im000", "im005"):
        alone = np.asarray(predict_image(read_image(folder / f"{name}.png"), run, info, "resize"), dtype=np.int16)
        assert np.abs(alone - np.asarray(Image.open(tmp_path / "resize" / f"{name}.png"), dtype=np.int16)).max() <= 1


# Slows each write (inside the atomic write, so a kill most likely leaves a temp file) and runs the CLI.
SLOW_PREDICT = """
import sys, time
import nectargan_core.inference.predict as predict
from nectargan_core.files import write_atomic
predict.save_image_atomic = lambda image, path: write_atomic(
    path, lambda tmp: (image.save(tmp, format="PNG"), time.sleep(0.05)))
from nectargan_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_predict_killed_midway_continues_where_it_stopped(trained, tmp_path, capsys, monkeypatch):
    project, settings, result = trained
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(settings.model_dump(mode="json")))
    folder, out = _images(tmp_path / "in", 40), tmp_path / "out"
    args = ["predict", "--params", str(params), "--model", str(result.checkpoint), "--input", str(folder)]
    args += ["--out", str(out), "--batch-size", "8", "--workers", "1"]
    victim = subprocess.Popen([sys.executable, "-c", SLOW_PREDICT, *args], cwd=project, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*.png"))) < 10 and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
    finally:
        assert victim.wait() == -signal.SIGKILL  # killed, not finished
    done = _stamps(out)
    assert 10 <= len(list(out.glob("*.png"))) < 40
    (out / ".im039.png.k1lled00.tmp").write_bytes(b"half a png")  # as a kill mid-write leaves one
    monkeypatch.chdir(project)
    assert main([*args[:-4], "--out", str(out), "--workers", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"im{i:03d}.png" for i in range(40)]  # no temp file left
    kept = {name: stamp for name, stamp in done.items() if name.endswith(".png") and not name.startswith(".")}
    assert {name: _stamps(out)[name] for name in kept} == kept  # the outputs of the killed run were not rewritten
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{40 - len(kept)} images written") and f"{len(kept)} already there (skipped)" in line


def test_predict_lists_and_skips_bad_images_and_strict_stops_at_the_first(trained, tmp_path, capsys, monkeypatch):
    project, settings, result = trained
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(settings.model_dump(mode="json")))
    folder = _images(tmp_path / "in", 5)
    (folder / "text.png").write_text("not a png")
    (folder / "truncated.png").write_bytes((folder / "im000.png").read_bytes()[:200])
    Image.new("F", (16, 16)).save(folder / "float.tiff")  # 32-bit float: no 8-bit scale
    bad = {"text.png", "truncated.png", "float.tiff"}
    monkeypatch.chdir(project)
    args = ["predict", "--params", str(params), "--model", str(result.checkpoint), "--input", str(folder)]
    args += ["--out", str(tmp_path / "out"), "--workers", "0"]
    assert main([*args, "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--strict" in err[0] and any(str(folder / name) in err[0] for name in bad)
    assert main(args) == 0
    captured = capsys.readouterr()
    listed = [line for line in captured.err.splitlines() if line.startswith("skipped: ")]
    assert sorted(line.split(": ")[1] for line in listed) == sorted(str(folder / name) for name in bad)
    assert "3 bad images skipped (listed above)" in captured.out.strip().splitlines()[-1]
    written = _stamps(tmp_path / "out")
    assert sorted(written) == [f"im{i:03d}.png" for i in range(5)]
    assert main([*args, "--strict"]) == 2  # refuses again, and keeps every output already written
    assert _stamps(tmp_path / "out") == written


def test_predict_refuses_a_folder_of_pairs_and_takes_a_half_when_asked(trained, sample_root, tmp_path):
    _, settings, result = trained
    pairs = sample_root / "test"  # aligned A|B files, 128 x 64
    with pytest.raises(ValueError) as refused:
        predict_stage(settings, str(result.checkpoint), pairs, tmp_path / "out", workers=0)
    message = str(refused.value)
    assert "\n" not in message and "looks like aligned A|B pairs" in message and "--pairs a" in message
    assert not (tmp_path / "out").exists()
    flipped = with_changes(settings, {"data.direction": "BtoA"})
    with pytest.raises(ValueError, match="--pairs b to predict from the B half"):
        predict_stage(flipped, str(result.checkpoint), pairs, tmp_path / "out", workers=0)
    halves = tmp_path / "halves"
    halves.mkdir()
    for path in pairs.iterdir():
        with Image.open(path) as pair:
            pair.crop((0, 0, pair.width // 2, pair.height)).save(halves / path.name)
    summary = predict_stage(settings, str(result.checkpoint), pairs, tmp_path / "a", pairs="a", workers=0)
    predict_stage(settings, str(result.checkpoint), halves, tmp_path / "expected", workers=0)
    assert summary.written == 2
    for path in (tmp_path / "a").iterdir():
        with Image.open(path) as image:
            assert image.size == (64, 64)
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(tmp_path / "expected" / path.name)))
