"""Settings small enough for CPU tests: 32 px crops, 8-feature networks, 3 steps per epoch on the
6-image train split of the ``sample_root`` fixture."""

from pathlib import Path

from nectargan_core.settings import Settings, settings_from_dict


def tiny_settings(root: Path, output_dir: Path | None = None, **train: object) -> Settings:
    """``train`` overrides keys of the train group; dotted keys reach into it (``generator.epochs=3``)."""
    train_cfg: dict = {
        "generator": {"epochs": 2, "epochs_decay": 0},
        "checkpoint_every": 1,
        "keep_checkpoints": 10,
        "num_examples": 2,
        "device": "cpu",
    }
    if output_dir is not None:
        train_cfg["output_dir"] = str(output_dir)
    for key, value in train.items():
        node = train_cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return settings_from_dict(
        {
            "seed": 7,
            "data": {"root": str(root), "load_size": 36, "crop_size": 32, "batch_size": 2},
            "model": {
                "generator": {"features": 8, "n_downs": 1, "dropout_blocks": 2},
                "discriminator": {"features": 8},
            },
            "train": train_cfg,
            "logging": {"dump_frequency": 5, "progress_every": 2},
            "tracking": {"system_metrics": False},
        }
    )
