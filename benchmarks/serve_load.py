"""The served model under load: `mlflow models serve --env-manager local` of a registered version on
127.0.0.1, 8 concurrent locust users (headless, in a subprocess), a fixed number of requests within a
time bound, in rounds one after another. Prints, per round, p50/p95/p99 latency, throughput, errors,
and the server's memory (VmRSS of the server process and its children) before and after it: memory
that grows round after round would be a leak.

    .venv/bin/python benchmarks/serve_load.py --size 256 --requests 96
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:5001 --pid PID --size 256

Without ``--url`` it registers a generator of random weights (the default networks for ``--size``:
64 features, the pix2pix depth; nothing is trained) in a temporary project folder, serves it, and
at the end stops the server and removes the folder; with ``--url`` and ``--pid`` it loads a server
already running. Every answer is checked (HTTP 200, the expected shape, values in [-1, 1]); anything
else counts as an error.
tests/test_tracking.py runs a small load (``test_serve_load_*``) against its served model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "serve_locustfile.py"
BIN = Path(sys.executable).parent  # mlflow looks for uvicorn on PATH: the venv's bin goes first


@dataclass
class LoadResult:
    requests: int  # asked for
    latencies_ms: list[float]  # one per answered request, failures included
    errors: dict[str, int]  # reason -> count; unanswered requests count as errors too
    wall_s: float
    rss_before_mib: float
    rss_after_mib: float
    log: str = field(repr=False, default="")

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` and every descendant (mlflow's CLI runs uvicorn as a child), from /proc/PID/status."""
    total_kib = 0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:  # ended meanwhile
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total_kib / 1024


