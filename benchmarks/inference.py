"""Latency of the generator on the CPU: eager PyTorch against the exported ONNX model in onnxruntime.

The generator is the project's (params.yaml's model settings, random weights, eval mode), exported
by the project's exporter into a temporary folder. Three variants run the same random batch:

    eager         the PyTorch module under torch.inference_mode (torch's default threads)
    onnx default  the ONNX file in an onnxruntime session with onnxruntime's default options
                  (how every consumer loaded it before the tuned session)
    onnx          the same file in the project's session (nectargan_core.inference.onnx.onnx_session)

Rounds alternate the variants, so drift in machine load hits every side alike; each round times
``--iters`` calls per variant and keeps their median, and the median round is reported, in ms per
call (the whole batch), with each ONNX variant's ratio to eager. ``--sweep`` adds the session
settings that were tried one change at a time from the tuned session (and eager on one thread),
timed in the same interleaved rounds.

    .venv/bin/python benchmarks/inference.py --size 256 --rounds 3
    .venv/bin/python benchmarks/inference.py --size 256 --rounds 5 --sweep
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from nectargan_core.inference.onnx import (
    PARITY_TOLERANCE,
    cpu_cores,
    onnx_session,
    session_options,
    write_generator_onnx,
)
from nectargan_core.models import ModelInfo, build_generator
from nectargan_core.settings import load_settings

VARIANTS = ("eager", "onnx default", "onnx")


def variants(generator: torch.nn.Module, onnx_path: Path, threads: int | None) -> dict[str, Callable]:
    """name -> run(batch as a float32 array) for each variant, the generator already in eval mode."""
    default = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    tuned = onnx_session(onnx_path, threads)

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return generator(torch.from_numpy(x)).numpy()

    return {
        "eager": eager,
        "onnx default": lambda x: default.run(None, {"input": x})[0],
        "onnx": lambda x: tuned.run(None, {"input": x})[0],
    }


def sweep(generator: torch.nn.Module, onnx_path: Path, threads: int | None) -> dict[str, Callable]:
    """The tuned session with one setting changed, and eager on one thread."""

    def session(change: Callable[[ort.SessionOptions], None]) -> ort.InferenceSession:
        options = session_options(threads)
        change(options)
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    one = onnx_session(onnx_path, threads=1)
    spinning = session(lambda o: o.add_session_config_entry("session.intra_op.allow_spinning", "1"))
    no_arena = session(lambda o: setattr(o, "enable_cpu_mem_arena", False))
    extended = session(lambda o: setattr(o, "graph_optimization_level", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED))
    bound = onnx_session(onnx_path, threads)

    def io_binding(x: np.ndarray) -> np.ndarray:  # the output written into a preallocated array
        out = np.empty((x.shape[0], bound.get_outputs()[0].shape[1], *x.shape[2:]), dtype=np.float32)
        binding = bound.io_binding()
        binding.bind_cpu_input("input", x)
        binding.bind_output("output", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        bound.run_with_iobinding(binding)
        return out

    def eager_one_thread(x: np.ndarray) -> np.ndarray:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                return generator(torch.from_numpy(x)).numpy()
        finally:
            torch.set_num_threads(before)

    return {
        "onnx, 1 thread": lambda x: one.run(None, {"input": x})[0],
        "onnx, spinning threads": lambda x: spinning.run(None, {"input": x})[0],
        "onnx, no memory arena": lambda x: no_arena.run(None, {"input": x})[0],
        "onnx, ORT_ENABLE_EXTENDED (no NCHWc)": lambda x: extended.run(None, {"input": x})[0],
        "onnx, IO binding": io_binding,
        "eager, 1 thread": eager_one_thread,
    }


def measure(runs: dict[str, Callable], x: np.ndarray, rounds: int, iters: int) -> dict[str, float]:
    """Median over rounds of each variant's median ms per call; the variants alternate every round."""
    outputs = {name: run(x) for name, run in runs.items()}  # warm-up, and the outputs to compare
    for name, out in outputs.items():
        diff = float(np.abs(out - outputs["eager"]).max())
        if diff > PARITY_TOLERANCE:
            raise RuntimeError(f"{name} differs from eager by {diff:.2e}")
    per_round: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            calls = []
            for _ in range(iters):
                start = time.perf_counter()
                run(x)
                calls.append(time.perf_counter() - start)
            per_round[name].append(1000 * statistics.median(calls))
    return {name: statistics.median(values) for name, values in per_round.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="input side in pixels")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant (median reported)")
    parser.add_argument("--iters", type=int, default=3, help="calls per variant per round (their median)")
    parser.add_argument("--threads", type=int, default=None, help="the tuned session's threads (default: cores)")
    parser.add_argument("--sweep", action="store_true", help="also time the session settings tried one by one")
    parser.add_argument("--params", default="params.yaml", help="model settings (random weights)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="KEY=VALUE settings overrides")
    args = parser.parse_args()

    settings = load_settings(args.params, args.overrides)
    torch.manual_seed(0)
    generator = build_generator(settings).eval()
    info = ModelInfo.of(settings)
    if args.size % info.side_multiple:
        parser.error(f"--size must be a multiple of {info.side_multiple} for this generator")
    channels = settings.data.input_channels
    with FlopCounterMode(display=False) as flops:
        generator(torch.zeros(1, channels, args.size, args.size))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {cpu_cores()} cores; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}; "
        f"load average {load}"
    )
    source = " ".join([str(args.params), *args.overrides])
    print(f"generator: {source}, {flops.get_total_flops() / 1e9:.1f} GFLOP per image")
    with tempfile.TemporaryDirectory() as folder:
        path = write_generator_onnx(generator, info, 0, Path(folder) / "generator.onnx")
        runs = variants(generator, path, args.threads)
        if args.sweep:
            ort.set_default_logger_severity(3)  # overriding a session config entry warns
            runs |= sweep(generator, path, args.threads)
        print(
            f"{'size':>5} {'batch':>5} {'eager ms':>9} {'onnx default ms':>16} {'onnx ms':>8} "
            f"{'default/eager':>14} {'onnx/eager':>11}"
        )
        for batch in args.batches:
            x = np.random.default_rng(0).uniform(-1, 1, (batch, channels, args.size, args.size)).astype(np.float32)
            ms = measure(runs, x, args.rounds, args.iters)
            eager, default, tuned = (ms[name] for name in VARIANTS)
            print(
                f"{args.size:>5} {batch:>5} {eager:>9.1f} {default:>16.1f} {tuned:>8.1f} "
                f"{default / eager:>14.3f} {tuned / eager:>11.3f}",
                flush=True,
            )
            for name in list(ms)[len(VARIANTS) :]:
                print(f"{'':>11} {name:<38} {ms[name]:>8.1f} ms {ms[name] / eager:>8.3f} x eager", flush=True)


if __name__ == "__main__":
    main()
