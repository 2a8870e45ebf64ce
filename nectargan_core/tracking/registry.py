"""The MLflow Model Registry: each run's final generator becomes a version of a real MLflow model.

A version is a pyfunc logged as models-from-code (``generator_model.py``; no pickle) whose one
artifact is the run's final full state, ``latest.pt``, read back with ``weights_only=True``: the
model generates with its generator, and continuing from the version goes on from exactly where
training stopped, from the same file (one copy in MLflow, not two). It has an output signature
(float32 N x C x H x W), an input example (float32 N x C x H x W in [-1, 1], which the model checks
itself) and the project's pinned requirements, so ``mlflow.pyfunc.load_model`` and ``mlflow models
serve`` work on it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

import nectargan_core
from nectargan_core.checkpoint import load_checkpoint
from nectargan_core.layout import LATEST_NAME, checkpoint_epoch, checkpoint_name
from nectargan_core.models import ModelInfo
from nectargan_core.settings import Settings
from nectargan_core.tracking.provenance import file_md5, git_commit, params_hash
from nectargan_core.tracking.sqlite_store import patient
from nectargan_core.tracking.tracker import MODEL_ARTIFACT, SNAPSHOTS_ARTIFACT, Tracker

MODEL_CODE = Path(__file__).with_name("generator_model.py")
CHECKPOINT_ARTIFACT = "checkpoint"  # the pyfunc's artifact key (generator_model.py reads it)
SELECTED_ARTIFACT = "selected"  # the best validated epoch's generator, when train.select_by chose one
PINNED = ("torch", "numpy", "pydantic", "mlflow", "PyYAML")
METADATA_KEY = "nectargan"

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class RegistryError(LookupError):
    """A registered model, version or alias that does not exist (the message lists what does)."""


@dataclass(frozen=True)
class RegisteredCheckpoint:
    name: str
    version: str
    run_id: str
    checkpoint: Path  # local file
    epoch: int

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def model_metadata(settings: Settings, epoch: int) -> dict[str, int]:
    """What a caller needs to feed the model (stored in the MLflow model's metadata)."""
    return ModelInfo.of(settings).metadata(epoch)


def _signature(info: dict[str, int]) -> ModelSignature:
    """The output's tensor spec only. An input spec would make MLflow refuse a wrong rank or channel
    count before the model sees it, with a message that repeats the whole input twice; the model checks
    its input itself (generator_model.py) and answers one line naming the problem."""
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, info["output_channels"], -1, -1))])
    return ModelSignature(outputs=outputs)


def input_example(info: dict[str, int]) -> np.ndarray:
    """One image at the trained crop, values in [-1, 1] (two decimals keep the stored example small)."""
    rng = np.random.default_rng(0)
    shape = (1, info["input_channels"], info["crop_size"], info["crop_size"])
    return rng.uniform(-1, 1, shape).round(2).astype(np.float32)


def register_model(
    tracker: Tracker, run_id: str, full_state: Path, settings: Settings, project_dir: Path, selected: Path | None = None
) -> str:
    """Log the final full state beside a pyfunc of its generator, register it as a new version with
    tags, and move the alias (to the highest version: ``point_alias_at_newest``). With ``selected``
    (the best validated epoch's generator) the pyfunc predicts with those weights; the full state
    stays what continue_from resumes."""
    cfg, client = settings.tracking, tracker.client
    state = load_checkpoint(full_state, mmap=True)
    epoch = int(state["epoch"])
    info = model_metadata(Settings.model_validate(state["settings"]), epoch)
    logged = patient(  # the embedded store, shared by many processes, may be locked a moment
        mlflow.pyfunc.log_model,
        name=MODEL_ARTIFACT,
        python_model=str(MODEL_CODE),
        artifacts={CHECKPOINT_ARTIFACT: str(full_state), **({SELECTED_ARTIFACT: str(selected)} if selected else {})},
        code_paths=[str(Path(nectargan_core.__file__).parent)],
        signature=_signature(info),
        input_example=input_example(info),
        pip_requirements=[f"{name}=={metadata.version(name)}" for name in PINNED],
        metadata={METADATA_KEY: info},
    )
    try:
        client.create_registered_model(cfg.registered_model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {
        "epoch": str(epoch),
        "run_id": run_id,
        "params_hash": params_hash(settings),
        "git_commit": git_commit(project_dir),
        "dvc_md5": file_md5(full_state),
        "full_state": f"artifacts/{full_state.name}",  # in the model's own artifacts
    }
    if selected is not None:
        picked = load_checkpoint(selected, mmap=True)
        tags |= {"selected_epoch": str(picked["epoch"]), "selected_by": str(settings.train.select_by)}
    version = client.create_model_version(
        cfg.registered_model, logged.model_uri, run_id=run_id, tags=tags, model_id=logged.model_id
    ).version
    point_alias_at_newest(client, cfg.registered_model, cfg.alias)
    return str(version)


def registered_version(tracker: Tracker, settings: Settings, run_id: str, epoch: int) -> str | None:
    """The version ``run_id`` already registered at ``epoch``, if any: a continue after a kill between the
    registration and the summary that records it adopts that version instead of registering a second.
    When it is still the newest version, the alias is made to point at it (the kill may have come before
    the alias moved), as the run that never stopped left it."""
    cfg, client = settings.tracking, tracker.client
    try:
        found = client.search_model_versions(f"name='{cfg.registered_model}' and run_id='{run_id}'")
    except MlflowException:
        return None  # no such model yet
    ours = [str(v.version) for v in found if v.tags.get("epoch") == str(epoch)]
    if not ours:
        return None
    version = max(ours, key=int)
    versions, aliases = _available(client, cfg.registered_model)
    if version == versions[-1] and aliases.get(cfg.alias) != version:
        client.set_registered_model_alias(cfg.registered_model, cfg.alias, version)
    return version


def point_alias_at_newest(client: mlflow.MlflowClient, name: str, alias: str) -> str:
    """The alias ends on the model's highest version number, the newest registration, also when several
    processes register at once: each, after creating its version, sets the alias to the highest version
    it sees and looks again until the two agree (a stale write is corrected by the process that made it)."""
    while True:
        newest = str(max(int(v.version) for v in client.search_model_versions(f"name='{name}'")))
        if str(client.get_registered_model(name).aliases.get(alias)) == newest:
            return newest
        client.set_registered_model_alias(name, alias, newest)


def _available(client: mlflow.MlflowClient, name: str) -> tuple[list[str], dict[str, str]]:
    versions = sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int)
    aliases = {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}
    return versions, aliases


