"""The config dataclasses: every setting of the model, the data, training and
distillation, with its default and the checks of its value (``__post_init__``).

A config file is YAML whose structure mirrors these dataclasses (read with
:func:`fastgdr.config.load_config`). This module is the schema alone; loading, overrides
and dumping are in :mod:`fastgdr.config.loading`, the training recipes in
:mod:`fastgdr.config.recipes`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

GEO_HEAD_LAYERS = 7  # the deconv and six 3x3 convs of the geometric head
PNP_CONV_LAYERS = 3  # the three stride-2 convs of Patch-PnP


@dataclass
class BackboneConfig:
    """Which feature extractor to use and where its weights come from.

    Attributes:
        name: a preset (``BM``, ``N``, ``P``, …; see ``fastgdr.models.backbones``) or any
            timm model name.
        pretrained: local path of a timm checkpoint or state dict for the backbone, or
            None for random initialisation. Nothing is ever downloaded.
        out_index: feature level to use; None takes the preset's level (the last one,
            stride 32, for plain timm names).
    """

    name: str = "P"
    pretrained: str | None = None
    out_index: int | None = None


@dataclass
class InputConfig:
    """How crops are fed to the backbone.

    The network receives crops scaled to [0, 1] in ``channel_order`` and computes
    ``(x - mean) / std`` per channel. GDRNPP's convention (the one its checkpoints need)
    is BGR in [0, 1] with mean 0 and std 1.
    """

    channel_order: Literal["BGR", "RGB"] = "BGR"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {list(self.std)}")


@dataclass
class GeoHeadConfig:
    """Widths of the geometric head (a pruned head has smaller widths).

    Attributes:
        widths: output channels of its 7 layers (deconv, then six 3×3 convs).
        gn_groups: GroupNorm groups after each of the 7 layers; each width must be a
            multiple of its group count.
    """

    widths: tuple[int, ...] = (256,) * GEO_HEAD_LAYERS
    gn_groups: tuple[int, ...] = (32,) * GEO_HEAD_LAYERS

    def __post_init__(self) -> None:
        _check_layer_widths(self.widths, self.gn_groups, GEO_HEAD_LAYERS)


@dataclass
class PatchPnPConfig:
    """Widths of Patch-PnP.

    Attributes:
        widths: output channels of its three stride-2 convs.
        gn_groups: GroupNorm groups after each conv.
        fc_widths: hidden sizes of fc1 and fc2.
    """

    widths: tuple[int, ...] = (128,) * PNP_CONV_LAYERS
    gn_groups: tuple[int, ...] = (32,) * PNP_CONV_LAYERS
    fc_widths: tuple[int, int] = (1024, 256)

    def __post_init__(self) -> None:
        _check_layer_widths(self.widths, self.gn_groups, PNP_CONV_LAYERS)
        if any(w <= 0 for w in self.fc_widths):
            raise ValueError(f"fc_widths must be positive, got {list(self.fc_widths)}")


@dataclass
class ModelConfig:
    """The pose network: backbone → geometric head → Patch-PnP.

    Attributes:
        num_classes: number of objects C the head predicts for (class-aware heads).
        class_aware: one output set per class (GDRNPP's per-dataset models) or one shared
            set (its per-object models).
        num_regions: surface regions predicted per pixel (GDRNPP: 64).
        input_res: side of the square input crop in px.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    input: InputConfig = field(default_factory=InputConfig)
    geo_head: GeoHeadConfig = field(default_factory=GeoHeadConfig)
    pnp: PatchPnPConfig = field(default_factory=PatchPnPConfig)
    num_classes: int = 1
    class_aware: bool = True
    num_regions: int = 64
    input_res: int = 256

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.num_regions < 1:
            raise ValueError(f"num_regions must be >= 1, got {self.num_regions}")
        if self.input_res % 32 != 0 or self.input_res <= 0:
            raise ValueError(f"input_res must be a positive multiple of 32, got {self.input_res}")


@dataclass
class AugmentConfig:
    """Training augmentation (GDRNPP defaults).

    Attributes:
        dzi_scale_ratio: crop scale jitter, uniform in [1 − r, 1 + r].
        dzi_shift_ratio: crop centre jitter, uniform in ±r·(box w, h).
        dzi_pad_scale: crop side = max(box w, h) · scale · pad_scale.
        color_prob: probability of colour augmentation.
        background_prob: probability of replacing the background around the object.
        truncate_fg: cut the object's mask before background replacement.
        background_dir: folder of background images (GDRNPP: VOC2012); None uses
            procedural backgrounds.
    """

    dzi_scale_ratio: float = 0.25
    dzi_shift_ratio: float = 0.25
    dzi_pad_scale: float = 1.5
    color_prob: float = 0.8
    background_prob: float = 0.5
    truncate_fg: bool = True
    background_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("color_prob", "background_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class DataConfig:
    """Which data to train on and how ROIs are prepared.

    Attributes:
        dataset: dataset card name (lmo, ycbv, …); None detects it from the folder name
            or reads everything from the folder (object ids from models_info.json).
        train_splits: splits to train on; None uses the card's (or ``train_pbr``).
        visib_threshold: instances with visib_fract ≤ this are skipped (GDRNPP 0.3).
        min_mask_pixels: a sample is redrawn when its 64×64 visible mask has fewer pixels.
        num_model_points: model points for the point-matching loss.
        num_workers: data-loading worker processes.
        max_instances: train on the first this many instances only (overfitting checks,
            quick experiments); None uses all.
        canonical_symmetry: train symmetric objects on the symmetric equivalent of their
            pose that the view selects (one target per appearance; see
            ``fastgdr.data.train_dataset.canonical_pose_targets``). GDRNPP trains on the
            annotated pose.
    """

    dataset: str | None = None
    train_splits: tuple[str, ...] | None = None
    visib_threshold: float = 0.3
    min_mask_pixels: int = 32
    num_model_points: int = 3000
    num_workers: int = 2
    max_instances: int | None = None
    canonical_symmetry: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class LossWeights:
    """Weights of the loss terms (0 disables a term); GDRNPP's are 1 for all but ``rot``,
    the direct allocentric rotation term, which GDRNPP does not have."""

    xyz: float = 1.0
    mask_visible: float = 1.0
    mask_amodal: float = 1.0
    region: float = 1.0
    pm: float = 1.0
    rot: float = 0.0
    centroid: float = 1.0
    z: float = 1.0

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{item.name} must be a finite number >= 0, got {value}")


@dataclass
class TrainConfig:
    """Optimisation schedule (GDRNPP: Ranger, lr 8e-4, wd 0.01, 48 ROIs, 40 epochs).

    Attributes:
        recipe: ``gdrnpp`` (the defaults below: GDRNPP's schedule, for long runs that
            start from pretrained backbones), ``short`` (from-scratch, small-batch runs
            of minutes to hours) or ``backbone_pretraining`` (``short`` without the pose
            terms: a proxy task whose backbone starts later runs); a recipe's values fill
            every key the config does not set, see :data:`~fastgdr.config.recipes.RECIPES`
            and docs/training.md.
        iterations: total iterations; None derives them from ``epochs`` (or, with a time
            budget, leaves the budget alone to end the run); 0 writes the initialised
            model (an untrained baseline).
        epochs: passes over the training instances (used when ``iterations`` and
            ``time_budget_minutes`` are None).
        time_budget_minutes: end the run after this much wall clock of training (data
            loading included, set-up excluded); the learning-rate schedule then runs over
            the fraction of the budget used. None: a run of fixed length.
        snapshots: fractions of the run (in (0, 1]) at which the weights are also saved as
            ``snapshots/model_<percent>.pth`` with the elapsed time (learning curves).
        batch_size: ROIs per iteration, summed over all processes.
        lr: learning rate at ``lr_reference_batch`` ROIs per iteration.
        lr_scaling: how ``lr`` follows ``batch_size``: ``none`` (as given), ``linear``
            or ``sqrt`` in ``batch_size / lr_reference_batch``.
        lr_reference_batch: the batch size ``lr`` is given for (GDRNPP: 48).
        warmup_iters, warmup_factor, anneal_point: the flat-and-anneal schedule (the
            anneal point is a fraction of the run).
        head_init: initialisation of the geometric head and Patch-PnP: ``gdrnpp`` (every
            conv and linear weight N(0, 0.001), as GDRNPP) or ``torch`` (PyTorch's
            default, fan-in scaled).
        clip_grad_norm: clip the gradients' total norm to this value before each step
            (None: no clipping, as GDRNPP).
        pnp_teacher_forcing: weight of the pose terms of a second Patch-PnP pass on
            ground-truth correspondences (0: off, as GDRNPP; see
            ``fastgdr.engine.trainer.teacher_forcing_losses``).
        init_depth_from_data: start fc_t's δz bias at the mean δz of the training samples
            instead of 0.
        checkpoint_period: iterations between resumable checkpoints.
        log_period: iterations between log lines.
        seed: seeds sampling, augmentation and initialisation.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        amp: bf16 autocast on CUDA, and on CPUs with native bf16 (AVX512-BF16 or AMX).
        channels_last: channels-last memory format on CUDA.
    """

    recipe: Literal["gdrnpp", "short", "backbone_pretraining"] = "gdrnpp"
    iterations: int | None = None
    epochs: float = 40.0
    time_budget_minutes: float | None = None
    snapshots: tuple[float, ...] = ()
    batch_size: int = 48
    optimizer: Literal["ranger", "adamw", "sgd"] = "ranger"
    lr: float = 8e-4
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    lr_reference_batch: int = 48
    weight_decay: float = 0.01
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    anneal_point: float = 0.72
    head_init: Literal["gdrnpp", "torch"] = "gdrnpp"
    clip_grad_norm: float | None = None
    pnp_teacher_forcing: float = 0.0
    init_depth_from_data: bool = False
    checkpoint_period: int = 500
    log_period: int = 20
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    channels_last: bool = True
    loss_weights: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.iterations is not None and self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.batch_size < 1 or self.checkpoint_period < 1 or self.log_period < 1 or self.lr_reference_batch < 1:
            raise ValueError("batch_size, lr_reference_batch, checkpoint_period and log_period must be >= 1")
        for name in ("lr", "weight_decay", "epochs", "pnp_teacher_forcing"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise ValueError(f"{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {value}")
        if self.clip_grad_norm is not None and not (math.isfinite(self.clip_grad_norm) and self.clip_grad_norm > 0):
            raise ValueError(f"clip_grad_norm must be a positive number, got {self.clip_grad_norm}")
        if self.time_budget_minutes is not None and not (math.isfinite(self.time_budget_minutes) and self.time_budget_minutes > 0):
            raise ValueError(f"time_budget_minutes must be a positive number, got {self.time_budget_minutes}")
        if any(not 0.0 < f <= 1.0 for f in self.snapshots):
            raise ValueError(f"snapshots must be fractions of the run in (0, 1], got {list(self.snapshots)}")
        if not 0.0 <= self.warmup_factor <= 1.0 or self.warmup_iters < 0:
            raise ValueError("warmup_factor must be in [0, 1] and warmup_iters >= 0")
        if not 0.0 <= self.anneal_point <= 1.0:
            raise ValueError(f"anneal_point must be in [0, 1], got {self.anneal_point}")

    @property
    def scaled_lr(self) -> float:
        """``lr`` scaled to ``batch_size`` by ``lr_scaling``."""
        ratio = self.batch_size / self.lr_reference_batch
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]


@dataclass
class FeatureKDConfig:
    """FAST GDRNPP's feature distillation: a 1×1 adapter maps the student's backbone
    feature to the teacher's channels; both are standardised per sample and channel over
    space; MSE.

    Attributes:
        weight: loss weight (0 disables the term).
        adapter_lr: base learning rate of the adapter (its own optimizer group, no weight
            decay; FAST GDRNPP: 1e-5). It follows the same schedule as the student.
    """

    weight: float = 0.0
    adapter_lr: float = 1e-5

    def __post_init__(self) -> None:
        if self.weight < 0 or self.adapter_lr <= 0:
            raise ValueError("weight must be >= 0 and adapter_lr > 0")


@dataclass
class OTKDConfig:
    """ADLP: Sinkhorn divergences between the teacher's and the student's local predictions.

    The defaults are ADLP's published setting (geomloss Sinkhorn, p=2, blur 0.001, scaling
    0.5, reach 0.5: unbalanced) on ADLP's kind of point set: ``region`` sampling makes one
    2-D point set per surface region (GDRNPP's 64 farthest-point "keypoints"): the
    image-normalised positions of the ``region_topk`` cells that most see the region,
    weighted by visible mask × region probability; one OT problem per region, summed
    (docs/distillation.md lists what still differs from ADLP). ``pool`` and ``topk`` are
    fastgdr's earlier joint variant: one 5-D set per ROI, points (u, v, x, y, z) — cell
    position in the crop and predicted normalized object coordinate — with the visible
    mask as masses (use it with ``blur=0.05 reach=null``).

    Attributes:
        weight: loss weight (0 disables the term). ADLP's was 5 on LINEMOD, 0.1 on LM-O,
            100 with ZebraPose, each at its own loss scale; tune it at this one's
            (benchmarks/acceleration_study.py does).
        sampling: ``region`` (ADLP), ``pool`` (``grid``×``grid`` blocks, coordinates
            weighted by the mask, masses = mean mask) or ``topk`` (the ``topk`` cells with
            the largest mask value of each set).
        region_topk: cells per region set for ``region``.
        region_points: ``uv`` (ADLP's 2-D points) or ``uvxyz`` (the predicted coordinates
            appended) for ``region``.
        grid: pooled grid side for ``pool`` (16 → 256 points per ROI); must divide the output size.
        topk: points per ROI for ``topk``.
        blur: entropic blur in normalized units (ε = blur ** 2; ADLP: 0.001).
        reach: the reach of unbalanced OT (raw masses, KL-penalized marginals; ADLP: 0.5),
            or None for balanced OT (masses normalized to sum 1).
        scaling: ε-scaling ratio of the solver (closer to 1 = more accurate, slower; ADLP: 0.5).
        position_scale: factor on the (u, v) coordinates.
        detach_masses: stop gradients into the student's masks and region probabilities
            (ADLP distils them: its weights carry gradient to the segmentation scores).
    """

    weight: float = 0.0
    sampling: Literal["region", "pool", "topk"] = "region"
    region_topk: int = 16
    region_points: Literal["uv", "uvxyz"] = "uv"
    grid: int = 16
    topk: int = 256
    blur: float = 0.001
    reach: float | None = 0.5
    scaling: float = 0.5
    position_scale: float = 1.0
    detach_masses: bool = False

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        if self.grid < 1 or self.topk < 1 or self.region_topk < 1:
            raise ValueError("grid, topk and region_topk must be >= 1")
        if self.blur <= 0 or (self.reach is not None and self.reach <= 0):
            raise ValueError("blur and reach must be positive")
        if not 0.0 < self.scaling < 1.0:
            raise ValueError(f"scaling must be in (0, 1), got {self.scaling}")


@dataclass
class NaiveKDConfig:
    """The baseline the papers compare against: per-cell L1 or L2 between teacher and
    student coordinates (weighted by the teacher's visible mask) and visible masks.

    Attributes:
        weight: loss weight (0 disables the term).
        norm: ``l1`` or ``l2``.
        mask_weight: relative weight of the mask part.
    """

    weight: float = 0.0
    norm: Literal["l1", "l2"] = "l1"
    mask_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.weight < 0 or self.mask_weight < 0:
            raise ValueError("weight and mask_weight must be >= 0")


@dataclass
class UncertaintyKDConfig:
    """Uncertainty-aware distillation (UA-KD, arXiv 2503.13053): teacher uncertainty per
    local prediction from a deep ensemble.

    The uncertainty of a cell is the variance of the teachers' coordinates across the
    ensemble ``kd.teachers`` (``source: ensemble``, the default and UA-KD's; it needs at
    least two teachers). ``source: tta`` is a fallback for a single teacher: the variance
    across ``tta_samples`` photometrically perturbed copies of the crop. The confidence
    ``exp(-variance / temperature)`` multiplies the teacher's OT masses, and the
    prediction-related feature term distils backbone features at the cells the OT plan
    between the two prediction sets pairs (with the ``kd.ot`` sets and solver settings).

    Attributes:
        enabled: estimate the confidence and use it in the teacher's OT masses (needs
            ``kd.ot.weight`` > 0); the feature term's plan then pairs the weighted sets.
        source: ``ensemble`` (several teachers) or ``tta`` (one teacher, perturbed crops).
        tta_samples: perturbed copies for ``tta`` (>= 2).
        tta_strength: size of the brightness/contrast jitter and pixel noise.
        temperature: variance scale; None uses the mean variance over the teacher's
            visible cells of the batch (scale-free).
        feature_weight: weight of the OT-paired feature term (0 disables it).
        plan_blur: blur of the transport plan that pairs the cells for the feature term
            (same sets, masses and reach as ``kd.ot``); None: ``kd.ot.blur``. The default
            0.01 is about one output cell in image-normalised units: at ADLP's 0.001 the
            entropic plan is a near-hard assignment that Sinkhorn settles too slowly for a
            training step, and the features are read on a grid 8 output cells apart.
    """

    enabled: bool = False
    source: Literal["ensemble", "tta"] = "ensemble"
    tta_samples: int = 4
    tta_strength: float = 0.1
    temperature: float | None = None
    feature_weight: float = 0.0
    plan_blur: float | None = 0.01

    def __post_init__(self) -> None:
        if self.plan_blur is not None and self.plan_blur <= 0:
            raise ValueError(f"plan_blur must be positive, got {self.plan_blur}")
        if self.feature_weight < 0 or self.tta_strength < 0:
            raise ValueError("feature_weight and tta_strength must be >= 0")
        if self.tta_samples < 2:
            raise ValueError(f"tta_samples must be >= 2, got {self.tta_samples}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


@dataclass
class KDConfig:
    """Knowledge distillation from frozen teachers (``tools/distill.py``).

    Attributes:
        teachers: teacher checkpoints; several form an ensemble (the first one's
            features are the feature targets).
        teacher_config: config of teachers that carry none (official GDRNPP checkpoints;
            ``model.num_classes`` is taken from the student). A teacher's embedded config
            always wins.
        teacher_precision: ``bfloat16`` runs the teachers under autocast (faster on CPUs
            with AVX512-BF16 and on GPUs).
    """

    teachers: tuple[str, ...] = ()
    teacher_config: str | None = None
    teacher_precision: Literal["float32", "bfloat16"] = "float32"
    feature: FeatureKDConfig = field(default_factory=FeatureKDConfig)
    ot: OTKDConfig = field(default_factory=OTKDConfig)
    naive: NaiveKDConfig = field(default_factory=NaiveKDConfig)
    uncertainty: UncertaintyKDConfig = field(default_factory=UncertaintyKDConfig)

    def __post_init__(self) -> None:
        if self.uncertainty.enabled and self.ot.weight == 0:
            raise ValueError("uncertainty.enabled scales the teacher's OT masses: it needs ot.weight > 0")


    @property
    def active(self) -> bool:
        """Whether any distillation term is on."""
        return any(w > 0 for w in (self.feature.weight, self.ot.weight, self.naive.weight, self.uncertainty.feature_weight))


@dataclass
class Config:
    """The root of every config file."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kd: KDConfig = field(default_factory=KDConfig)


def _check_layer_widths(widths: Sequence[int], groups: Sequence[int], layers: int) -> None:
    if len(widths) != layers or len(groups) != layers:
        raise ValueError(
            f"expected {layers} widths and {layers} gn_groups, got {len(widths)} and {len(groups)}"
        )
    for i, (w, g) in enumerate(zip(widths, groups)):
        if w <= 0 or g <= 0 or w % g != 0:
            raise ValueError(
                f"layer {i}: width {w} must be a positive multiple of its gn_groups {g}"
            )
