"""Training configuration: YAML file, command-line overrides, validation, resolved config round trip."""

from pathlib import Path

import pytest

from animal_reid.training.config import load_yaml_config, parse_config, save_config

REPO = Path(__file__).resolve().parents[1]


def test_yaml_then_cli_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "epochs: 5\nlr_backbone: 3e-4\nspecies: [lion, dog]\ndynamic_margins: false\nimage_size: 96\n",
        encoding="utf-8",
    )
    cfg = parse_config([str(cfg_file), "--epochs", "3", "--hflip", "--mixed_precision", "bf16"])
    assert cfg.train.epochs == 3  # the command line wins
    assert cfg.train.lr_backbone == pytest.approx(3e-4)  # YAML's "3e-4" string becomes a float
    assert isinstance(cfg.train.lr_backbone, float)
    assert cfg.data.species == ["lion", "dog"]
    assert cfg.model.dynamic_margins is False
    assert cfg.model.image_size == 96
    assert cfg.train.hflip is True
    assert cfg.train.mixed_precision == "bf16"
    # --config PATH is the same as a leading YAML path; list flags replace the YAML list
    cfg2 = parse_config(["--config", str(cfg_file), "--species", "pig"])
    assert cfg2.data.species == ["pig"] and cfg2.train.epochs == 5


def test_nested_sections_are_flattened(tmp_path):
    cfg_file = tmp_path / "nested.yaml"
    cfg_file.write_text("model:\n  backbone: resnet10t\ntrain:\n  epochs: 2\n", encoding="utf-8")
    cfg = parse_config([str(cfg_file)])
    assert cfg.model.backbone == "resnet10t" and cfg.train.epochs == 2


def test_unknown_option_is_named(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("epochz: 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="epochz"):
        parse_config([str(cfg_file)])
    with pytest.raises(ValueError, match="unrecognised arguments"):
        parse_config(["--epochz", "3"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mixed_precision", "fp8"], "mixed_precision must be one of"),
        (["--identities_per_batch", "1"], "identities_per_batch must be >= 2"),
        (["--epochs", "2", "--freeze_backbone_epochs", "2"], "freeze_backbone_epochs"),
        (["--margin_min", "0.6", "--margin_max", "0.5"], "margin_min <= margin_max"),
        (["--metric_for_best", "acc"], "metric_for_best"),
        (["--init_weights", "imagenet21k"], "init_weights must be one of"),
        (["--eval_protocol", "pairs"], "eval_protocol"),
        (["--cpu_threads", "0"], "cpu_threads"),
        (["--normalization", "lite"], "normalization must be one of"),
        (
            ["--normalization", "weights", "--init_weights", "none"],
            "known only for the packaged ImageNet weights",
        ),
        (
            ["--normalization", "weights", "--backbone", "resnet10t"],
            "known only for the packaged ImageNet weights",
        ),
    ],
)
def test_invalid_values_are_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_config(argv)


def test_resolved_config_round_trips(tmp_path):
    cfg = parse_config(["--epochs", "7", "--species", "lion", "nyala", "--output_dir", "runs/x"])
    save_config(cfg, tmp_path / "config.yaml")
    again = parse_config([str(tmp_path / "config.yaml")])
    assert again.to_flat_dict() == cfg.to_flat_dict()


def test_defaults_have_no_absolute_paths():
    flat = parse_config([]).to_flat_dict()
    for key, value in flat.items():
        if isinstance(value, str):
            assert not Path(value).is_absolute(), f"default {key}={value!r} is an absolute path"


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (REPO / "configs").glob("train_*.yaml")) + ["finetune_new_species.yaml"]
)
def test_shipped_configs_parse(name):
    path = REPO / "configs" / name
    raw = load_yaml_config(path)
    cfg = parse_config([str(path)])
    flat = cfg.to_flat_dict()
    for key, value in raw.items():
        assert flat[key] == value, f"{name}: {key} parsed as {flat[key]!r}, the file says {value!r}"
    for key, value in cfg.to_flat_dict().items():
        if isinstance(value, str):
            assert not Path(value).is_absolute(), f"{name}: {key}={value!r} is an absolute path"


def test_weights_normalization_reaches_the_model_and_processor():
    """``normalization: weights`` trains (and exports) with the mean/std the packaged Lite weights expect."""
    from animal_reid.training.model import build_model
    from animal_reid.weights import LITE_MEAN, LITE_STD
    from modeling.configuration_animal_reid import IMAGENET_MEAN

    cfg = parse_config(["--normalization", "weights", "--image_size", "32"])
    model, processor = build_model(cfg, num_classes=3)
    assert processor.image_mean == list(LITE_MEAN) and processor.image_std == list(LITE_STD)
    assert model.config.image_mean == list(LITE_MEAN)
    _, default = build_model(parse_config(["--image_size", "32"]), num_classes=3)
    assert default.image_mean == pytest.approx(IMAGENET_MEAN)
