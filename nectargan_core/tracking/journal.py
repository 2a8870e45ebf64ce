"""What a run could not log while its tracking server was away, kept in the run folder and sent later.

A training does not stop because the MLflow server is away (a restart, the network, its database):
each record it could not log (an epoch's metrics, an example image, an artifact, params, the dataset input, a
tag, the registration, the run's end) is appended, in order, to a JSON-lines journal in the run folder
(``RunPaths.journal``). Every later logging attempt (the next epoch, the end) first sends what is
pending, and ``nectargan runs sync`` sends what is left afterwards. Sending a kept record is
idempotent, so a record that reached the server just before the connection dropped is not doubled:
a metric step already in MLflow is not logged again, an example image already there is not uploaded
again, a run that has a registered version of that epoch is not registered again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from PIL import Image

from nectargan_core.layout import RunPaths
from nectargan_core.tracking.tracker import Tracker, server_error, unreachable

log = logging.getLogger(__name__)

_FILE_KEYS = ("file", "full_state", "selected")


class ServerAway(RuntimeError):
    """The run's records are complete locally, but the tracking server did not take them all."""


@dataclass
class Journal:
    """The journal of one run folder; ``away`` while the server did not answer this round."""

    tracker: Tracker
    paths: RunPaths
    away: bool = False
    _sent: set[int] | None = field(default=None, repr=False)

    # ------------------------------------------------------------ reading and writing

    def _lines(self) -> list[dict[str, Any]]:
        if not self.paths.journal.exists():
            return []
        lines = []
        for text in self.paths.journal.read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except ValueError:
                continue  # a line cut by a kill while it was appended: its record was never complete
        return lines

    def pending(self) -> list[dict[str, Any]]:
        """The kept records not yet sent, oldest first."""
        lines = self._lines()
        sent = {line["sent"] for line in lines if "sent" in line}
        return [line for line in lines if "seq" in line and line["seq"] not in sent]

    def _append(self, line: dict[str, Any]) -> None:
        self.paths.journal.parent.mkdir(parents=True, exist_ok=True)
        with self.paths.journal.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _keep(self, record: dict[str, Any]) -> None:
        """Append ``record``; a file outside the run folder (a temporary one) is copied into it first."""
        seq = max((line.get("seq", 0) for line in self._lines()), default=0) + 1
        for key in _FILE_KEYS:
            if record.get(key):
                record[key] = self._inside(Path(record[key]), seq)
        self._append({"seq": seq, **record})

    def _inside(self, path: Path, seq: int) -> str:
        """``path`` relative to the run folder, as a copy under the journal's files when it is elsewhere."""
        root = self.paths.root.resolve()
        try:
            return str(path.resolve().relative_to(root))
        except ValueError:
            copy = self.paths.journal_files / f"{seq:06d}" / path.name  # logged under its own name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
            return str(copy.resolve().relative_to(root))

    # ------------------------------------------------------------ sending

    def send(self, record: dict[str, Any]) -> bool:
        """Log ``record`` now, after what is pending; while the server is away, keep it. True when logged."""
        for key in _FILE_KEYS:  # files by absolute path until kept (then relative to the run folder)
            if record.get(key):
                record[key] = str(Path(record[key]).resolve())
        if not (self.flush() and self._deliver(record, check=False)):
            self._keep(record)
            return False
        return True

    def flush(self) -> bool:
        """Send the pending records in order; False (and the rest kept) when the server is away."""
        if self.away:
            return False
        for record in self.pending():
            if not self._deliver(record, check=True):
                return False
            self._append({"sent": record["seq"]})
        return True

    def _deliver(self, record: dict[str, Any], check: bool) -> bool:
        """Log ``record``; False (and the server marked away) when it does not answer."""
        try:
            _deliver(self.tracker, record, self.paths, check=check)
        except Exception as exc:
            if not unreachable(exc):
                raise
            self._went_away(exc)
            return False
        return True

    def try_again(self) -> None:
        """A new round (the next epoch, the end): the server is asked again."""
        self.away = False

    def _went_away(self, exc: BaseException) -> None:
        if not self.away:
            log.warning(
                "tracking server %s did not answer (%s): training goes on; what it could not log is kept in %s "
                "and sent when it is back",
                self.tracker.uri,
                server_error(exc),
                self.paths.journal,
            )
        self.away = True

    def unsent_error(self) -> ServerAway:
        return ServerAway(
            f"tracking server {self.tracker.uri} did not take {len(self.pending())} records of the run in "
            f"{self.paths.root} (kept in {self.paths.journal}); the training's outputs there are complete: when "
            f"the server is back, run `nectargan runs sync --output-dir {self.paths.root}` to finish logging"
        )


