"""One backbone factory over timm (and the optional ``fastervit`` package).

Presets carry the names the FAST GDRNPP paper uses; any other timm model name works too.
The head reads the backbone's output channels and stride from timm's ``feature_info``
(:class:`BackboneInfo`), never from a number typed into a config. Weights come from a
local file only; nothing is downloaded: a timm (or FasterViT) checkpoint, or the
checkpoint of a fastgdr run, whose backbone is taken (a backbone pretraining, for one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastgdr._compat import import_optional, import_timm
from fastgdr.checkpoint import load_weights
from fastgdr.errors import CheckpointError, UnknownNameError
from fastgdr.registry import Registry

BACKBONE_PREFIX = "backbone."  # GDRNPoseNet's attribute: the key prefix in its checkpoints


@dataclass(frozen=True)
class BackbonePreset:
    """A named backbone: the timm model and the feature level GDRNPP uses (stride 32).

    Attributes:
        model_name: timm (or fastervit) model name.
        out_index: timm ``out_indices`` entry of the stride-32 level.
        source: ``"timm"`` or ``"fastervit"`` (the optional FasterViT package).
        description: one line for listings.
    """

    model_name: str
    out_index: int
    source: str = "timm"
    description: str = ""


BACKBONE_PRESETS: Registry[BackbonePreset] = Registry("backbone preset")
for _name, _preset in {
    "BM": BackbonePreset("convnext_base", 3, description="ConvNeXt-B, the GDRNPP baseline"),
    "S": BackbonePreset("convnext_small", 3, description="ConvNeXt-S"),
    "T": BackbonePreset("convnextv2_tiny", 3, description="ConvNeXt-V2 Tiny"),
    "N": BackbonePreset("convnextv2_nano", 3, description="ConvNeXt-V2 Nano"),
    "P": BackbonePreset("convnextv2_pico", 3, description="ConvNeXt-V2 Pico"),
    "A": BackbonePreset("convnextv2_atto", 3, description="ConvNeXt-V2 Atto"),
    "EB0": BackbonePreset("tf_efficientnetv2_b0", 4, description="EfficientNetV2-B0"),
    "ES": BackbonePreset("tf_efficientnetv2_s", 4, description="EfficientNetV2-S"),
    "R34": BackbonePreset("resnet34", 4, description="ResNet-34 (GDR-Net's backbone)"),
    **{
        f"FViT{i}": BackbonePreset(
            f"faster_vit_{i}_any_res", -1, "fastervit", f"FasterViT-{i} (fastervit package)"
        )
        for i in range(4)
    },
}.items():
    BACKBONE_PRESETS.register(_name, _preset)


@dataclass(frozen=True)
class BackboneInfo:
    """What the head needs to know about the backbone's output feature map."""

    model_name: str
    channels: int
    stride: int


class ForwardFeaturesBackbone(nn.Module):
    """Feature extractor over a model that exposes ``forward_features`` (FasterViT).

    Takes the model's submodules as its own (so state-dict keys stay the model's, minus
    the classifier) and returns ``[features]`` like a timm ``features_only`` model.
    """

    def __init__(self, model: nn.Module, drop: tuple[str, ...] = ("avgpool", "head")) -> None:
        super().__init__()
        for name, child in model.named_children():
            if name not in drop:
                self.add_module(name, child)
        self._forward_features = type(model).forward_features

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self._forward_features(self, x)]


def resolve_backbone(name: str) -> BackbonePreset:
    """The preset called ``name``, or an ad-hoc preset for a plain timm model name.

    Raises:
        UnknownNameError: neither a preset nor a timm model; the message lists presets.
    """
    if name in BACKBONE_PRESETS:
        return BACKBONE_PRESETS.get(name)
    timm = import_timm()
    if timm.is_model(name):
        return BackbonePreset(name, -1)
    raise UnknownNameError(
        f"unknown backbone {name!r}: not a preset and not a timm model name. "
        f"Presets: {', '.join(BACKBONE_PRESETS.names())}; "
        "other timm names are listed by timm.list_models()."
    )