def resolve_model_version(tracker: Tracker, uri: str) -> tuple[str, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, version), resolved once (aliases move)."""
    client = tracker.client
    match = _URI.match(uri)
    if not match:
        raise RegistryError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name = match["name"]
    try:
        client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        raise RegistryError(
            f"{uri}: no registered model '{name}'; registered models: {', '.join(known) or 'none'}"
        ) from None
    versions, aliases = _available(client, name)
    if match["version"]:
        if match["version"] not in versions:
            raise RegistryError(f"{uri}: '{name}' has no version {match['version']}; versions: {', '.join(versions)}")
        return name, match["version"]
    alias = match["alias"]
    if alias.lower() == "latest":
        if not versions:
            raise RegistryError(f"{uri}: '{name}' has no versions yet")
        return name, versions[-1]
    if alias not in aliases:
        shown = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
        raise RegistryError(f"{uri}: '{name}' has no alias '{alias}'; aliases: {shown} (and @latest)")
    return name, str(aliases[alias])


def download_checkpoint(
    tracker: Tracker, uri: str, destination: Path, epoch: int | str = "latest"
) -> RegisteredCheckpoint:
    """Resolve ``uri`` to one version and download the checkpoint to continue from into ``destination``.

    ``epoch`` 'latest' (or the version's own epoch) takes the final full state the model carries;
    another number takes that epoch's snapshot from the run (``log_checkpoints: all``).
    """
    client = tracker.client
    name, version = resolve_model_version(tracker, uri)
    model_version = client.get_model_version(name, version)
    version_epoch = int(model_version.tags.get("epoch", "0"))
    run_id = model_version.run_id
    if epoch == "latest" or int(epoch) == version_epoch:  # the full state inside the model
        model = client.get_logged_model(model_version.source.removeprefix("models:/"))
        inside = model_version.tags.get("full_state", f"artifacts/{LATEST_NAME}")
        location = f"{model.artifact_location.rstrip('/')}/{inside}"
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(destination)))
        return RegisteredCheckpoint(name, version, run_id, local, version_epoch)
    logged = {
        logged_epoch
        for a in client.list_artifacts(run_id, SNAPSHOTS_ARTIFACT)
        if (logged_epoch := checkpoint_epoch(Path(a.path).name)) is not None
    }
    if int(epoch) not in logged:
        shown = ", ".join(map(str, sorted({*logged, version_epoch})))
        raise RegistryError(
            f"{uri} (version {version}, run {run_id}) has no checkpoint for epoch {epoch}; logged epochs: "
            f"{shown} (snapshots are logged with tracking.log_checkpoints: all)"
        )
    artifact = f"{SNAPSHOTS_ARTIFACT}/{checkpoint_name(int(epoch))}"
    local = Path(client.download_artifacts(run_id, artifact, str(destination)))
    return RegisteredCheckpoint(name, version, run_id, local, int(epoch))


def load_registered_model(tracker: Tracker, uri: str) -> tuple[Any, dict[str, int]]:
    """The pyfunc of ``uri`` (alias resolved once) and its metadata (channels, crop, side multiple)."""
    name, version = resolve_model_version(tracker, uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    info = model.metadata.metadata[METADATA_KEY]
    return model, json.loads(info) if isinstance(info, str) else info
