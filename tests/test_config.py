from pathlib import Path

import pytest

from fastgdr.config import Config, load_config, save_config, to_dict
from fastgdr.errors import ConfigError

from conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.model.backbone.name


def test_shipped_configs_cover_the_paper_presets():
    assert {"bm", "s", "t", "n", "p"} <= {p.stem for p in CONFIGS}


def test_defaults_are_gdrnpp():
    cfg = load_config(None)
    assert cfg.model.geo_head.widths == (256,) * 7
    assert cfg.model.geo_head.gn_groups == (32,) * 7
    assert cfg.model.pnp.widths == (128,) * 3
    assert cfg.model.pnp.fc_widths == (1024, 256)
    assert cfg.model.num_regions == 64
    assert cfg.model.input.channel_order == "BGR"
    assert cfg.model.input.std == (1.0, 1.0, 1.0)


def test_unknown_key_names_file_key_and_choices(tmp_path):
    path = write(tmp_path, "model:\n  backbone:\n    nmae: P\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    assert "model.backbone.nmae" in message
    assert "Did you mean 'model.backbone.name'" in message
    assert "pretrained" in message  # lists the valid keys


def test_wrong_type_is_reported(tmp_path):
    path = write(tmp_path, "model:\n  num_classes: three\n")
    with pytest.raises(ConfigError, match=r"'model.num_classes' must be an integer"):
        load_config(path)


def test_bool_is_not_an_integer(tmp_path):
    path = write(tmp_path, "model:\n  num_regions: true\n")
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(path)


def test_bad_choice_lists_valid_ones(tmp_path):
    path = write(tmp_path, "model:\n  input:\n    channel_order: BRG\n")
    with pytest.raises(ConfigError, match=r"must be one of 'BGR', 'RGB', got 'BRG'"):
        load_config(path)


def test_invalid_value_from_validator(tmp_path):
    path = write(tmp_path, "model:\n  geo_head:\n    widths: [256, 256, 256, 256, 256, 256, 250]\n")
    with pytest.raises(ConfigError, match=r"model.geo_head.*layer 6: width 250"):
        load_config(path)


def test_wrong_list_length(tmp_path):
    path = write(tmp_path, "model:\n  pnp:\n    fc_widths: [1024]\n")
    with pytest.raises(ConfigError, match=r"'model.pnp.fc_widths' must have 2 entries"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"))


def test_dotted_overrides():
    cfg = load_config(
        REPO / "configs/p.yaml",
        ["model.backbone.name=N", "model.num_classes=21", "model.backbone.pretrained=null",
         "model.pnp.widths=[64,64,64]", "model.pnp.gn_groups=[16,16,16]"],
    )
    assert cfg.model.backbone.name == "N"
    assert cfg.model.num_classes == 21
    assert cfg.model.backbone.pretrained is None
    assert cfg.model.pnp.widths == (64, 64, 64)


def test_override_errors():
    with pytest.raises(ConfigError, match="unknown key 'model.num_clases'"):
        load_config(None, ["model.num_clases=3"])
    with pytest.raises(ConfigError, match="must look like"):
        load_config(None, ["model.num_classes"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["model.num_classes=3", "model.num_classes.x=1"])


def test_resolved_config_round_trip(tmp_path):
    cfg = load_config(REPO / "configs/n.yaml", ["model.num_classes=8"])
    saved = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(saved) == cfg
    assert to_dict(cfg)["model"]["geo_head"]["widths"] == [256] * 7


def test_exponent_without_a_dot_is_a_number():
    # YAML 1.1 reads 1e-3 as a string; numeric fields take it as the number it means
    cfg = load_config(None, ["train.lr=1e-3", "kd.feature.adapter_lr=5E-6"])
    assert cfg.train.lr == 1e-3 and cfg.kd.feature.adapter_lr == 5e-6
    with pytest.raises(ConfigError, match="'train.lr' must be a number"):
        load_config(None, ["train.lr=fast"])


def test_short_recipe_fills_the_keys_a_config_leaves_unset(tmp_path):
    gdrnpp = load_config(REPO / "configs/p.yaml")
    short = load_config(REPO / "configs/p.yaml", ["train.recipe=short"])
    assert (gdrnpp.train.optimizer, gdrnpp.train.head_init, gdrnpp.data.canonical_symmetry) == ("ranger", "gdrnpp", False)
    assert (short.train.optimizer, short.train.head_init, short.data.canonical_symmetry) == ("adamw", "torch", True)
    assert short.model.input.std != (1.0, 1.0, 1.0)
    assert (gdrnpp.data.augment.dzi_scale_ratio, short.data.augment.dzi_scale_ratio) == (0.25, 0.1)
    assert (gdrnpp.data.augment.dzi_shift_ratio, short.data.augment.dzi_shift_ratio) == (0.25, 0.1)
    # the config's own values win over the recipe's, wherever they come from
    path = write(tmp_path, "train:\n  recipe: short\n  optimizer: ranger\n")
    cfg = load_config(path, ["train.lr=3e-4"])
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.head_init) == ("ranger", 3e-4, "torch")


def test_backbone_pretraining_recipe_is_short_without_pose_terms():
    short = load_config(REPO / "configs/p.yaml", ["train.recipe=short"])
    pretraining = load_config(REPO / "configs/p.yaml", ["train.recipe=backbone_pretraining"])
    weights = pretraining.train.loss_weights
    assert (weights.pm, weights.rot, weights.centroid, weights.z, pretraining.train.pnp_teacher_forcing) == (0, 0, 0, 0, 0)
    assert min(weights.xyz, weights.mask_visible, weights.mask_amodal, weights.region) > 0
    assert (pretraining.train.optimizer, pretraining.train.lr, pretraining.model.input) == (
        short.train.optimizer, short.train.lr, short.model.input)


def test_recipe_round_trips_through_the_resolved_config(tmp_path):
    cfg = load_config(REPO / "configs/p.yaml", ["train.recipe=short", "train.batch_size=8"])
    saved = save_config(cfg, tmp_path / "resolved.yaml")
    assert to_dict(load_config(saved)) == to_dict(cfg)


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'train.recipe' must be one of 'gdrnpp', 'short', 'backbone_pretraining'"):
        load_config(None, ["train.recipe=fast"])


@pytest.mark.parametrize("override", [
    "train.clip_grad_norm=0", "train.time_budget_minutes=-2", "train.snapshots=[0.5,1.5]", "train.loss_weights.rot=-1",
])
def test_invalid_schedule_settings_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[-1]):
        load_config(None, [override])


@pytest.mark.parametrize("rule, expected", [("none", 1e-3), ("linear", 0.5e-3), ("sqrt", 1e-3 * 0.5 ** 0.5)])
def test_learning_rate_scaling_rules(rule, expected):
    cfg = load_config(None, ["train.lr=1e-3", "train.lr_reference_batch=32", "train.batch_size=16", f"train.lr_scaling={rule}"])
    assert cfg.train.scaled_lr == pytest.approx(expected)


@pytest.mark.parametrize("override", ["train.lr=.inf", "train.lr=.nan", "train.lr=nan", "train.weight_decay=.nan",
                                      "kd.feature.adapter_lr=.inf", "kd.ot.weight=.nan", "data.visib_threshold=.nan"])
def test_non_finite_numbers_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["train.lr=-1", "train.lr=0", "train.weight_decay=-0.1"])
def test_invalid_optimiser_settings_are_refused(override):
    with pytest.raises(ConfigError, match="invalid 'train'"):
        load_config(None, [override])


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.001\n  batch_size: 4\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: key 'lr' appears twice in one section \(lines 2 and 4\)"):
        load_config(path)
    assert load_config(write(tmp_path, "train:\n  lr: 0.001\nmodel:\n  input_res: 128\n")).train.lr == 0.001
