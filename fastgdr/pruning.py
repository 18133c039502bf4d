"""Structured L1-norm filter pruning of the geometric head and Patch-PnP (FAST GDRNPP §3.3).

What D means: D GroupNorm groups are removed from every layer, counted from the
*unpruned* widths the network descends from (its "base"). For GDRNPP's head (256
channels in 32 groups of 8) geo_d = D leaves 256 − 8·D channels in 32 − D groups; for
Patch-PnP (128 channels in 32 groups of 4) pnp_d = D leaves 128 − 4·D in 32 − D groups.
D must leave at least one group (0–31 for GDRNPP's widths). The base is the one
recorded in a pruned checkpoint's ``"pruning"`` entry; a checkpoint without one (a
trained ``model_final.pth``, also one fine-tuned from a pruned checkpoint) is its own
base. Pruning only removes channels: asking a pruned checkpoint for a smaller D is
an error.

Granularity (both keep the LARGEST-importance units, in their ORIGINAL order):

- ``"group"`` (default): whole GroupNorm groups are ranked by the summed importance of
  their filters and the weakest are removed. Every kept group normalizes exactly as
  before: the same channels with the same weights, GroupNorm weight and bias.
- ``"filter"``: single filters are ranked and the largest ``(groups − D) · group size``
  are kept; ``num_groups`` becomes ``groups − D`` so the group size stays the same. The
  kept channels are regrouped, so GroupNorm statistics are NOT preserved (as in FAST
  GDRNPP's code); fine-tuning has to recover them.

Every kept channel is followed into the next layer's input channels, its GroupNorm
weight and bias, the out layer's input channels and Patch-PnP's flattened ``fc1`` input
(channel c of the last conv owns ``fc1`` columns c·S … c·S + S − 1 for an S-pixel map).
With ``prune_fc`` the hidden sizes of ``fc1`` and ``fc2`` also lose D · (Patch-PnP group
size) rows each (FAST GDRNPP: 1024 → 1024 − 4D, 256 → 256 − 4D), ranked row by row.
All importances are computed once on the unpruned network (one-shot pruning, as Li et
al. 2017). A pruned network is rebuilt from its pruned config and a sliced
``state_dict``; it is never pickled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn

from fastgdr.bench import LatencyStats, measure_latency
from fastgdr.checkpoint import read_checkpoint, save_checkpoint
from fastgdr.config import Config, GeoHeadConfig, ModelConfig, PatchPnPConfig, from_dict, to_dict
from fastgdr.errors import ConfigError, FastGDRError
from fastgdr.models import GDRNPoseNet
from fastgdr.profiling import example_inputs, model_costs
from fastgdr.registry import Registry

Granularity = Literal["group", "filter"]
Importance = Callable[[nn.Module], torch.Tensor]
MODULES = ("geo_head_net", "pnp_net", "total")


class PruningError(FastGDRError):
    """A pruning request that cannot be met (D out of range, checkpoint already smaller)."""


# --------------------------------------------------------------------------- importance


def l1_filter_norms(module: nn.Module) -> torch.Tensor:
    """L1 norm of every output filter (or output row) of a conv, deconv or linear layer.

    Conv2d weight [out, in, k, k] sums over dims (1, 2, 3); ConvTranspose2d weight
    [in, out, k, k] over dims (0, 2, 3); Linear weight [out, in] over dim 1.

    Returns:
        [out] float64 norms.
    """
    weight = module.weight.detach().double().abs()
    if isinstance(module, nn.ConvTranspose2d):
        return weight.sum(dim=(0, 2, 3))
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return weight.flatten(1).sum(dim=1)
    raise TypeError(f"no L1 filter norm for {type(module).__name__}")


PRUNING_IMPORTANCE: Registry[Importance] = Registry("pruning importance")
PRUNING_IMPORTANCE.register("l1", l1_filter_norms)


# --------------------------------------------------------------------------- selection


def _largest_in_order(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` largest scores, ascending (ties: the earlier index wins)."""
    order = torch.sort(scores, descending=True, stable=True).indices[:keep]
    return order.sort().values


