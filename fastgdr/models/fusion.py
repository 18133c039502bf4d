"""Inference fusion of ConvNeXt blocks: the same function in fewer passes over memory.

A timm ConvNeXt(-V2) block (the reference) runs depthwise 7×7 conv → LayerNorm → fc1 →
GELU → [GRN] → fc2 → [layer scale] → residual add as separate operations. ConvNeXt-V2's
timm models run the MLP as NCHW 1×1 convolutions behind a LayerNorm2d that permutes
around ``F.layer_norm``, and GRN takes the spatial norm with ``linalg.vector_norm``
(8–10× slower on the CPU than a sum of squares) followed by two more elementwise
passes. :class:`FusedConvNeXtBlock` computes the same function channels-last (NHWC),
where the MLP is two plain matrix products, and folds every affine step into them:

- LayerNorm's scale g and shift b into fc1: ``W1·(g⊙z + b) + c = (W1·diag g)·z + (W1·b + c)``;
- GRN's ``x + γ⊙(x⊙N(x)) + β = x⊙(1 + γ⊙N(x)) + β``: β into fc2's bias; the per-sample,
  per-channel scale ``1 + γ⊙N(x)`` into fc2's weight when that is the smaller tensor
  (large maps), else onto the activation (small maps);
- ConvNeXt-V1's layer scale into fc2's rows and bias.

Activations stay channels-last between fused blocks, so every permute is a free view.
The result equals the reference up to float rounding (``tests/test_fusion.py`` compares
them on every block variant the presets use). Fused blocks hold their folded tensors as
non-persistent buffers and are for inference only: fuse a network after loading its
checkpoint, never save or train a fused one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgdr._compat import import_timm


class FusedConvNeXtBlock(nn.Module):
    """Inference-only equivalent of one timm ``ConvNeXtBlock`` (stride 1, identity shortcut).

    Args:
        dw_weight: [C, 1, k, k] depthwise kernel; ``dw_bias`` [C] or None.
        padding: the depthwise convolution's (top/bottom, left/right) zero padding.
        norm_eps: LayerNorm epsilon (its affine parameters are folded into fc1).
        fc1_weight, fc1_bias: [H, C], [H] with LayerNorm's affine folded in.
        fc2_weight, fc2_bias: [C, H], [C] with GRN's shift and the layer scale folded in.
        grn_gamma: [H] GRN scale γ, or None for a block without GRN (ConvNeXt-V1).
        grn_eps: GRN epsilon.
        gelu_approximate: ``nn.GELU``'s ``approximate`` ("none" or "tanh").
        layer_scale: the block had a layer scale (folded into fc2); under autocast its
            fp32 scale made timm's residual sum fp32, which the fused block keeps.

    Input and output: [B, C, H, W] (returned channels-last; any layout accepted).
    """

    def __init__(
        self,
        dw_weight: torch.Tensor,
        dw_bias: torch.Tensor | None,
        padding: tuple[int, int],
        norm_eps: float,
        fc1_weight: torch.Tensor,
        fc1_bias: torch.Tensor,
        fc2_weight: torch.Tensor,
        fc2_bias: torch.Tensor,
        grn_gamma: torch.Tensor | None,
        grn_eps: float = 1e-6,
        gelu_approximate: str = "none",
        layer_scale: bool = False,
    ) -> None:
        super().__init__()
        self.channels = int(dw_weight.shape[0])
        self.padding = tuple(int(p) for p in padding)
        self.norm_eps = float(norm_eps)
        self.grn_eps = float(grn_eps)
        self.gelu_approximate = gelu_approximate
        self.layer_scale = layer_scale
        for name, value in {
            "dw_weight": dw_weight, "dw_bias": dw_bias, "fc1_weight": fc1_weight, "fc1_bias": fc1_bias,
            "fc2_weight": fc2_weight, "fc2_bias": fc2_bias, "grn_gamma": grn_gamma,
        }.items():
            self.register_buffer(name, None if value is None else value.detach().clone().contiguous(), persistent=False)

    @classmethod
    def from_block(cls, block: nn.Module) -> "FusedConvNeXtBlock":
        """Fold a timm ``ConvNeXtBlock`` (checked by :func:`why_not_fusable`) into a fused block."""
        reason = why_not_fusable(block)
        if reason is not None:
            raise ValueError(f"cannot fuse this ConvNeXt block: {reason}")
        with torch.no_grad():
            norm, mlp = block.norm, block.mlp
            dtype = mlp.fc1.weight.dtype
            exact = lambda t: t.to(torch.float64)  # fold in float64, store in the block's dtype
            channels = block.conv_dw.out_channels
            like = exact(block.conv_dw.weight)
            scale = exact(norm.weight) if norm.weight is not None else like.new_ones(channels)
            shift = exact(norm.bias) if norm.bias is not None else like.new_zeros(channels)
            w1, b1 = (exact(t) for t in _linear_parameters(mlp.fc1))
            w2, b2 = (exact(t) for t in _linear_parameters(mlp.fc2))
            fc1_weight, fc1_bias = w1 * scale[None, :], b1 + w1 @ shift
            grn = getattr(mlp, "grn", None)
            if grn is not None:
                b2 = b2 + w2 @ exact(grn.bias)
            if block.gamma is not None:  # layer scale
                gamma = exact(block.gamma)
                w2, b2 = w2 * gamma[:, None], b2 * gamma
            return cls(
                block.conv_dw.weight, block.conv_dw.bias, block.conv_dw.padding, norm.eps,
                fc1_weight.to(dtype), fc1_bias.to(dtype), w2.to(dtype), b2.to(dtype),
                None if grn is None else grn.weight, 1e-6 if grn is None else grn.eps,
                _gelu_approximation(mlp.act), block.gamma is not None,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, self.dw_weight, self.dw_bias, 1, self.padding, 1, self.channels)
        y = F.layer_norm(y.permute(0, 2, 3, 1), (self.channels,), None, None, self.norm_eps)
        hidden = F.gelu(F.linear(y, self.fc1_weight, self.fc1_bias), approximate=self.gelu_approximate)
        out = F.linear(hidden, self.fc2_weight, self.fc2_bias) if self.grn_gamma is None else self._grn_fc2(hidden)
        # timm's residual sum promotes (under autocast: a low-precision MLP output + an fp32
        # input, or × an fp32 layer scale, gives fp32); keep that precision
        dtype = torch.promote_types(out.dtype, x.dtype)
        if self.layer_scale:
            dtype = torch.promote_types(dtype, self.fc2_bias.dtype)
        out = out.to(dtype)
        out += x.permute(0, 2, 3, 1)
        return out.permute(0, 3, 1, 2)

    def _grn_fc2(self, hidden: torch.Tensor) -> torch.Tensor:
        """fc2(GRN(hidden)) for [B, H, W, D] NHWC ``hidden`` with GRN's scale folded in."""
        batch, height, width, dim = hidden.shape
        accumulate = torch.promote_types(hidden.dtype, torch.float32)  # fp16 squares overflow past 256
        norm = hidden.to(accumulate).square().sum(dim=(1, 2)).sqrt()  # [B, D]
        relative = norm / (norm.mean(dim=-1, keepdim=True) + self.grn_eps)
        scale = torch.addcmul(torch.ones_like(relative), self.grn_gamma.to(accumulate), relative)  # 1 + γ·N(x)
        out_channels = self.fc2_weight.shape[0]
        if out_channels > height * width:  # the activation is the smaller tensor: scale it
            hidden = hidden * scale.to(hidden.dtype)[:, None, None, :]
            return F.linear(hidden, self.fc2_weight, self.fc2_bias)
        weight = self.fc2_weight * scale.to(self.fc2_weight.dtype)[:, None, :]  # [B, C, D]
        if batch == 1:
            return F.linear(hidden, weight[0], self.fc2_bias)
        flat = hidden.reshape(batch, height * width, dim)
        out = torch.baddbmm(self.fc2_bias, flat, weight.transpose(1, 2))
        return out.view(batch, height, width, out_channels)

    def extra_repr(self) -> str:
        grn = "GRN" if self.grn_gamma is not None else "no GRN"
        return f"{self.channels}, hidden={self.fc1_weight.shape[0]}, {grn}"