# ---------------------------------------------------------------- one record


def _deliver(tracker: Tracker, record: dict[str, Any], paths: RunPaths, check: bool) -> None:
    """Log one record; with ``check`` (a kept record), what MLflow already holds is not logged again."""
    client, run_id, kind = tracker.client, record["run"], record["kind"]
    if kind == "metrics":
        step, values = int(record["step"]), record["values"]
        if check:
            values = {
                k: v for k, v in values.items() if step not in {m.step for m in client.get_metric_history(run_id, k)}
            }
        metrics = [Metric(key, float(value), int(record["timestamp"]), step) for key, value in values.items()]
        if metrics:
            client.log_batch(run_id, metrics=metrics)
    elif kind == "image":
        if check and _image_logged(tracker, run_id, record["key"], int(record["step"])):
            return
        with Image.open(paths.root / record["file"]) as image:
            client.log_image(run_id, image.copy(), key=record["key"], step=int(record["step"]))
    elif kind == "artifact":
        file = paths.root / record["file"]
        if not file.exists():  # a snapshot pruned since (keep_checkpoints)
            log.warning("%s: gone since it was kept; not logged to run %s", file, run_id)
            return
        client.log_artifact(run_id, str(file), record.get("folder"))
    elif kind == "params":
        params = [Param(key, value) for key, value in record["values"].items()]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            client.log_batch(run_id, params=params[start : start + 100])
    elif kind == "dataset":  # MLflow logs a dataset input to a run once, however often it is sent
        source = json.dumps({"uri": record["source"]})
        dataset = Dataset(record["name"], record["digest"], "local", source)
        context = InputTag(MLFLOW_DATASET_CONTEXT, "training")
        client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[context])])
    elif kind == "tag":
        client.set_tag(run_id, record["key"], record["value"])
    elif kind == "register":
        _register(tracker, record, paths)
    elif kind == "end":
        client.set_terminated(run_id, record["status"])
    else:
        raise ValueError(f"{paths.journal}: unknown record kind {kind!r} (written by a newer nectargan?)")


def _image_logged(tracker: Tracker, run_id: str, key: str, step: int) -> bool:
    prefix = f"{re.sub('/', '~', key)}+step+{step}+"
    return any(Path(a.path).name.startswith(prefix) for a in tracker.client.list_artifacts(run_id, "images"))


def _register(tracker: Tracker, record: dict[str, Any], paths: RunPaths) -> None:
    """Register the run's final state (unless a version of that epoch exists) and note it in the summary."""
    from nectargan_core.settings import Settings
    from nectargan_core.tracking.registry import register_model
    from nectargan_core.training.summary import RunSummary

    run_id, epoch, settings = record["run"], int(record["epoch"]), Settings.model_validate(record["settings"])
    name = settings.tracking.registered_model
    found = [
        v
        for v in tracker.client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        if v.tags.get("epoch") == str(epoch)
    ]
    if found:
        version = str(found[0].version)
    else:
        full_state = paths.root / record["full_state"]
        selected = paths.root / record["selected"] if record.get("selected") else None
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            version = register_model(tracker, run_id, full_state, settings, Path(record["project"]), selected)
        else:
            with tracker.start_run({}, system_metrics=False, run_id=run_id):
                version = register_model(tracker, run_id, full_state, settings, Path(record["project"]), selected)
    summary = RunSummary.read(paths.summary)
    if summary is not None and summary.mlflow_run_id == run_id:
        summary.with_changes(model_version=version, registered_epoch=epoch).write(paths.summary)
    log.info("registered %s version %s from run %s (epoch %d)", name, version, run_id, epoch)


def now_ms() -> int:
    return int(time.time() * 1000)


def sync_run(tracker: Tracker, paths: RunPaths) -> int:
    """Send what the run folder's journal still holds (``nectargan runs sync``); returns how many records."""
    from nectargan_core.training.summary import RunSummary

    summary = RunSummary.read(paths.summary)
    if summary is not None and summary.tracking_uri and summary.tracking_uri != tracker.uri:
        raise ValueError(
            f"{paths.root} was tracked in {summary.tracking_uri}, not {tracker.uri}: "
            f"run `nectargan runs sync` with -s tracking.uri={summary.tracking_uri}"
        )
    journal = Journal(tracker, paths)
    count = len(journal.pending())
    if not journal.flush():
        raise ServerAway(
            f"tracking server {tracker.uri} did not answer; {len(journal.pending())} records of {paths.root} are "
            f"still kept in {paths.journal}: run `nectargan runs sync --output-dir {paths.root}` again when it is back"
        )
    return count
