"""The GPU benchmark keeps working: its smoke run (tiny, on the CPU here) prints every variant."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # compiles the networks of variant (c)
def test_gpu_throughput_smoke_prints_img_s_for_every_variant():
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_throughput.py", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if "img/s" in line]
    assert [line[:3] for line in lines] == ["(a)", "(b)", "(b)", "(b)", "(b)", "(c)"], done.stdout
    assert all(setting in done.stdout for setting in ("+ train.channels_last", "+ train.compile", "+ data.loader"))
    assert all("% of" in line and "data wait" in line for line in lines)
    assert "matmul peak" in done.stdout and "(c)/(a)" in done.stdout


BLOCKER = """
import sys
for name in ("mlflow", "prefect", "dvc", "pandera", "pandas", "torchmetrics", "torch_fidelity", "matplotlib",
             "scipy", "psutil", "tqdm", "onnx", "onnxruntime", "sqlalchemy"):
    sys.modules[name] = None  # `import name` fails, importlib.util.find_spec(name) finds nothing
sys.path.insert(0, "benchmarks")
import gpu_throughput
from nectargan_core.training.step import GANStep
from nectargan_core.losses.metrics import per_image_metrics  # per-epoch validation runs there too
print("imported")
"""


def test_the_benchmark_and_the_training_step_import_with_only_what_a_gpu_machine_has():
    """torch, torchvision, numpy, Pillow, pyyaml and pydantic: the rest of the stack (tracking, orchestration,
    torchmetrics, plots) is missing there; the validation metrics need none of it."""
    done = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-3000:]
