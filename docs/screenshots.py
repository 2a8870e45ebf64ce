"""Screenshots of the MLflow UI for docs/comparing.md, taken from a real study in headless Chromium.

    .venv/bin/nectargan search --study weightings --trials 4 -s train.loss.l1=10:200:log \
        --base train.generator.epochs=2 --base train.generator.epochs_decay=2
    .venv/bin/python docs/screenshots.py --study weightings      # writes docs/images/*.png

It starts `mlflow server` on a free loopback port over the project's embedded store, finds the
study's child runs, and shoots the runs table and MLflow's Compare page of those children. Needs
Debian's `chromium` on PATH.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from nectargan_core.settings import load_settings
from nectargan_core.tracking.studies import recorded_children
from nectargan_core.tracking.tracker import Tracker

IMAGES = Path(__file__).parent / "images"
BROWSER = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=30000"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the MLflow server at {url} did not answer within {timeout} s")


def _shoot(chromium: str, url: str, out: Path, size: str = "1400,900") -> None:
    subprocess.run([chromium, *BROWSER, f"--window-size={size}", f"--screenshot={out}", url], check=True, timeout=180)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="the sweep or search name (its parent run's tag)")
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="the project holding mlflow.db")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("error: needs a browser on PATH: apt-get install chromium (Debian)")
    project = args.project.resolve()
    settings = load_settings(project / "params.yaml")
    tracker = Tracker.connect(settings.tracking, project)
    children = recorded_children(tracker, args.study)  # a clear error when the study has none
    IMAGES.mkdir(exist_ok=True)
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracker.uri]
    server = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)], cwd=project)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(f"{base}/health")
        ids = json.dumps([child.run_id for child in children])
        query = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps([tracker.experiment_id])})
        _shoot(chromium, f"{base}/#/experiments/{tracker.experiment_id}/runs", IMAGES / "mlflow-runs.png")
        _shoot(chromium, f"{base}/#/compare-runs?{query}", IMAGES / "mlflow-compare.png", "1400,1600")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
