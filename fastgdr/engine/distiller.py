"""Knowledge distillation during training: frozen teachers and the loss terms they drive.

:class:`TeacherEnsemble` runs one or more frozen teachers (fastgdr or official GDRNPP
checkpoints, any backbone) on exactly the crops the student sees, without gradients and
only as far as the enabled terms need (backbone only for feature distillation). The
:class:`Distiller` owns the 1×1 feature adapter (trained with its own learning rate, never
part of the saved student) and turns teacher and student outputs into the weighted loss
terms ``kd_feature``, ``kd_ot``, ``kd_naive`` and ``kd_ua_feature`` (UA-KD's feature term
at the cells the OT plan pairs) that the trainer adds to the GDRNPP losses and logs
separately.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from fastgdr.checkpoint import load_weights, read_checkpoint
from fastgdr.config import Config, KDConfig, ModelConfig, from_dict, load_config
from fastgdr.errors import CheckpointError, ConfigError
from fastgdr.losses.distillation import (
    EnsemblePrediction,
    WeightedPoints,
    ensemble_confidence,
    feature_distillation_loss,
    local_prediction_points,
    naive_distillation_loss,
    ot_distillation_loss,
    ot_paired_feature_loss,
    region_prediction_points,
    sample_features,
    standardize_spatial,
)
from fastgdr.models import GDRNPoseNet
from fastgdr.models.fusion import fuse_for_inference
from fastgdr.models.pose_net import PoseNetOutput


def load_teacher(
    checkpoint: str | Path, fallback_config: str | Path | None = None, num_classes: int | None = None,
    fuse: bool = True,
) -> tuple[GDRNPoseNet, ModelConfig]:
    """A frozen teacher in eval mode, loaded strictly, its ConvNeXt blocks fused for
    inference unless ``fuse`` is False (:mod:`fastgdr.models.fusion`: the same outputs, faster).

    fastgdr checkpoints carry their config (input convention included) and it is always
    the one used. Checkpoints without one (official GDRNPP) are described by
    ``fallback_config`` (e.g. configs/bm.yaml), with ``num_classes`` (the student's) set.

    Raises:
        CheckpointError: the file is unreadable, carries no config and none was given, or
            its weights do not match the config (the message lists the keys).
    """
    state = read_checkpoint(checkpoint)
    if isinstance(state.get("config"), dict):
        model_cfg = from_dict(Config, state["config"], source=f"{checkpoint} (embedded config)").model
        described_by = "its embedded config"
    elif fallback_config is not None:
        model_cfg = load_config(fallback_config).model
        if num_classes is not None:
            model_cfg = replace(model_cfg, num_classes=num_classes)
        described_by = str(fallback_config)
    else:
        raise CheckpointError(
            f"teacher {checkpoint} carries no config (an official GDRNPP checkpoint?): "
            "set kd.teacher_config (tools/distill.py --teacher-config), e.g. configs/bm.yaml"
        )
    model = GDRNPoseNet.from_config(model_cfg, init_heads=False, read_pretrained=False)
    try:
        load_weights(model, state, strict=True, source=f"teacher {checkpoint}")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}\nThe teacher's weights do not match {described_by}.") from None
    model.eval().requires_grad_(False)
    if fuse:
        fuse_for_inference(model)
    return model, model_cfg


@dataclass
class TeacherOutputs:
    """What the teachers say about one batch of crops.

    Attributes:
        features: [B, C_t, h, w] backbone features of the first teacher on the unperturbed
            crop (None when no feature term is on).
        dense: coordinates, visible mask and (for region OT sets) region probabilities —
            the mean over several teachers, the first teacher's on the unperturbed crop
            otherwise — with their per-cell confidence (1 without an uncertainty estimate);
            None when no prediction term is on.
    """

    features: Tensor | None
    dense: EnsemblePrediction | None


class TeacherEnsemble:
    """Frozen teachers that see the student's crops.

    Args:
        models: teacher networks (eval mode, no gradients).
        configs: their model configs (input channel order, resolution).
        student_cfg: the student's model config (checked for compatibility).
        kd: the distillation config.
    """

    def __init__(self, models: list[GDRNPoseNet], configs: list[ModelConfig], student_cfg: ModelConfig, kd: KDConfig):
        if not models:
            raise ConfigError("distillation needs at least one teacher (kd.teachers)")
        for path, cfg in zip(kd.teachers or ["teacher"] * len(models), configs):
            if cfg.input_res != student_cfg.input_res:
                raise ConfigError(f"teacher {path} takes {cfg.input_res} px crops, the student {student_cfg.input_res} px")
            teacher_classes = cfg.num_classes if cfg.class_aware else 1
            student_classes = student_cfg.num_classes if student_cfg.class_aware else 1
            if teacher_classes != student_classes:
                raise ConfigError(
                    f"teacher {path} predicts {teacher_classes} classes, the student {student_classes}: "
                    "both must be trained on the same objects"
                )
        uncertainty = kd.uncertainty
        self.needs_confidence = uncertainty.enabled
        if self.needs_confidence and uncertainty.source == "ensemble" and len(models) < 2:
            raise ConfigError(
                "kd.uncertainty.source=ensemble (UA-KD's deep ensemble, the default) needs at least two teachers "
                "(tools/distill.py --teacher A.pth --teacher B.pth); with a single teacher set "
                "kd.uncertainty.source=tta (perturbed crops, the single-teacher fallback)"
            )
        if self.needs_confidence and uncertainty.source == "tta" and len(models) > 1:
            raise ConfigError(
                f"kd.uncertainty.source=tta is the single-teacher fallback, but {len(models)} teachers are given: "
                "use kd.uncertainty.source=ensemble"
            )
        self.models = models
        self.flip_channels = [cfg.input.channel_order != student_cfg.input.channel_order for cfg in configs]
        self.kd = kd
        self.needs_features = kd.feature.weight > 0 or uncertainty.feature_weight > 0
        self.needs_dense = kd.ot.weight > 0 or kd.naive.weight > 0 or uncertainty.feature_weight > 0
        self.needs_region = kd.ot.sampling == "region" and (kd.ot.weight > 0 or uncertainty.feature_weight > 0)

    @property
    def feature_channels(self) -> int:
        return self.models[0].backbone_info.channels

    def to(self, device: torch.device) -> "TeacherEnsemble":
        self.models = [model.to(device) for model in self.models]
        return self

    @torch.no_grad()
    def __call__(self, images: Tensor, roi_classes: Tensor) -> TeacherOutputs:
        """Teacher outputs for [B, 3, S, S] crops in [0, 1] in the student's channel order."""
        members = self._member_inputs(images)
        features, member_xyz, member_mask, member_region = None, [], [], []
        for index, (model, crops) in enumerate(members):
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.kd.teacher_precision == "bfloat16"):
                member_features = model.extract_features(crops)
                if self.needs_dense:
                    mask, _, xyz, region = model.dense_predictions(member_features, roi_classes)
            if index == 0 and self.needs_features:
                features = member_features.float()
            if self.needs_dense:
                member_xyz.append(xyz.float())
                member_mask.append(mask.float())
                if self.needs_region:
                    member_region.append(torch.softmax(region.float()[:, 1:], dim=1))
        if not self.needs_dense:
            return TeacherOutputs(features, None)
        regions = torch.stack(member_region) if member_region else None
        if len(member_xyz) == 1:
            xyz, mask = member_xyz[0], member_mask[0]
            ones = torch.ones_like(mask)
            region = regions[0] if regions is not None else None
            return TeacherOutputs(features, EnsemblePrediction(xyz, mask, torch.zeros_like(mask), ones, region))
        dense = ensemble_confidence(torch.stack(member_xyz), torch.stack(member_mask), self.kd.uncertainty.temperature,
                                    regions)
        if len(self.models) == 1:  # perturbed copies only estimate the uncertainty of the clean crop's prediction
            dense = replace(dense, xyz=member_xyz[0], mask=member_mask[0],
                            region=regions[0] if regions is not None else None)
        return TeacherOutputs(features, dense)

    def _member_inputs(self, images: Tensor) -> list[tuple[GDRNPoseNet, Tensor]]:
        """(model, crops) per pass: the first teacher alone when only its features are
        needed; every teacher once; or — one teacher with an uncertainty estimate to make —
        the crop and perturbed copies of it (the clean crop first)."""
        def in_order(model_index: int, crops: Tensor) -> Tensor:
            return crops.flip(1) if self.flip_channels[model_index] else crops

        if not self.needs_dense:
            return [(self.models[0], in_order(0, images))]
        if not self.needs_confidence or self.kd.uncertainty.source == "ensemble":
            return [(model, in_order(i, images)) for i, model in enumerate(self.models)]
        uncertainty = self.kd.uncertainty
        copies = [images] + [
            photometric_perturbation(images, uncertainty.tta_strength) for _ in range(uncertainty.tta_samples - 1)
        ]
        return [(self.models[0], in_order(0, crops)) for crops in copies]