def _linear_parameters(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [out, in], bias [out]) of an ``nn.Linear`` or a 1×1 ``nn.Conv2d``."""
    weight = layer.weight.reshape(layer.weight.shape[0], -1)
    bias = layer.bias if layer.bias is not None else weight.new_zeros(weight.shape[0])
    return weight, bias


def _gelu_approximation(act: nn.Module | None) -> str | None:
    """``F.gelu``'s ``approximate`` for torch's or timm's GELU modules; None for other activations."""
    if isinstance(act, nn.GELU):
        return act.approximate
    layers = import_timm().layers
    return {layers.GELU: "none", layers.GELUTanh: "tanh"}.get(type(act))


def why_not_fusable(block: nn.Module) -> str | None:
    """None if ``block`` is a timm ``ConvNeXtBlock`` :class:`FusedConvNeXtBlock` can replace,
    else the reason (the block is then left as it is)."""
    timm = import_timm()
    if type(block) is not timm.models.convnext.ConvNeXtBlock:  # subclasses may change forward
        return f"{type(block).__name__} is not a timm ConvNeXtBlock"
    dw = block.conv_dw
    if type(dw) is not nn.Conv2d or dw.padding_mode != "zeros" or isinstance(dw.padding, str):
        return "the depthwise convolution is not a plain zero-padded nn.Conv2d"
    if dw.groups != dw.in_channels or dw.in_channels != dw.out_channels:
        return "the spatial convolution is not depthwise"
    if dw.stride != (1, 1) or dw.dilation != (1, 1):
        return "strided or dilated blocks are not fused"
    if not isinstance(block.shortcut, nn.Identity):
        return "the shortcut is not the identity"
    layers = timm.layers
    plain_norms = (nn.LayerNorm, layers.LayerNorm, layers.LayerNorm2d)  # not LayerNormAct, not the fp32-forced ones
    if type(block.norm) not in plain_norms:
        return f"the norm is {type(block.norm).__name__}, not a plain LayerNorm"
    if tuple(block.norm.normalized_shape) != (dw.out_channels,):
        return "the LayerNorm does not normalize over the channels alone"
    mlp = block.mlp
    if type(mlp) not in (layers.Mlp, layers.GlobalResponseNormMlp):
        return f"the MLP is {type(mlp).__name__}, not timm's Mlp or GlobalResponseNormMlp"
    if _gelu_approximation(getattr(mlp, "act", None)) is None:
        return "the MLP's activation is not GELU"
    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        return "the MLP has a norm layer"
    for name in ("fc1", "fc2"):
        layer = getattr(mlp, name)
        if not (type(layer) is nn.Linear or (type(layer) is nn.Conv2d and layer.kernel_size == (1, 1)
                                             and layer.groups == 1 and layer.stride == (1, 1)
                                             and layer.padding == (0, 0))):
            return f"mlp.{name} is neither nn.Linear nor a 1×1 nn.Conv2d"
    return None


def fuse_for_inference(module: nn.Module) -> int:
    """Replace, in place, every fusable timm ConvNeXt block inside ``module`` by its
    :class:`FusedConvNeXtBlock`; other modules stay as they are.

    Args:
        module: a network in eval mode (a :class:`~fastgdr.models.GDRNPoseNet`, a
            backbone, …) whose weights are final: fusion copies them.

    Returns:
        The number of blocks fused (0 for backbones without ConvNeXt blocks).

    Raises:
        ValueError: ``module`` is in training mode (fused blocks do not train).
    """
    if any(m.training for m in module.modules()):
        raise ValueError("fuse_for_inference needs a network in eval mode, every submodule included (fused blocks "
                         "are inference-only); call .eval() first")
    return _fuse_children(module)


def _fuse_children(module: nn.Module) -> int:
    fused = 0
    for name, child in module.named_children():
        if why_not_fusable(child) is None:
            setattr(module, name, FusedConvNeXtBlock.from_block(child))
            fused += 1
        else:
            fused += _fuse_children(child)
    return fused
