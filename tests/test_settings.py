from pathlib import Path

import pytest
import yaml

from nectargan_core.settings import Settings, SettingsError, load_settings, settings_from_dict, with_changes

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_file_is_valid_and_complete():
    settings = load_settings(ROOT / "params.yaml")
    # Every key of the model is spelled out in params.yaml, so users see every setting.
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert Settings.model_validate(tree) == settings
    assert set(tree) == set(Settings.model_fields)
    assert set(tree["train"]["loss"]) == set(type(settings.train.loss).model_fields)


def test_defaults_follow_the_spec():
    s = Settings()
    assert (s.train.generator.epochs, s.train.generator.epochs_decay) == (100, 100)
    assert (s.train.generator.initial, s.train.generator.target, s.train.generator.beta1) == (2e-4, 0.0, 0.5)
    assert s.train.separate_schedules is False and s.train.total_epochs == 200
    assert (s.train.loss.gan, s.train.loss.l1, s.train.loss.l2) == (1.0, 100.0, 0.0)
    assert (s.train.loss.sobel, s.train.loss.laplacian, s.train.loss.vgg) == (0.0, 0.0, 0.0)
    assert (s.data.load_size, s.data.crop_size) == (286, 256)
    assert s.data.augment.joint.hflip.p == 0.5
    assert s.data.augment.joint.vflip.p == 0.0 and s.data.augment.input.gaussian_noise.p == 0.0
    assert s.data.augment.target == []
    assert (s.logging.log_losses, s.logging.dump_frequency) == (True, 5)
    assert (s.train.continue_train, s.train.load_epoch, s.train.continue_from) == (False, "latest", None)


def test_every_field_has_a_description():
    def walk(model_cls, prefix=""):
        for name, field in model_cls.model_fields.items():
            if name == "kind":
                continue
            assert field.description, f"{prefix}{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation, f"{prefix}{name}.")

    walk(Settings)


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  loss:\n    l1: 10\n")
    s = load_settings(path, ["train.loss.l1=50", "train.loss.sobel=2.5", "train.load_epoch=3", "data.root=/x/y"])
    assert s.train.loss.l1 == 50.0 and s.train.loss.sobel == 2.5
    assert s.train.load_epoch == 3
    assert s.data.root == Path("/x/y")


def test_every_problem_is_listed_at_once(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "train": {"los": {"l1": 1}, "generator": {"epochs": -1, "beta1": 1.0}},
                "data": {"load_size": 64, "crop_size": 128},
            }
        )
    )
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    problems = info.value.problems
    text = str(info.value)
    assert str(path) in text
    assert any("train.los" in p and "did you mean 'train.loss'" in p for p in problems)
    assert any(p.startswith("train.generator.epochs:") for p in problems)
    assert any(p.startswith("train.generator.beta1:") for p in problems)
    assert any("crop_size (128) is larger than data.load_size (64)" in p for p in problems)
    assert any("crop_size (128) must be a multiple of 256" in p for p in problems)
    assert len(problems) == 5


def test_crop_must_fit_the_discriminator():
    with pytest.raises(
        SettingsError, match=r"too small for model.discriminator.n_layers=3: the PatchGAN needs at least 24"
    ):
        settings_from_dict(
            {"data": {"load_size": 16, "crop_size": 16}, "model": {"generator": {"n_downs": 1, "dropout_blocks": 1}}}
        )


def test_crop_must_fit_generator_depth():
    with pytest.raises(SettingsError, match=r"multiple of 256 for model.generator.n_downs=6"):
        settings_from_dict({"data": {"load_size": 300, "crop_size": 192}})
    ok = settings_from_dict({"data": {"load_size": 72, "crop_size": 64}, "model": {"generator": {"n_downs": 4}}})
    assert ok.data.crop_size == 64


@pytest.mark.parametrize(
    ("tree", "needle"),
    [
        ({"data": {"augment": {"joint": {"hflip": {"p": 1.5}}}}}, "data.augment.joint.hflip.p"),
        ({"data": {"augment": {"input": {"gamma": {"gamma_range": [2, 1]}}}}}, "low <= high"),
        ({"data": {"augment": {"target": [{"kind": "blur"}]}}}, "data.augment.target.0"),
        ({"data": {"augment": {"input": {"gamma": {"gamma_range": [0, 1]}}}}}, "values must be > 0"),
        ({"data": {"augment": {"input": {"color_jitter": {"hue": [-0.6, 0]}}}}}, "[-0.5, 0.5]"),
        ({"data": {"augment": {"input": {"color_jitter": {"contrast": [-1, 1]}}}}}, "contrast factors must be >= 0"),
        ({"data": {"augment": {"input": {"gaussian_noise": {"std_range": [-0.1, 0.1]}}}}}, "values must be >= 0"),
        ({"data": {"augment": {"joint": {"coarse_dropout": {"size_range": [0.5, 1.5]}}}}}, "within (0, 1]"),
        ({"data": {"augment": {"joint": {"coarse_dropout": {"holes": [0, 2]}}}}}, "values must be > 0"),
        ({"train": {"load_epoch": 0}}, "train.load_epoch"),
        ({"train": {"loss": {"gan_mode": "wgan"}}}, "train.loss.gan_mode"),
        ({"seed": "abc"}, "seed"),
        ({"datta": {}}, "did you mean 'data'"),
        (
            {
                "train": {
                    "loss": {
                        "schedules": {
                            "l1": {"kind": "exponential", "initial": 0, "target": 5, "start_epoch": 1, "end_epoch": 3}
                        }
                    }
                }
            },
            "exponential schedule needs initial > 0",
        ),
        (
            {"train": {"loss": {"schedules": {"l1": {"initial": 1, "target": 5, "start_epoch": 5, "end_epoch": 3}}}}},
            "end_epoch (3) is before start_epoch (5)",
        ),
    ],
)
def test_bad_values_are_named(tree, needle):
    with pytest.raises(SettingsError) as info:
        settings_from_dict(tree)
    assert needle in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad)
    with pytest.raises(SettingsError, match=r"key\.sub=value"):
        load_settings(ROOT / "params.yaml", ["train.loss.l1"])


def test_discriminator_schedule_follows_generator_unless_separate():
    s = settings_from_dict(
        {"train": {"generator": {"epochs": 3, "initial": 1e-3}, "discriminator": {"epochs": 9, "beta1": 0.9}}}
    )
    d = s.train.discriminator_schedule
    assert (d.epochs, d.initial, d.beta1) == (3, 1e-3, 0.9)
    s = with_changes(s, {"train.separate_schedules": True})
    d = s.train.discriminator_schedule
    assert (d.epochs, d.initial, d.beta1) == (9, 2e-4, 0.9)


def test_an_empty_params_file_or_a_key_given_twice_is_an_error(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(SettingsError, match="the params file is empty"):
        load_settings(empty)
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  loss:\n    l1: 100\n    gan: 1\n    l1: 50\n")
    with pytest.raises(SettingsError, match=r"key 'l1' appears twice in one mapping \(lines 3 and 5\)"):
        load_settings(twice)
