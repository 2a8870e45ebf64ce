"""What follows each full state: the best epoch promoted, the epoch's snapshot, old snapshots pruned.

One function for training and for a continue: a run killed after its full state was renamed but
before these steps were done (mid-snapshot, or before pruning) is finished from that full state by
the continue, so it ends with the same files as the run that never stopped.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from nectargan_core.checkpoint import prune_checkpoints, save_checkpoint, snapshot_of
from nectargan_core.files import write_atomic
from nectargan_core.layout import RunPaths, checkpoint_name
from nectargan_core.settings import Settings


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system has them, else a copy."""
    target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def promote_best(paths: RunPaths, best_epoch: int | None) -> None:
    """With a full state written: its best epoch becomes ``best.pt``, other candidates go."""
    candidates = paths.best_candidates()
    chosen = candidates.get(best_epoch) if best_epoch is not None else None
    if chosen is not None:
        write_atomic(paths.best, lambda tmp: link_or_copy(chosen, tmp))
    for path in candidates.values():
        path.unlink()


def after_full_state(
    settings: Settings, paths: RunPaths, state: dict[str, Any], latest: Path, rewrite: bool = True
) -> Path:
    """Promote the best epoch (with a selection), write the snapshot of ``state``'s epoch, prune; returns
    the snapshot. ``rewrite=False`` (a continue) keeps a snapshot that is already there: renamed into
    place, it is whole."""
    cfg = settings.train
    if (selection := state.get("selection")) is not None:
        promote_best(paths, selection.get("best_epoch"))
    snapshot = paths.snapshots / checkpoint_name(int(state["epoch"]))
    if rewrite or not snapshot.is_file():
        if cfg.snapshot == "full":  # the same bytes as the full state: a second name, not a second copy
            write_atomic(snapshot, lambda tmp: link_or_copy(latest, tmp))
        else:
            save_checkpoint(snapshot, snapshot_of(state, cfg.snapshot, cfg.snapshot_precision))
    prune_checkpoints(paths.snapshots, cfg.keep_checkpoints)
    return snapshot