def keep_groups(scores: torch.Tensor, groups: int, keep: int) -> torch.Tensor:
    """Channels of the ``keep`` groups with the largest summed score, in original order.

    Args:
        scores: [width] per-channel importance; groups are contiguous (GroupNorm's layout).
        groups: GroupNorm groups of the layer.
        keep: groups to keep.
    """
    size = scores.numel() // groups
    kept = _largest_in_order(scores.view(groups, size).sum(dim=1), keep)
    return (kept[:, None] * size + torch.arange(size)).flatten()


def keep_filters(scores: torch.Tensor, groups: int, keep: int) -> torch.Tensor:
    """The ``keep`` groups' worth of single channels with the largest score, in order."""
    return _largest_in_order(scores, keep * (scores.numel() // groups))


GRANULARITY: dict[str, Callable[[torch.Tensor, int, int], torch.Tensor]] = {
    "group": keep_groups,
    "filter": keep_filters,
}


# --------------------------------------------------------------------------- widths


@dataclass(frozen=True)
class PruningBase:
    """The unpruned widths D counts from."""

    geo_head: GeoHeadConfig
    pnp: PatchPnPConfig

    @classmethod
    def of(cls, cfg_model: ModelConfig) -> "PruningBase":
        """A network that is its own base (not pruned yet)."""
        return cls(cfg_model.geo_head, cfg_model.pnp)

    def to_dict(self) -> dict[str, Any]:
        return {"geo_head": to_dict(self.geo_head), "pnp": to_dict(self.pnp)}


def pruning_base(checkpoint: Mapping[str, Any], cfg_model: ModelConfig, source: str = "checkpoint") -> PruningBase:
    """The base recorded in a checkpoint's ``"pruning"`` entry, else the model's own widths."""
    record = checkpoint.get("pruning")
    if not isinstance(record, Mapping) or not isinstance(record.get("base"), Mapping):
        return PruningBase.of(cfg_model)
    where = f"{source} (pruning record)"
    base = record["base"]
    return PruningBase(
        from_dict(GeoHeadConfig, base.get("geo_head"), source=where, prefix="pruning.base.geo_head."),
        from_dict(PatchPnPConfig, base.get("pnp"), source=where, prefix="pruning.base.pnp."),
    )


def _pruned_layers(
    part: str, name: str, d: int, base: tuple[Sequence[int], Sequence[int]], current: tuple[Sequence[int], Sequence[int]]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Widths and groups of one part's layers after removing ``d`` base groups each."""
    widths, groups = [], []
    for i, (bw, bg, cw, cg) in enumerate(zip(*base, *current)):
        size = bw // bg
        if not 0 <= d < bg:
            raise PruningError(
                f"{name}={d} is outside 0–{bg - 1}: {part} layer {i} has {bg} GroupNorm groups of "
                f"{size} channels (unpruned width {bw}) and at least one group must stay"
            )
        if cw // cg != size:
            raise PruningError(
                f"{part} layer {i} has {cw} channels in {cg} groups, but its unpruned base has "
                f"groups of {size}: the checkpoint's pruning record does not match its config"
            )
        target = bg - d
        if target > cg:
            raise PruningError(
                f"the checkpoint is already pruned past the request: {part} layer {i} has {cw} "
                f"channels in {cg} groups (D={bg - cg} from {bw} in {bg}), but {name}={d} asks for "
                f"{target * size} channels in {target} groups; pruning only removes channels "
                f"(ask for {name} >= {bg - cg}, or prune the unpruned checkpoint)"
            )
        widths.append(target * size)
        groups.append(target)
    return tuple(widths), tuple(groups)


def pruned_widths(
    base: PruningBase, cfg_model: ModelConfig, geo_d: int, pnp_d: int, prune_fc: bool = False
) -> tuple[GeoHeadConfig, PatchPnPConfig]:
    """The geometric head's and Patch-PnP's widths after pruning ``cfg_model`` to D.

    Raises:
        PruningError: a D outside 0 … groups − 1, or a network already smaller than D leaves.
    """
    geo, pnp = cfg_model.geo_head, cfg_model.pnp
    geo_w, geo_g = _pruned_layers(
        "geometric head", "geo_d", geo_d, (base.geo_head.widths, base.geo_head.gn_groups), (geo.widths, geo.gn_groups)
    )
    pnp_w, pnp_g = _pruned_layers(
        "Patch-PnP", "pnp_d", pnp_d, (base.pnp.widths, base.pnp.gn_groups), (pnp.widths, pnp.gn_groups)
    )
    fc = tuple(pnp.fc_widths)
    if prune_fc:
        step = base.pnp.widths[0] // base.pnp.gn_groups[0]
        fc = tuple(b - step * pnp_d for b in base.pnp.fc_widths)
        for i, (target, have, b) in enumerate(zip(fc, pnp.fc_widths, base.pnp.fc_widths)):
            if target < 1:
                raise PruningError(f"pnp_d={pnp_d} with prune_fc leaves fc{i + 1} ({b} − {step}·{pnp_d}) without rows")
            if target > have:
                raise PruningError(
                    f"the checkpoint is already pruned past the request: fc{i + 1} has {have} rows, "
                    f"but pnp_d={pnp_d} with prune_fc asks for {target} ({b} − {step}·{pnp_d})"
                )
    return GeoHeadConfig(geo_w, geo_g), PatchPnPConfig(pnp_w, pnp_g, fc)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PruningPlan:
    """What to keep: kept channel indices (of the network being pruned) and new widths.

    Attributes:
        geo_keep: per geometric-head layer, [kept width] int64 channel indices, ascending.
        pnp_keep: per Patch-PnP conv, kept channel indices.
        fc_keep: kept rows of fc1 and fc2 (None: fc layers keep all rows).
        geo_head, pnp: the pruned widths.
    """

    geo_d: int
    pnp_d: int
    granularity: str
    prune_fc: bool
    importance: str
    base: PruningBase
    geo_keep: tuple[torch.Tensor, ...]
    pnp_keep: tuple[torch.Tensor, ...]
    fc_keep: tuple[torch.Tensor, torch.Tensor] | None
    geo_head: GeoHeadConfig
    pnp: PatchPnPConfig

    def record(self, source_checkpoint: str | Path | None = None) -> dict[str, Any]:
        """The checkpoint's ``"pruning"`` entry (plain types only)."""
        as_lists = lambda keep: [k.tolist() for k in keep]  # noqa: E731
        return {
            "geo_d": self.geo_d,
            "pnp_d": self.pnp_d,
            "granularity": self.granularity,
            "prune_fc": self.prune_fc,
            "importance": self.importance,
            "source_checkpoint": None if source_checkpoint is None else str(source_checkpoint),
            "base": self.base.to_dict(),
            "kept": {
                "geo_head": as_lists(self.geo_keep),
                "pnp": as_lists(self.pnp_keep),
                "fc": None if self.fc_keep is None else as_lists(self.fc_keep),
            },
        }


def conv_norm_pairs(features: nn.Module) -> list[tuple[str, nn.Module, str, nn.GroupNorm]]:
    """(conv name, conv, norm name, norm) of each conv and the GroupNorm after it, in order."""
    pairs, pending = [], None
    for name, module in features.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            pending = (name, module)
        elif isinstance(module, nn.GroupNorm) and pending is not None:
            pairs.append((*pending, name, module))
            pending = None
    return pairs


def _check_matches(part: str, pairs: Sequence[tuple[str, nn.Module, str, nn.GroupNorm]], widths, groups) -> None:
    have = [(norm.num_channels, norm.num_groups) for _, _, _, norm in pairs]
    if have != list(zip(widths, groups)):
        raise PruningError(
            f"the model's {part} (widths, groups) {have} do not match its config {list(zip(widths, groups))}"
        )


def plan_pruning(
    model: GDRNPoseNet,
    cfg_model: ModelConfig,
    geo_d: int,
    pnp_d: int,
    granularity: Granularity = "group",
    prune_fc: bool = False,
    importance: str = "l1",
    base: PruningBase | None = None,
) -> PruningPlan:
    """Rank the units of every prunable layer and choose what to keep.

    Args:
        model: the network, built from ``cfg_model``.
        geo_d, pnp_d: GroupNorm groups to remove per layer, counted from ``base``.
        granularity: ``"group"`` or ``"filter"`` (see the module docstring).
        prune_fc: also shrink fc1 and fc2.
        importance: a ``PRUNING_IMPORTANCE`` name.
        base: the unpruned widths; None treats ``cfg_model`` as unpruned.
    """
    if granularity not in GRANULARITY:
        raise PruningError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITY)}")
    score = PRUNING_IMPORTANCE.get(importance)
    base = PruningBase.of(cfg_model) if base is None else base
    geo_cfg, pnp_cfg = pruned_widths(base, cfg_model, geo_d, pnp_d, prune_fc)
    select = GRANULARITY[granularity]
    geo_pairs = conv_norm_pairs(model.geo_head_net.features)
    pnp_pairs = conv_norm_pairs(model.pnp_net.features)
    _check_matches("geometric head", geo_pairs, cfg_model.geo_head.widths, cfg_model.geo_head.gn_groups)
    _check_matches("Patch-PnP", pnp_pairs, cfg_model.pnp.widths, cfg_model.pnp.gn_groups)
    geo_keep = tuple(
        select(score(conv).cpu(), norm.num_groups, keep)
        for (_, conv, _, norm), keep in zip(geo_pairs, geo_cfg.gn_groups)
    )
    pnp_keep = tuple(
        select(score(conv).cpu(), norm.num_groups, keep)
        for (_, conv, _, norm), keep in zip(pnp_pairs, pnp_cfg.gn_groups)
    )
    fc_keep = None
    if prune_fc:
        pnp_net = model.pnp_net
        fc_keep = tuple(
            _largest_in_order(score(fc).cpu(), width) for fc, width in zip((pnp_net.fc1, pnp_net.fc2), pnp_cfg.fc_widths)
        )
    return PruningPlan(
        geo_d, pnp_d, granularity, prune_fc, importance, base, geo_keep, pnp_keep, fc_keep, geo_cfg, pnp_cfg  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- surgery


class _Slicer:
    """Slices tensors of a state dict in place along one dimension."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = dict(state)

    def __call__(self, key: str, dim: int, index: torch.Tensor | None) -> None:
        if index is not None and key in self.state:
            value = self.state[key]
            self.state[key] = value.index_select(dim, index.to(value.device))


def _slice_chain(
    cut: _Slicer, prefix: str, pairs: Sequence[tuple[str, nn.Module, str, nn.GroupNorm]], keeps: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Slice each conv's outputs and inputs and its GroupNorm; returns the last kept list."""
    previous = None
    for (conv_name, conv, norm_name, _), keep in zip(pairs, keeps):
        out_dim, in_dim = (1, 0) if isinstance(conv, nn.ConvTranspose2d) else (0, 1)
        cut(f"{prefix}{conv_name}.weight", out_dim, keep)
        cut(f"{prefix}{conv_name}.weight", in_dim, previous)
        cut(f"{prefix}{conv_name}.bias", 0, keep)
        cut(f"{prefix}{norm_name}.weight", 0, keep)
        cut(f"{prefix}{norm_name}.bias", 0, keep)
        previous = keep
    return previous


def fc1_columns(kept_channels: torch.Tensor, spatial: int) -> torch.Tensor:
    """fc1 input columns of kept channels: channel c owns c·S … c·S + S − 1 (flatten order)."""
    return (kept_channels[:, None] * spatial + torch.arange(spatial)).flatten()


def apply_pruning(model: GDRNPoseNet, cfg_model: ModelConfig, plan: PruningPlan) -> tuple[GDRNPoseNet, ModelConfig]:
    """A new network built from the pruned config, with the sliced weights loaded strictly.

    The returned model is on the input's device and in its train/eval mode; the input
    model is not modified.
    """
    new_cfg = replace(cfg_model, geo_head=plan.geo_head, pnp=plan.pnp)
    cut = _Slicer(model.state_dict())
    last = _slice_chain(cut, "geo_head_net.features.", conv_norm_pairs(model.geo_head_net.features), plan.geo_keep)
    cut("geo_head_net.out_layer.weight", 1, last)
    pnp = model.pnp_net
    last = _slice_chain(cut, "pnp_net.features.", conv_norm_pairs(pnp.features), plan.pnp_keep)
    spatial = pnp.fc1.in_features // cfg_model.pnp.widths[-1]
    cut("pnp_net.fc1.weight", 1, fc1_columns(last, spatial))
    if plan.fc_keep is not None:
        keep1, keep2 = plan.fc_keep
        cut("pnp_net.fc1.weight", 0, keep1)
        cut("pnp_net.fc1.bias", 0, keep1)
        cut("pnp_net.fc2.weight", 1, keep1)
        cut("pnp_net.fc2.weight", 0, keep2)
        cut("pnp_net.fc2.bias", 0, keep2)
        cut("pnp_net.fc_r.weight", 1, keep2)
        cut("pnp_net.fc_t.weight", 1, keep2)
    pruned = GDRNPoseNet.from_config(new_cfg, init_heads=False, read_pretrained=False)
    pruned.load_state_dict(cut.state, strict=True)
    device = next(model.parameters()).device
    return pruned.to(device).train(model.training), new_cfg


def prune_pose_net(
    model: GDRNPoseNet,
    cfg_model: ModelConfig,
    geo_d: int,
    pnp_d: int,
    granularity: Granularity = "group",
    prune_fc: bool = False,
    importance: str = "l1",
    base: PruningBase | None = None,
) -> tuple[GDRNPoseNet, ModelConfig]:
    """Prune the geometric head by ``geo_d`` and Patch-PnP by ``pnp_d`` GroupNorm groups.

    :func:`plan_pruning` then :func:`apply_pruning`; see the module docstring.

    Returns:
        (new model, its model config with the pruned widths).
    """
    plan = plan_pruning(model, cfg_model, geo_d, pnp_d, granularity, prune_fc, importance, base)
    return apply_pruning(model, cfg_model, plan)


# --------------------------------------------------------------------------- files


def save_pruned(
    path: str | Path, model: GDRNPoseNet, cfg: Config, source_checkpoint: str | Path | None, plan: PruningPlan
) -> Path:
    """Write ``{"model": state_dict, "config": cfg, "pruning": plan.record(…)}`` atomically.

    ``cfg`` is the full config with the pruned widths; the file loads with
    :func:`fastgdr.inference.predictor.load_model` and initialises fine-tuning (``--init``).
    """
    return save_checkpoint(path, model, config=to_dict(cfg), pruning=plan.record(source_checkpoint))


def check_init_widths(checkpoint: str | Path | Mapping, cfg_model: ModelConfig, source: str | None = None) -> None:
    """Refuse to initialise a model from a checkpoint saved with other head/PnP widths.

    GroupNorm group counts do not show in tensor shapes, so a strict load alone would
    accept a checkpoint pruned with another ``gn_groups``. Checkpoints without an
    embedded config are left to the strict load.

    Raises:
        ConfigError: naming the checkpoint's and the training config's widths.
    """
    state = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    name = source or str(checkpoint)
    saved = state.get("config")
    model = saved.get("model") if isinstance(saved, Mapping) else None
    if not isinstance(model, Mapping):
        return
    source = f"{name} (embedded config)"
    differences = []
    for key, cls in (("geo_head", GeoHeadConfig), ("pnp", PatchPnPConfig)):
        if not isinstance(model.get(key), Mapping):
            continue
        have = from_dict(cls, model[key], source=source, prefix=f"model.{key}.")
        want = getattr(cfg_model, key)
        if have != want:
            differences.append(f"model.{key}: checkpoint {_describe(have)} vs training config {_describe(want)}")
    if differences:
        raise ConfigError(
            f"init checkpoint {name} was saved with other widths than the training config: "
            + "; ".join(differences)
            + " (fine-tune with the config written beside the pruned checkpoint, e.g. configs/p28.yaml)"
        )


def _describe(part: GeoHeadConfig | PatchPnPConfig) -> str:
    return ", ".join(f"{k} {list(v)}" for k, v in to_dict(part).items())


# --------------------------------------------------------------------------- before / after


@dataclass(frozen=True)
class ModuleSummary:
    """Parameters, GFLOPs and latency of one module (batch 1 unless stated)."""

    params: int
    gflops: float
    latency: LatencyStats


def _module_calls(model: GDRNPoseNet, input_res: int) -> dict[str, Callable[[], Any]]:
    """Batch-1 calls of the head (on backbone features), Patch-PnP and the whole network."""
    device = next(model.parameters()).device
    images, classes, coord_2d, extents = example_inputs(model, 1, input_res)
    with torch.inference_mode():
        features = model.extract_features(images)
    size = coord_2d.shape[-1]
    xyz = torch.rand(1, 3, size, size, device=device)
    region = torch.softmax(torch.rand(1, model.pnp_net.num_regions, size, size, device=device), dim=1)
    return {
        "geo_head_net": lambda: model.geo_head_net.forward_raw(features),
        "pnp_net": lambda: model.pnp_net(xyz, coord_2d, region, extents),
        "total": lambda: model(images, classes, coord_2d, extents),
    }


def summarize(
    models: Sequence[GDRNPoseNet], input_res: int, warmup: int = 3, repeats: int = 10
) -> list[dict[str, ModuleSummary]]:
    """Costs and latency of the geometric head, Patch-PnP and the whole network of each model.

    Batch 1, eval and inference mode, on each model's device; the models are timed
    interleaved (:func:`fastgdr.bench.measure_latency`). The head runs on the backbone features of a
    random crop, Patch-PnP on random inputs of its shapes.
    """
    modes = [m.training for m in models]
    for model in models:
        model.eval()
    costs = [{c.name: c for c in model_costs(m, batch=1, input_res=input_res)} for m in models]
    calls = [_module_calls(m, input_res) for m in models]
    device = next(models[0].parameters()).device
    latency: list[dict[str, LatencyStats]] = [{} for _ in models]
    with torch.inference_mode():
        for name in MODULES:
            for stats, timed in zip(latency, measure_latency([c[name] for c in calls], device, warmup, repeats)):
                stats[name] = timed
    for model, mode in zip(models, modes):
        model.train(mode)
    return [
        {name: ModuleSummary(c[name].params, c[name].gflops, t[name]) for name in MODULES}
        for c, t in zip(costs, latency)
    ]


def format_comparison(before: Mapping[str, ModuleSummary], after: Mapping[str, ModuleSummary]) -> str:
    """A text table of parameters (M), GFLOPs and median latency (ms) before → after."""

    def change(a: float, b: float) -> str:
        return f"{(b - a) / a * 100:+.1f}%" if a else "n/a"

    lines = [
        f"{'module':<14}{'params (M)':>24}{'GFLOPs':>26}{'latency ms (median)':>28}",
    ]
    for name in before:
        x, y = before[name], after[name]
        lines.append(
            f"{name:<14}"
            f"{x.params / 1e6:>8.3f} → {y.params / 1e6:<7.3f}{change(x.params, y.params):>7}"
            f"{x.gflops:>9.3f} → {y.gflops:<7.3f}{change(x.gflops, y.gflops):>7}"
            f"{x.latency.median_ms:>9.2f} → {y.latency.median_ms:<7.2f}"
            f"{change(x.latency.median_ms, y.latency.median_ms):>8}"
        )
    return "\n".join(lines)

