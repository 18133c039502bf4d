"""Typed configs: dataclasses validated on load, dotted overrides, resolved-config dumps.

A config file is YAML whose structure mirrors the dataclasses of
:mod:`fastgdr.config.schema`. Every key is checked on load: an unknown key, a value of the
wrong type or a value outside its choices raises :class:`~fastgdr.errors.ConfigError`
naming the file, the dotted key and what is valid.

This package re-exports the public names of its modules: the dataclasses
(:mod:`~fastgdr.config.schema`), the training recipes (:mod:`~fastgdr.config.recipes`) and
loading, overrides and dumping (:mod:`~fastgdr.config.loading`).

Example:
    >>> cfg = load_config("configs/p.yaml", overrides=["model.num_classes=21"])
    >>> cfg.model.backbone.name
    'P'
"""

from fastgdr.config.loading import apply_override, from_dict, load_config, save_config, to_dict
from fastgdr.config.recipes import RECIPES, with_recipe
from fastgdr.config.schema import (
    GEO_HEAD_LAYERS,
    PNP_CONV_LAYERS,
    AugmentConfig,
    BackboneConfig,
    Config,
    DataConfig,
    FeatureKDConfig,
    GeoHeadConfig,
    InputConfig,
    KDConfig,
    LossWeights,
    ModelConfig,
    NaiveKDConfig,
    OTKDConfig,
    PatchPnPConfig,
    TrainConfig,
    UncertaintyKDConfig,
)

__all__ = [
    "GEO_HEAD_LAYERS",
    "PNP_CONV_LAYERS",
    "RECIPES",
    "AugmentConfig",
    "BackboneConfig",
    "Config",
    "DataConfig",
    "FeatureKDConfig",
    "GeoHeadConfig",
    "InputConfig",
    "KDConfig",
    "LossWeights",
    "ModelConfig",
    "NaiveKDConfig",
    "OTKDConfig",
    "PatchPnPConfig",
    "TrainConfig",
    "UncertaintyKDConfig",
    "apply_override",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
    "with_recipe",
]
