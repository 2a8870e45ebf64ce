"""The MLflow Model Registry: each run's final checkpoint becomes a version; versions load back.

A checkpoint is not an MLflow model flavour, so versions are created explicitly from the run's
``model/`` artifact folder (``MODEL_ARTIFACT``), which holds the checkpoint file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from nectargan_core.layout import checkpoint_epoch
from nectargan_core.settings import Settings
from nectargan_core.tracking.provenance import file_md5, git_commit, params_hash
from nectargan_core.tracking.tracker import CHECKPOINTS_ARTIFACT, MODEL_ARTIFACT, Tracker

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


def register_checkpoint(
    tracker: Tracker, run_id: str, checkpoint: Path, epoch: int, settings: Settings, project_dir: Path
) -> str:
    """Log the checkpoint under ``model/``, add it as a new version with tags, move the alias to it."""
    cfg, client = settings.tracking, tracker.client
    client.log_artifact(run_id, str(checkpoint), MODEL_ARTIFACT)
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
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
        "dvc_md5": file_md5(checkpoint),
        "checkpoint": checkpoint.name,
    }
    version = client.create_model_version(cfg.registered_model, source, run_id=run_id, tags=tags).version
    client.set_registered_model_alias(cfg.registered_model, cfg.alias, version)
    return str(version)


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
    """Resolve ``uri`` to one version and download its checkpoint into ``destination``.

    ``epoch`` 'latest' takes the version's own (final) checkpoint; a number takes that epoch's
    checkpoint from the artifacts of the run that produced the version.
    """
    client = tracker.client
    name, version = resolve_model_version(tracker, uri)
    model_version = client.get_model_version(name, version)
    version_epoch = int(model_version.tags.get("epoch", "0"))
    if epoch == "latest" or int(epoch) == version_epoch:
        artifact, chosen = f"models:/{name}/{version}", version_epoch
    else:
        logged = {
            logged_epoch: a.path
            for a in client.list_artifacts(model_version.run_id, CHECKPOINTS_ARTIFACT)
            if (logged_epoch := checkpoint_epoch(Path(a.path).name)) is not None
        }
        if int(epoch) not in logged:
            shown = ", ".join(map(str, sorted({*logged, version_epoch})))
            raise RegistryError(
                f"{uri} (version {version}, run {model_version.run_id}) has no checkpoint for epoch {epoch}; "
                f"logged epochs: {shown}"
            )
        artifact, chosen = f"runs:/{model_version.run_id}/{logged[int(epoch)]}", int(epoch)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact, dst_path=str(destination)))
    files = [local] if local.is_file() else sorted(local.glob("*.pt"))
    if len(files) != 1:
        raise RegistryError(f"{artifact}: expected one checkpoint file, found {[f.name for f in files]}")
    return RegisteredCheckpoint(name, version, model_version.run_id, files[0], chosen)