def photometric_perturbation(images: Tensor, strength: float) -> Tensor:
    """Per-crop random contrast and brightness, plus pixel noise, that leave the geometry
    (and so the correct prediction) unchanged: test-time augmentation for uncertainty."""
    batch = images.shape[0]
    contrast = 1.0 + strength * (2 * torch.rand(batch, 1, 1, 1, device=images.device) - 1)
    brightness = strength * (2 * torch.rand(batch, 1, 1, 1, device=images.device) - 1)
    noise = 0.5 * strength * torch.randn_like(images)
    return (images * contrast + brightness + noise).clamp(0.0, 1.0)


def build_feature_adapter(student_channels: int, teacher_channels: int) -> nn.Conv2d:
    """FAST GDRNPP's adapter: a 1×1 conv (with bias, Kaiming fan-out init, zero bias) from
    the student's to the teacher's channels. Unlike FAST GDRNPP's code it is built for
    equal channel counts too: equal widths (R34 and P, S and T) do not align channels."""
    adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
    nn.init.kaiming_normal_(adapter.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(adapter.bias)
    return adapter


class Distiller(nn.Module):
    """The distillation terms for one training step.

    Its only parameters are the feature adapter's; the teachers are held outside the
    module tree, so ``state_dict()`` holds just what resuming needs.
    """

    def __init__(self, kd: KDConfig, teachers: TeacherEnsemble, student_channels: int):
        super().__init__()
        self.kd = kd
        self.teachers = teachers
        self.adapter = build_feature_adapter(student_channels, teachers.feature_channels) if teachers.needs_features else None

    def forward(
        self, images: Tensor, roi_classes: Tensor, student: PoseNetOutput, roi_coord_2d: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Weighted loss terms (only the enabled ones) for a batch the student has seen.

        ``roi_coord_2d`` ([B, 2, s, s], the network's input): the image-normalised cell
        positions of ADLP's region sets; without it they are positions in the crop.
        """
        kd = self.kd
        teacher = self.teachers(images, roi_classes)
        losses: dict[str, Tensor] = {}
        adapted = self.adapter(student.features) if self.adapter is not None else None
        if kd.feature.weight > 0:
            losses["kd_feature"] = kd.feature.weight * feature_distillation_loss(adapted, teacher.features)
        if teacher.dense is None:
            return losses
        dense = teacher.dense
        if kd.ot.weight > 0 or kd.uncertainty.feature_weight > 0:
            student_set, teacher_set = self.prediction_sets(student, dense, roi_coord_2d)
            if kd.ot.weight > 0:
                losses["kd_ot"] = kd.ot.weight * ot_distillation_loss(
                    student_set, teacher_set, kd.ot.blur, kd.ot.reach, kd.ot.scaling)
            if kd.uncertainty.feature_weight > 0:
                student_features = sample_features(standardize_spatial(adapted), student_set.locations)
                teacher_features = sample_features(standardize_spatial(teacher.features), teacher_set.locations)
                plan_blur = kd.uncertainty.plan_blur or kd.ot.blur
                losses["kd_ua_feature"] = kd.uncertainty.feature_weight * ot_paired_feature_loss(
                    student_set, teacher_set, student_features, teacher_features, plan_blur, kd.ot.reach, kd.ot.scaling)
        if kd.naive.weight > 0:
            losses["kd_naive"] = kd.naive.weight * naive_distillation_loss(
                student.xyz, student.visible_mask, dense.xyz, dense.mask, kd.naive.norm, kd.naive.mask_weight
            )
        return losses

    def prediction_sets(
        self, student: PoseNetOutput, dense: EnsemblePrediction, roi_coord_2d: Tensor | None
    ) -> tuple[WeightedPoints, WeightedPoints]:
        """The student's and the teachers' local predictions as the point sets ``kd.ot``
        describes; the teachers' masses carry their confidence with ``kd.uncertainty.enabled``."""
        ot = self.kd.ot
        teacher_mask = dense.mask * dense.confidence if self.kd.uncertainty.enabled else dense.mask
        student_mask = student.visible_mask.detach() if ot.detach_masses else student.visible_mask
        if ot.sampling != "region":
            return tuple(  # type: ignore[return-value]
                local_prediction_points(xyz, mask, ot.sampling, ot.grid, ot.topk, ot.position_scale)
                for xyz, mask in ((student.xyz, student_mask), (dense.xyz, teacher_mask))
            )
        student_region = torch.softmax(student.region[:, 1:], dim=1)
        if ot.detach_masses:
            student_region = student_region.detach()
        with_xyz = ot.region_points == "uvxyz"
        return tuple(  # type: ignore[return-value]
            region_prediction_points(mask, region, roi_coord_2d, xyz if with_xyz else None, ot.region_topk,
                                     ot.position_scale)
            for xyz, mask, region in ((student.xyz, student_mask, student_region),
                                      (dense.xyz, teacher_mask, dense.region))
        )


def build_distiller(cfg: Config, student: GDRNPoseNet, device: torch.device) -> Distiller:
    """The distiller ``cfg.kd`` describes, with its teachers loaded onto ``device``.

    Raises:
        ConfigError: no teacher is named, or a teacher does not fit the student.
        CheckpointError: a teacher checkpoint does not match its config.
    """
    kd = cfg.kd
    if not kd.teachers:
        raise ConfigError(
            "distillation weights are set (kd.*.weight > 0) but kd.teachers is empty: "
            "name the teacher checkpoints (tools/distill.py --teacher T.pth)"
        )
    output_size = cfg.model.input_res // student.backbone_info.stride * 8
    if kd.ot.weight > 0 and kd.ot.sampling == "pool" and output_size % kd.ot.grid != 0:
        raise ConfigError(f"kd.ot.grid={kd.ot.grid} must divide the {output_size}×{output_size} output of the student")
    loaded = [load_teacher(path, kd.teacher_config, cfg.model.num_classes) for path in kd.teachers]
    for path, (model, _) in zip(kd.teachers, loaded):
        if model.backbone_info.stride != student.backbone_info.stride:
            raise ConfigError(
                f"teacher {path} has stride-{model.backbone_info.stride} features, the student stride "
                f"{student.backbone_info.stride}: feature maps must have the same size"
            )
    teachers = TeacherEnsemble([m for m, _ in loaded], [c for _, c in loaded], cfg.model, kd).to(device)
    return Distiller(kd, teachers, student.backbone_info.channels).to(device)