def invoke(url: str, array: np.ndarray, timeout: float = 300) -> tuple[int, dict]:
    """POST ``array`` as ``{"inputs": ...}``; (HTTP status, decoded JSON answer)."""
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps({"inputs": array.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def run_load(
    url: str,
    pid: int,
    size: int,
    in_channels: int = 3,
    out_channels: int = 3,
    users: int = 8,
    requests: int = 96,
    batch: int = 1,
    time_limit_s: int = 600,
) -> LoadResult:
    """One warm-up request, the server's RSS, ``requests`` requests from ``users`` locust users (bounded
    by ``time_limit_s``), the server's RSS again."""
    status, _ = invoke(url, np.zeros((batch, in_channels, size, size), np.float32))
    if status != 200:
        raise RuntimeError(f"{url}: the warm-up request got HTTP {status}")
    before = rss_mib(pid)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as work:
        records = Path(work) / "records.json"
        command = [
            *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url),
            *("-u", str(users), "-r", str(users), "-t", f"{time_limit_s}s", "--stop-timeout", "30"),
            *("--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0"),
            *("--image-size", str(size), "--in-channels", str(in_channels), "--out-channels", str(out_channels)),
            *("--batch", str(batch), "--total-requests", str(requests), "--records", str(records)),
        ]
        started = time.monotonic()
        done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=time_limit_s + 120)
        elapsed = time.monotonic() - started
        if done.returncode != 0 or not records.is_file():
            raise RuntimeError(f"locust failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
        rows = json.loads(records.read_text())
    after = rss_mib(pid)
    errors: dict[str, int] = {}
    for row in rows:
        if row["error"]:
            errors[row["error"]] = errors.get(row["error"], 0) + 1
    if len(rows) < requests:
        errors[f"not answered within {time_limit_s} s"] = requests - len(rows)
    ends = [row["end"] for row in rows]
    wall = max(ends) - min(end - row["ms"] / 1000 for end, row in zip(ends, rows, strict=True)) if rows else elapsed
    return LoadResult(
        requests, [row["ms"] for row in rows], errors, wall, before, after, done.stdout[-2000:] + done.stderr[-2000:]
    )


def report(result: LoadResult, users: int, size: int, batch: int) -> str:
    lines = [
        f"{result.requests} requests of {batch} x {size} px from {users} users in {result.wall_s:.1f} s",
        "latency ms: " + "  ".join(f"p{q} {result.percentile(q):.0f}" for q in (50, 95, 99)),
        f"throughput: {result.throughput:.2f} req/s ({result.throughput * batch:.2f} images/s)",
        f"errors: {result.error_count}" + "".join(f"\n  {n} x {reason}" for reason, n in result.errors.items()),
        f"server RSS MiB: before {result.rss_before_mib:.0f}, after {result.rss_after_mib:.0f}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ a server of its own


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def register_random_model(project: Path, size: int) -> str:
    """A generator of random weights (the default networks for ``size``) registered as version 1 in the
    project's embedded store, as a training registers its final state; returns the tracking URI."""
    import torch

    from nectargan_core.checkpoint import save_checkpoint
    from nectargan_core.models import build_generator
    from nectargan_core.settings import settings_from_dict
    from nectargan_core.tracking.registry import register_model
    from nectargan_core.tracking.tracker import Tracker

    n_downs = size.bit_length() - 1 - 2  # deepest UNet for the size, as benchmarks/train_step.py
    settings = settings_from_dict(
        {
            "data": {"load_size": size, "crop_size": size},
            "model": {"generator": {"n_downs": n_downs, "dropout_blocks": min(3, n_downs + 1)}},
        }
    )
    torch.manual_seed(0)
    state = {"epoch": 1, "seed": 0, "settings": settings.model_dump(mode="json")}
    full_state = save_checkpoint(project / "latest.pt", {**state, "generator": build_generator(settings).state_dict()})
    tracker = Tracker.connect(settings.tracking, project)
    with tracker.start_run(tags={"purpose": "serve_load benchmark"}, system_metrics=False) as run_id:
        register_model(tracker, run_id, full_state, settings, project)
    return tracker.uri


def start_server(tracking_uri: str, model_uri: str, log: Path, timeout_s: float = 300) -> tuple[subprocess.Popen, str]:
    """``mlflow models serve --env-manager local`` on a free loopback port, once /ping answers."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with log.open("w") as handle:
        server = subprocess.Popen(
            [
                *(str(BIN / "mlflow"), "models", "serve", "-m", model_uri),
                *("--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)),
            ],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_server(server)
                raise RuntimeError(f"mlflow models serve did not answer /ping:\n{log.read_text()[-3000:]}") from None
            time.sleep(1)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (else one is started on a random-weight model)")
    parser.add_argument("--pid", type=int, help="the running server's process id (with --url), for its RSS")
    parser.add_argument("--size", type=int, default=256, help="H and W of each image")
    parser.add_argument("--channels", type=int, nargs=2, default=(3, 3), metavar=("IN", "OUT"))
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=96, help="all users together")
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--time-limit", type=int, default=600, help="seconds; unanswered requests are errors")
    parser.add_argument("--rounds", type=int, default=2, help="loads one after another (RSS after each)")
    args = parser.parse_args()
    if bool(args.url) != bool(args.pid):
        parser.error("--url and --pid go together")
    server, scratch = None, contextlib.ExitStack()
    if args.url is None:  # a project folder of its own, removed at the end
        project = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="serve-load-project-")))
        print(f"registering a random-weight generator for {args.size} px in {project} ...", flush=True)
        uri = register_random_model(project, args.size)
        server, url = start_server(uri, "models:/nectargan-generator/1", project / "serve.log")
        pid = server.pid
    else:
        url, pid = args.url.rstrip("/"), args.pid
    results = []
    try:
        for _ in range(args.rounds):
            results.append(
                run_load(url, pid, args.size, *args.channels, args.users, args.requests, args.batch, args.time_limit)
            )
    finally:
        if server is not None:
            stop_server(server)
        scratch.close()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(f"machine: {os.cpu_count()} CPUs ({cpu}), {platform.machine()}")
    for number, result in enumerate(results, 1):
        print(f"round {number}: " + report(result, args.users, args.size, args.batch))


if __name__ == "__main__":
    main()
