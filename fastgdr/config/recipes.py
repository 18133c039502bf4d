"""Training recipes: the defaults a config's ``train.recipe`` puts beneath its own values."""

from __future__ import annotations

from typing import Any

# The values a training recipe gives every key that a config leaves unset (its defaults).
# ``gdrnpp`` is the dataclass defaults themselves. Each deviation of ``short`` and its
# measured reason are in docs/training.md.
RECIPES: dict[str, dict[str, Any]] = {
    "gdrnpp": {},
    "short": {
        "model": {"input": {"mean": [0.406, 0.456, 0.485], "std": [0.225, 0.224, 0.229]}},
        "data": {
            "canonical_symmetry": True,
            "augment": {"color_prob": 0.0, "background_prob": 0.0, "dzi_scale_ratio": 0.1, "dzi_shift_ratio": 0.1},
        },
        "train": {
            "optimizer": "adamw",
            "lr": 1e-3,
            "lr_scaling": "sqrt",
            "lr_reference_batch": 32,
            "weight_decay": 0.05,
            "warmup_iters": 50,
            "warmup_factor": 0.01,
            "anneal_point": 0.0,
            "head_init": "torch",
            "clip_grad_norm": 1.0,
            "init_depth_from_data": True,
            "pnp_teacher_forcing": 1.0,
            "loss_weights": {"rot": 1.0},
        },
    },
}


def with_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the defaults of its ``train.recipe`` filled in beneath it (the
    config's own values win). An unknown recipe is left for validation to report."""
    train = data.get("train")
    recipe = train.get("recipe") if isinstance(train, dict) else None
    if not isinstance(recipe, str) or recipe not in RECIPES:
        return data
    return _merged(RECIPES[recipe], data)


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# ``backbone_pretraining``: the short recipe on a proxy task, the dense outputs alone
# (coordinates, masks, regions; every pose term off), so that the backbone of one such run
# can start many later runs (``model.backbone.pretrained=<its model_final.pth>``);
# measured in docs/training.md.
RECIPES["backbone_pretraining"] = _merged(
    RECIPES["short"],
    {"train": {"pnp_teacher_forcing": 0.0, "loss_weights": {"pm": 0.0, "rot": 0.0, "centroid": 0.0, "z": 0.0}}},
)