def build_backbone(
    name: str,
    pretrained: str | Path | None = None,
    out_index: int | None = None,
    input_res: int = 256,
) -> tuple[nn.Module, BackboneInfo]:
    """Build a feature extractor returning ``[features]`` of shape [B, C, H/s, W/s].

    Args:
        name: a preset name (``BACKBONE_PRESETS``) or any timm model name.
        pretrained: local file with the backbone's weights: a timm checkpoint or state
            dict of the full classification model, or a fastgdr checkpoint (any run's
            ``model_final.pth``) whose ``backbone.*`` weights are loaded strictly; None
            for random initialisation.
        out_index: feature level; None uses the preset's stride-32 level.
        input_res: crop size in px (FasterViT's any-res models need it at build time).

    Returns:
        (module, info) where ``info.channels`` and ``info.stride`` come from the model.
    """
    preset = resolve_backbone(name)
    index = preset.out_index if out_index is None else out_index
    weights = _check_weights_path(pretrained)
    run_backbone = fastgdr_backbone_state(weights) if weights is not None else None
    if run_backbone is not None:
        module, info = build_backbone(name, None, out_index, input_res)
        load_weights(module, run_backbone, strict=True, source=f"the backbone of {weights} (a run with another backbone?)")
        return module, info
    if preset.source == "fastervit":
        return _build_fastervit(preset, weights, input_res)
    timm = import_timm()
    kwargs: dict[str, Any] = dict(features_only=True, out_indices=(index,), pretrained=False)
    if weights is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    try:
        module = timm.create_model(preset.model_name, **kwargs)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"cannot load backbone weights {weights} into {preset.model_name}: {exc}"
        ) from None
    except IndexError:
        levels = len(timm.create_model(preset.model_name, features_only=True).feature_info)
        raise UnknownNameError(
            f"out_index {index} is not a feature level of {preset.model_name} "
            f"(it has {levels}: 0..{levels - 1})"
        ) from None
    info = BackboneInfo(
        preset.model_name,
        channels=int(module.feature_info.channels()[-1]),
        stride=int(module.feature_info.reduction()[-1]),
    )
    return module, info


def _check_weights_path(pretrained: str | Path | None) -> Path | None:
    if pretrained is None:
        return None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"backbone weights file not found: {path} (weights are read from local files "
            "only; nothing is downloaded)"
        )
    return path


def fastgdr_backbone_state(path: Path) -> dict[str, torch.Tensor] | None:
    """The ``backbone.*`` weights of a fastgdr checkpoint, keyed as the backbone module's
    own, or None when ``path`` is another kind of weights file (left to timm to read).

    Raises:
        CheckpointError: a fastgdr checkpoint that holds no backbone weights.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint, or not one of ours: timm reads (and reports) it
        return None
    if not (isinstance(data, dict) and "fastgdr_version" in data and isinstance(data.get("model"), dict)):
        return None
    state = {key[len(BACKBONE_PREFIX):]: value for key, value in data["model"].items() if key.startswith(BACKBONE_PREFIX)}
    if not state:
        raise CheckpointError(f"{path} is a fastgdr checkpoint without backbone weights ('{BACKBONE_PREFIX}*' keys)")
    return state


def _build_fastervit(
    preset: BackbonePreset, weights: Path | None, input_res: int
) -> tuple[nn.Module, BackboneInfo]:
    import_timm()  # fastervit imports timm at import time: repair torchvision first
    fastervit = import_optional("fastervit", extra="fastervit", purpose="FasterViT backbones")
    model = fastervit.create_model(
        preset.model_name, resolution=[input_res, input_res], pretrained=False
    )
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
        model.load_state_dict(state)
    module = ForwardFeaturesBackbone(model)
    channels = int(model.head.in_features)
    stride = 2 ** (len(model.levels) + 1)  # 4× patch embedding, then 2× per later level
    return module, BackboneInfo(preset.model_name, channels=channels, stride=stride)
