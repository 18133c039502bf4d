"""Distillation: the losses' properties, the teachers, one step of each kind, the tool."""

import importlib.util
import itertools
import os
import subprocess
import sys

import pytest
import torch

from fastgdr.checkpoint import read_checkpoint, save_checkpoint
from fastgdr.config import load_config, save_config, to_dict
from fastgdr.engine.distiller import (
    TeacherEnsemble,
    build_distiller,
    build_feature_adapter,
    load_teacher,
    photometric_perturbation,
)
from fastgdr.errors import CheckpointError, ConfigError
from fastgdr.losses.distillation import (
    WeightedPoints,
    ensemble_confidence,
    feature_distillation_loss,
    local_prediction_points,
    naive_distillation_loss,
    ot_distillation_loss,
    ot_paired_feature_loss,
    region_prediction_points,
    sample_features,
    sinkhorn_divergence,
    sinkhorn_divergence_reference,
    sinkhorn_potentials_reference,
    transport_plan,
    transport_plan_reference,
)
from fastgdr.models import GDRNPoseNet
from fastgdr.models.backbones import BACKBONE_PRESETS, build_backbone
from fastgdr.models.fusion import FusedConvNeXtBlock

from conftest import REPO, TINY_TRAIN_OVERRIDES, kill_after_checkpoint

pytest.importorskip("geomloss")


def random_sets(batch=3, n=20, m=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = WeightedPoints(torch.rand(batch, n, 5, generator=g), torch.rand(batch, n, generator=g) + 0.1)
    teacher = WeightedPoints(torch.rand(batch, m, 5, generator=g), torch.rand(batch, m, generator=g) + 0.1)
    return student, teacher


# --- optimal transport ---------------------------------------------------------------------

@pytest.mark.parametrize("reach", [None, 0.5])
def test_ot_is_zero_for_identical_sets_and_positive_otherwise(reach):
    student, teacher = random_sets()
    same = sinkhorn_divergence(student, student, blur=0.05, reach=reach)
    assert same.abs().max() < 1e-5
    assert (sinkhorn_divergence(student, teacher, blur=0.05, reach=reach) > 1e-3).all()


@pytest.mark.parametrize("reach", [None, 0.5])
def test_ot_does_not_depend_on_point_order(reach):
    student, teacher = random_sets(n=20, m=20)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    shuffled = WeightedPoints(student.points[:, perm], student.masses[:, perm])
    a = sinkhorn_divergence(student, teacher, reach=reach)
    b = sinkhorn_divergence(shuffled, teacher, reach=reach)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_ot_of_two_diracs_is_half_the_squared_distance():
    x, y = torch.tensor([[[0.1, 0.2, 0.3, 0.4, 0.5]]]), torch.tensor([[[0.4, 0.0, 0.3, 0.9, 0.1]]])
    ones = torch.ones(1, 1)
    expected = 0.5 * (x - y).square().sum()
    for solver in (sinkhorn_divergence, sinkhorn_divergence_reference):
        value = solver(WeightedPoints(x, ones), WeightedPoints(y, ones), blur=0.05)
        assert value.item() == pytest.approx(expected.item(), rel=1e-3)


@pytest.mark.parametrize("reach", [None, 0.5])
def test_geomloss_matches_the_reference_solver(reach):
    student, teacher = random_sets(n=20, m=15)
    fast = sinkhorn_divergence(student, teacher, blur=0.1, scaling=0.95, reach=reach)
    reference = sinkhorn_divergence_reference(student, teacher, blur=0.1, reach=reach)
    torch.testing.assert_close(fast.double(), reference, rtol=0.03, atol=1e-4)


@pytest.mark.parametrize("reach", [None, 0.5])
def test_the_transport_plan_matches_the_reference_and_has_the_right_marginals(reach):
    student, teacher = random_sets(n=20, m=15)
    plan = transport_plan(student, teacher, blur=0.1, reach=reach, scaling=0.5, max_iterations=2000)
    reference = transport_plan_reference(student, teacher, blur=0.1, reach=reach)
    torch.testing.assert_close(plan, reference, rtol=1e-3, atol=1e-5)
    if reach is None:  # balanced: the plan's marginals are the normalized masses
        a = student.masses.double() / student.masses.sum(1, keepdim=True)
        torch.testing.assert_close(plan.sum(2), a, rtol=1e-4, atol=1e-7)
    else:  # KL-penalized marginals: a_i exp(−f_i / ρ)
        f, _ = sinkhorn_potentials_reference(student.points, student.masses, teacher.points, teacher.masses,
                                             0.1**2, reach**2)
        torch.testing.assert_close(plan.sum(2), student.masses.double() * (-f / reach**2).exp(), rtol=1e-3, atol=1e-6)


def test_adlps_small_blur_plan_is_the_assignment_of_nearby_points():
    points = torch.tensor([[[0.1, 0.1], [0.5, 0.2], [0.9, 0.8], [0.3, 0.7]]])
    perm = torch.tensor([2, 0, 3, 1])
    teacher = WeightedPoints(points[:, perm] + 0.002, torch.ones(1, 4))
    plan = transport_plan(WeightedPoints(points, torch.ones(1, 4)), teacher, blur=0.001, reach=0.5)
    assert (plan[0].argmax(1) == torch.argsort(perm)).all()  # each student point goes to the teacher point beside it
    assert (plan[0].max(1).values > 0.99 * plan[0].sum(1)).all()


@pytest.mark.parametrize("reach", [None, 0.5])
def test_ot_gives_finite_gradients_to_student_points_and_masses_with_different_set_sizes(reach):
    student, teacher = random_sets(n=30, m=12)
    points = student.points.clone().requires_grad_(True)
    masses = student.masses.clone().requires_grad_(True)
    loss = ot_distillation_loss(WeightedPoints(points, masses), teacher, reach=reach)
    loss.backward()
    for grad in (points.grad, masses.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_ot_moves_student_points_towards_the_teacher():
    student, teacher = random_sets(n=16, m=16)
    student = WeightedPoints(student.points, teacher.masses)  # same masses: only the points differ
    points = student.points.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([points], lr=20.0)  # gradients scale with the point masses (~1/16)
    start = ot_distillation_loss(WeightedPoints(points, student.masses), teacher).item()
    for _ in range(30):
        optimizer.zero_grad()
        ot_distillation_loss(WeightedPoints(points, student.masses), teacher).backward()
        optimizer.step()
    assert ot_distillation_loss(WeightedPoints(points, student.masses), teacher).item() < 0.25 * start


def test_masses_below_zero_still_get_gradient_and_unbalanced_ot_keeps_empty_student_sets():
    mask = torch.full((2, 1, 8, 8), -0.2, requires_grad=True)  # an untrained head predicts ~0 or below
    student = local_prediction_points(torch.rand(2, 3, 8, 8), mask, "pool", grid=4)
    assert student.masses.sum() == 0
    _, teacher = random_sets(batch=2, m=16)
    ot_distillation_loss(student, teacher, reach=0.5).backward()
    assert torch.isfinite(mask.grad).all() and mask.grad.abs().sum() > 0
    assert ot_distillation_loss(student, teacher, reach=None).item() == 0.0  # balanced OT cannot normalize it


def test_automatic_temperature_is_the_mean_visible_variance():
    xyz = torch.rand(4, 1, 3, 8, 8)
    mask = torch.ones(4, 1, 1, 8, 8)
    result = ensemble_confidence(xyz, mask)
    expected = torch.exp(-result.variance / result.variance.mean())
    torch.testing.assert_close(result.confidence, expected)


def test_ot_skips_rois_without_mass():
    student, teacher = random_sets(batch=2)
    teacher.masses[1] = 0.0
    expected = sinkhorn_divergence(WeightedPoints(student.points[:1], student.masses[:1]),
                                   WeightedPoints(teacher.points[:1], teacher.masses[:1]))
    torch.testing.assert_close(ot_distillation_loss(student, teacher), expected.mean())
    teacher.masses[0] = 0.0
    assert ot_distillation_loss(student, teacher).item() == 0.0


# --- local predictions as point sets ---------------------------------------------------------

def test_pooled_points_carry_mask_weighted_coordinates_and_mean_masses():
    xyz = torch.zeros(1, 3, 8, 8)
    xyz[:, :, :4, :4] = 0.25
    xyz[:, :, 0, 0] = 0.75  # the one cell of the first block with mask 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[:, :, 0, 0] = 1.0
    mask[:, :, 4:, 4:] = 0.5
    sets = local_prediction_points(xyz, mask, "pool", grid=2)
    assert sets.points.shape == (1, 4, 5) and sets.masses.shape == (1, 4)
    torch.testing.assert_close(sets.points[0, 0], torch.tensor([0.25, 0.25, 0.75, 0.75, 0.75]))
    torch.testing.assert_close(sets.masses[0], torch.tensor([1 / 16, 0.0, 0.0, 0.5]) / 4)
    assert sets.masses.sum().item() == pytest.approx(mask.mean().item())


def test_topk_keeps_the_most_visible_cells():
    mask = torch.rand(2, 1, 8, 8)
    xyz = torch.rand(2, 3, 8, 8)
    sets = local_prediction_points(xyz, mask, "topk", topk=5)
    assert sets.points.shape == (2, 5, 5)
    torch.testing.assert_close(sets.masses * 5, mask.flatten(1).topk(5).values)
    best = mask[0, 0].flatten().argmax()
    row, col = divmod(best.item(), 8)
    torch.testing.assert_close(sets.points[0, 0], torch.cat([torch.tensor([(col + 0.5) / 8, (row + 0.5) / 8]), xyz[0, :, row, col]]))


def test_region_sets_keep_the_heaviest_cells_of_each_region_at_image_positions():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 1, 8, 8, generator=g)
    region = torch.softmax(torch.randn(2, 5, 8, 8, generator=g), dim=1)
    coord_2d = torch.rand(2, 2, 8, 8, generator=g)
    xyz = torch.rand(2, 3, 8, 8, generator=g)
    sets = region_prediction_points(mask, region, coord_2d, topk=6)
    assert sets.points.shape == (2, 5, 6, 2) and sets.masses.shape == (2, 5, 6) and sets.locations.shape == (2, 5, 6, 2)
    weights = (mask * region).flatten(2)
    torch.testing.assert_close(sets.masses, weights.topk(6, dim=2).values)  # raw masses: unbalanced OT takes them as they are
    cell = weights[1, 3].argmax().item()
    row, col = divmod(cell, 8)
    torch.testing.assert_close(sets.points[1, 3, 0], coord_2d[1, :, row, col])  # ADLP: image-normalised 2-D
    torch.testing.assert_close(sets.locations[1, 3, 0], torch.tensor([(col + 0.5) / 8, (row + 0.5) / 8]))
    with_xyz = region_prediction_points(mask, region, coord_2d, xyz, topk=6)
    torch.testing.assert_close(with_xyz.points[1, 3, 0], torch.cat([coord_2d[1, :, row, col], xyz[1, :, row, col]]))
    crop = region_prediction_points(mask, region, None, topk=6)
    torch.testing.assert_close(crop.points, crop.locations)


def test_region_ot_is_one_problem_per_region_summed_and_zero_for_identical_predictions():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(3, 1, 8, 8, generator=g)
    coord_2d = torch.rand(3, 2, 8, 8, generator=g)
    student = region_prediction_points(mask, torch.softmax(torch.randn(3, 4, 8, 8, generator=g), 1), coord_2d, topk=5)
    teacher = region_prediction_points(mask, torch.softmax(torch.randn(3, 4, 8, 8, generator=g), 1), coord_2d, topk=5)
    loss = ot_distillation_loss(student, teacher, blur=0.001, reach=0.5)
    per_region = [sinkhorn_divergence(WeightedPoints(student.points[:, k], student.masses[:, k]),
                                      WeightedPoints(teacher.points[:, k], teacher.masses[:, k]), blur=0.001, reach=0.5)
                  for k in range(4)]
    # (geomloss starts its ε-scaling at the diameter of the whole batch: equal up to that)
    torch.testing.assert_close(loss, torch.stack(per_region).sum(0).mean(), rtol=1e-3, atol=1e-6)
    assert ot_distillation_loss(student, student, blur=0.001, reach=0.5).abs() < 1e-5
    assert loss > 1e-4


def test_the_ot_defaults_are_adlps():
    ot = load_config(None).kd.ot
    assert (ot.sampling, ot.blur, ot.reach, ot.scaling) == ("region", 0.001, 0.5, 0.5)
    assert load_config(None).kd.uncertainty.source == "ensemble"


def test_pooling_grid_must_divide_the_output():
    with pytest.raises(ValueError, match="must divide"):
        local_prediction_points(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64), "pool", grid=12)


# --- feature, naive and uncertainty terms ----------------------------------------------------

def test_feature_loss_standardises_per_sample_and_channel():
    teacher = torch.randn(2, 4, 8, 8)
    scaled = teacher * torch.tensor([2.0, 0.5, 3.0, 1.0]).view(1, 4, 1, 1) + 7.0
    assert feature_distillation_loss(scaled, teacher).item() < 1e-6
    assert feature_distillation_loss(torch.randn(2, 4, 8, 8), teacher).item() > 0.5
    with pytest.raises(ValueError, match="do not match"):
        feature_distillation_loss(torch.randn(2, 3, 8, 8), teacher)


def test_weighted_feature_loss_only_sees_weighted_cells():
    teacher = torch.randn(1, 4, 8, 8)
    student = teacher.clone()
    student[..., 4:, :] = torch.randn(1, 4, 4, 8)  # differs only in the bottom half
    weights = torch.zeros(1, 1, 8, 8)
    weights[..., :4, :] = 1.0
    top = feature_distillation_loss(student, teacher, weights)
    bottom = feature_distillation_loss(student, teacher, 1.0 - weights)
    assert bottom > top  # the standardisation couples the halves, but the differing half dominates


def test_naive_loss_known_values():
    xyz, mask = torch.full((1, 3, 4, 4), 0.5), torch.ones(1, 1, 4, 4)
    assert naive_distillation_loss(xyz, mask, xyz, mask).item() == 0.0
    shifted = xyz + 0.1
    assert naive_distillation_loss(shifted, mask, xyz, mask, "l1").item() == pytest.approx(0.1)
    assert naive_distillation_loss(shifted, mask, xyz, mask, "l2").item() == pytest.approx(0.01)
    assert naive_distillation_loss(xyz, mask * 0.5, xyz, mask, "l1", mask_weight=2.0).item() == pytest.approx(1.0)


def test_ensemble_confidence_drops_where_members_disagree():
    xyz = torch.rand(1, 3, 8, 8).expand(3, -1, -1, -1, -1).clone()
    xyz[1, :, :, 2, 3] += 0.2
    mask = torch.ones(3, 1, 1, 8, 8)
    result = ensemble_confidence(xyz, mask, temperature=0.01)
    assert result.confidence[0, 0, 2, 3] < 0.2
    assert (result.confidence[0, 0, 0] == 1.0).all()
    torch.testing.assert_close(result.xyz, xyz.mean(0))
    with pytest.raises(ValueError, match="at least 2"):
        ensemble_confidence(xyz[:1], mask[:1])


# --- UA-KD: features at the cells the OT plan pairs ---------------------------------------

def paired_sets(batch=2, n=12, channels=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    sets = WeightedPoints(torch.rand(batch, n, 2, generator=g), torch.rand(batch, n, generator=g) + 0.2)
    return sets, torch.randn(batch, n, channels, generator=g)


@pytest.mark.parametrize("reach", [None, 0.5])
def test_paired_feature_loss_is_zero_for_identical_teacher_and_student(reach):
    sets, features = paired_sets()
    assert ot_paired_feature_loss(sets, sets, features, features, blur=0.001, reach=reach).item() < 1e-8
    assert ot_paired_feature_loss(sets, sets, features, torch.randn_like(features), blur=0.001, reach=reach) > 0.1


@pytest.mark.parametrize("reach", [None, 0.5])
def test_paired_feature_loss_pairs_by_location_not_by_index(reach):
    sets, features = paired_sets()
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    teacher = WeightedPoints(sets.points[:, perm], sets.masses[:, perm])  # the same cells, listed in another order
    assert ot_paired_feature_loss(sets, teacher, features, features[:, perm], blur=0.001, reach=reach) < 1e-8
    assert ot_paired_feature_loss(sets, teacher, features, features, blur=0.001, reach=reach) > 0.1  # index pairing fails


def test_paired_feature_loss_does_not_depend_on_point_order_and_gives_finite_gradients():
    student, student_features = paired_sets(seed=1)
    teacher, teacher_features = paired_sets(n=9, seed=2)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(4))
    features = student_features.clone().requires_grad_(True)
    loss = ot_paired_feature_loss(student, teacher, features, teacher_features, blur=0.05, reach=0.5)
    shuffled = WeightedPoints(student.points[:, perm], student.masses[:, perm])
    again = ot_paired_feature_loss(shuffled, teacher, student_features[:, perm], teacher_features, blur=0.05, reach=0.5)
    torch.testing.assert_close(loss.detach(), again, rtol=1e-5, atol=1e-7)
    loss.backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_features_are_sampled_bilinearly_at_crop_locations():
    features = torch.arange(16.0).reshape(1, 1, 4, 4)
    centres = torch.tensor([[[0.125, 0.125], [0.875, 0.125], [0.375, 0.625], [0.25, 0.125]]])
    torch.testing.assert_close(sample_features(features, centres)[0, :, 0], torch.tensor([0.0, 3.0, 9.0, 0.5]))
    grouped = sample_features(features.expand(2, 3, 4, 4), torch.rand(2, 5, 7, 2))
    assert grouped.shape == (2, 5, 7, 3)


def test_photometric_perturbation_stays_in_range_and_changes_the_crop():
    images = torch.rand(2, 3, 16, 16)
    perturbed = photometric_perturbation(images, 0.1)
    assert perturbed.min() >= 0 and perturbed.max() <= 1
    assert not torch.equal(perturbed, images)


# --- adapters and teachers -------------------------------------------------------------------

def preset_channels():
    channels = {}
    for name in BACKBONE_PRESETS:
        if BACKBONE_PRESETS.get(name).source == "fastervit":
            if importlib.util.find_spec("fastervit") is None:
                continue
            channels[name] = build_backbone(name)[1].channels
        else:
            with torch.device("meta"):  # shapes only: no memory, no init cost
                channels[name] = build_backbone(name)[1].channels
    return channels


def test_adapters_build_for_every_preset_pair():
    channels = preset_channels()
    assert {"BM", "N", "P", "EB0", "R34"} <= set(channels)
    for student, teacher in itertools.product(channels, repeat=2):
        adapter = build_feature_adapter(channels[student], channels[teacher])
        out = adapter(torch.randn(1, channels[student], 8, 8))
        assert out.shape == (1, channels[teacher], 8, 8), (student, teacher)


def tiny_cfg(*extra):
    return load_config(REPO / "configs/p.yaml", [*TINY_TRAIN_OVERRIDES, "model.num_classes=3", *extra])


TEACHER_OVERRIDES = ["model.backbone.name=test_resnet", "model.geo_head.widths=[32,32,32,32,32,32,32]", "model.geo_head.gn_groups=[8,8,8,8,8,8,8]"]


@pytest.fixture(scope="module")
def teacher_checkpoints(tmp_path_factory):
    """Two tiny teachers (another backbone, wider head, RGB input) with embedded configs, and one bare state dict."""
    folder = tmp_path_factory.mktemp("teachers")
    cfg = tiny_cfg(*TEACHER_OVERRIDES, "model.input.channel_order=RGB")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(folder / f"teacher{seed}.pth", GDRNPoseNet.from_config(cfg.model), config=to_dict(cfg)))
    bare = folder / "bare.pth"
    torch.save({"model": read_checkpoint(paths[0])["model"]}, bare)
    return paths, bare


def student_batch(cfg, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    res = cfg.model.input_res
    out_res = res // 4
    return (
        torch.rand(batch, 3, res, res, generator=g),
        torch.randint(0, 3, (batch,), generator=g),
        torch.rand(batch, 2, out_res, out_res, generator=g),
        torch.rand(batch, 3, generator=g) * 0.1 + 0.05,
    )


POOL = ["kd.ot.sampling=pool", "kd.ot.grid=8", "kd.ot.blur=0.05", "kd.ot.reach=null"]  # the joint 5-D variant
KINDS = {
    "feature": ["kd.feature.weight=1"],
    "ot_adlp": ["kd.ot.weight=5"],
    "ot_adlp_uvxyz": ["kd.ot.weight=5", "kd.ot.region_points=uvxyz"],
    "ot_pool": ["kd.ot.weight=5", *POOL],
    "ot_topk_unbalanced": ["kd.ot.weight=5", "kd.ot.sampling=topk", "kd.ot.topk=64", "kd.ot.blur=0.05"],
    "naive": ["kd.naive.weight=1", "kd.naive.norm=l2"],
    "uncertainty_ensemble": ["kd.ot.weight=5", "kd.uncertainty.enabled=true", "kd.uncertainty.feature_weight=1"],
    "uncertainty_tta": ["kd.ot.weight=5", "kd.uncertainty.enabled=true", "kd.uncertainty.source=tta",
                        "kd.uncertainty.feature_weight=1", "kd.uncertainty.tta_samples=2"],
    "uncertainty_pool": ["kd.ot.weight=5", *POOL, "kd.uncertainty.enabled=true", "kd.uncertainty.feature_weight=1"],
    "bf16_teacher": ["kd.feature.weight=1", "kd.naive.weight=1", "kd.teacher_precision=bfloat16"],
}
EXPECTED_TERMS = {
    "feature": {"kd_feature"}, "ot_adlp": {"kd_ot"}, "ot_adlp_uvxyz": {"kd_ot"}, "ot_pool": {"kd_ot"},
    "ot_topk_unbalanced": {"kd_ot"}, "naive": {"kd_naive"}, "uncertainty_ensemble": {"kd_ot", "kd_ua_feature"},
    "uncertainty_tta": {"kd_ot", "kd_ua_feature"}, "uncertainty_pool": {"kd_ot", "kd_ua_feature"},
    "bf16_teacher": {"kd_feature", "kd_naive"},
}
ENSEMBLES = {"uncertainty_ensemble", "uncertainty_pool"}  # UA-KD's default: several teachers


@pytest.mark.parametrize("kind", list(KINDS))
def test_one_distillation_step_of_each_kind(kind, teacher_checkpoints):
    paths, _ = teacher_checkpoints
    teachers = ",".join(map(str, paths if kind in ENSEMBLES else paths[:1]))
    cfg = tiny_cfg(*KINDS[kind], f"kd.teachers=[{teachers}]")
    torch.manual_seed(0)
    student = GDRNPoseNet.from_config(cfg.model)
    distiller = build_distiller(cfg, student, torch.device("cpu"))
    images, classes, coords, extents = student_batch(cfg)
    losses = distiller(images, classes, student(images, classes, coords, extents), coords)
    assert set(losses) == EXPECTED_TERMS[kind]
    sum(losses.values()).backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    if distiller.adapter is not None:
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in distiller.adapter.parameters())
    teacher = distiller.teachers.models[0]
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_teacher_sees_the_crop_in_its_own_channel_order(teacher_checkpoints):
    paths, _ = teacher_checkpoints
    cfg = tiny_cfg("kd.feature.weight=1", f"kd.teachers=[{paths[0]}]")  # student BGR, teacher RGB
    model, teacher_cfg = load_teacher(paths[0])
    ensemble = TeacherEnsemble([model], [teacher_cfg], cfg.model, cfg.kd)
    images, classes, _, _ = student_batch(cfg)
    with torch.no_grad():
        expected = model.extract_features(images.flip(1))
    torch.testing.assert_close(ensemble(images, classes).features, expected)


def test_an_ensemble_of_teachers_gives_confidence(teacher_checkpoints):
    paths, _ = teacher_checkpoints
    cfg = tiny_cfg("kd.ot.weight=1", "kd.uncertainty.enabled=true", f"kd.teachers=[{paths[0]},{paths[1]}]")
    student = GDRNPoseNet.from_config(cfg.model)
    distiller = build_distiller(cfg, student, torch.device("cpu"))
    images, classes, _, _ = student_batch(cfg)
    dense = distiller.teachers(images, classes).dense
    assert dense.confidence.min() < 1.0  # two differently initialised teachers disagree somewhere
    with torch.no_grad():
        members = [m.dense_predictions(m.extract_features(images.flip(1)), classes) for m in distiller.teachers.models]
    torch.testing.assert_close(dense.xyz, (members[0][2] + members[1][2]) / 2)


def test_with_one_teacher_the_clean_crop_gives_the_targets_and_copies_the_confidence(teacher_checkpoints):
    paths, _ = teacher_checkpoints
    cfg = tiny_cfg("kd.ot.weight=1", "kd.uncertainty.enabled=true", "kd.uncertainty.source=tta",
                   "kd.uncertainty.feature_weight=1", "kd.uncertainty.tta_samples=3", f"kd.teachers=[{paths[0]}]")
    distiller = build_distiller(cfg, GDRNPoseNet.from_config(cfg.model), torch.device("cpu"))
    model = distiller.teachers.models[0]
    images, classes, _, _ = student_batch(cfg)
    outputs = distiller.teachers(images, classes)
    with torch.no_grad():
        features = model.extract_features(images.flip(1))
        mask, _, xyz, _ = model.dense_predictions(features, classes)
    torch.testing.assert_close(outputs.features, features)
    torch.testing.assert_close(outputs.dense.xyz, xyz)
    torch.testing.assert_close(outputs.dense.mask, mask)
    assert outputs.dense.confidence.min() < 1.0
    assert not outputs.features.requires_grad and not outputs.dense.xyz.requires_grad


def test_the_embedded_config_wins_over_the_fallback(teacher_checkpoints, tmp_path):
    paths, _ = teacher_checkpoints
    fallback = save_config(tiny_cfg(), tmp_path / "student.yaml")
    _, cfg = load_teacher(paths[0], fallback)
    assert cfg.input.channel_order == "RGB" and cfg.backbone.name == "test_resnet"


def test_a_fallback_config_takes_the_students_class_count(teacher_checkpoints, tmp_path):
    paths, bare = teacher_checkpoints
    teacher_yaml = save_config(tiny_cfg(*TEACHER_OVERRIDES, "model.num_classes=1"), tmp_path / "teacher.yaml")
    _, cfg = load_teacher(bare, teacher_yaml, num_classes=3)
    assert cfg.num_classes == 3


def test_a_teacher_that_does_not_match_its_config_is_refused(teacher_checkpoints, tmp_path):
    paths, bare = teacher_checkpoints
    with pytest.raises(CheckpointError, match="carries no config"):
        load_teacher(bare)
    wrong = save_config(tiny_cfg(), tmp_path / "wrong.yaml")  # the student's narrower head, not the teacher's
    with pytest.raises(CheckpointError) as err:
        load_teacher(bare, wrong, num_classes=3)
    message = str(err.value)
    assert f"teacher {bare}" in message and "do not match" in message and str(wrong) in message
    assert "geo_head_net" in message  # names the mismatching keys


def test_distillation_without_a_teacher_or_with_another_class_count_is_refused(teacher_checkpoints):
    paths, _ = teacher_checkpoints
    with pytest.raises(ConfigError, match="kd.teachers is empty"):
        build_distiller(tiny_cfg("kd.ot.weight=1"), GDRNPoseNet.from_config(tiny_cfg().model), torch.device("cpu"))
    cfg = tiny_cfg("kd.ot.weight=1", "model.num_classes=5", f"kd.teachers=[{paths[0]}]")
    with pytest.raises(ConfigError, match="predicts 3 classes, the student 5"):
        build_distiller(cfg, GDRNPoseNet.from_config(cfg.model), torch.device("cpu"))
    cfg = tiny_cfg("kd.ot.weight=1", "kd.ot.sampling=pool", "kd.ot.grid=12", f"kd.teachers=[{paths[0]}]")
    with pytest.raises(ConfigError, match="must divide the 32×32 output"):
        build_distiller(cfg, GDRNPoseNet.from_config(cfg.model), torch.device("cpu"))


@pytest.mark.parametrize("override, message", [
    ("kd.uncertainty.enabled=true", "needs ot.weight > 0"),
    ("kd.ot.weight=-1", "weight must be >= 0"),
    ("kd.feature.adapter_lr=0", "adapter_lr > 0"),
])
def test_bad_kd_settings_are_refused_on_load(override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(override)


def test_uncertainty_needs_an_ensemble_unless_the_single_teacher_fallback_is_asked_for(teacher_checkpoints):
    paths, _ = teacher_checkpoints
    one = tiny_cfg("kd.ot.weight=1", "kd.uncertainty.enabled=true", f"kd.teachers=[{paths[0]}]")
    with pytest.raises(ConfigError, match="needs at least two teachers .* set kd.uncertainty.source=tta"):
        build_distiller(one, GDRNPoseNet.from_config(one.model), torch.device("cpu"))
    two = tiny_cfg("kd.ot.weight=1", "kd.uncertainty.enabled=true", "kd.uncertainty.source=tta",
                   f"kd.teachers=[{paths[0]},{paths[1]}]")
    with pytest.raises(ConfigError, match="single-teacher fallback, but 2 teachers"):
        build_distiller(two, GDRNPoseNet.from_config(two.model), torch.device("cpu"))


def test_ua_feature_term_compares_features_at_the_cells_the_plan_pairs(teacher_checkpoints, monkeypatch):
    """The feature term gets the adapted student features and the teacher's, sampled at the
    cells of the two prediction sets the OT term compares."""
    import fastgdr.engine.distiller as distiller_module

    paths, _ = teacher_checkpoints
    cfg = tiny_cfg("kd.ot.weight=1", "kd.uncertainty.enabled=true", "kd.uncertainty.feature_weight=1",
                   f"kd.teachers=[{paths[0]},{paths[1]}]")
    student = GDRNPoseNet.from_config(cfg.model)
    distiller = build_distiller(cfg, student, torch.device("cpu"))
    seen = {}

    def spy(student_set, teacher_set, student_features, teacher_features, *args):
        seen.update(student_set=student_set, teacher_set=teacher_set, features=(student_features, teacher_features))
        return student_features.sum() * 0.0

    monkeypatch.setattr(distiller_module, "ot_paired_feature_loss", spy)
    images, classes, coords, extents = student_batch(cfg)
    out = student(images, classes, coords, extents)
    distiller(images, classes, out, coords)
    student_set, teacher_set = seen["student_set"], seen["teacher_set"]
    regions = cfg.model.num_regions
    assert student_set.points.shape == (4, regions, cfg.kd.ot.region_topk, 2)
    with torch.no_grad():
        adapted = distiller.adapter(out.features)
        teacher = distiller.teachers(images, classes)
    expected = sample_features(distiller_module.standardize_spatial(adapted), student_set.locations)
    torch.testing.assert_close(seen["features"][0], expected)
    expected_teacher = sample_features(distiller_module.standardize_spatial(teacher.features), teacher_set.locations)
    torch.testing.assert_close(seen["features"][1], expected_teacher)
    # the teacher's masses carry the ensemble's confidence: mask × region probability × confidence
    dense = teacher.dense
    weights = (dense.mask.clamp(0, 1) * dense.confidence * dense.region).flatten(2)
    torch.testing.assert_close(teacher_set.masses, weights.topk(cfg.kd.ot.region_topk, dim=2).values)


def test_adlp_sets_give_gradient_to_masks_and_regions_and_uvxyz_to_coordinates(teacher_checkpoints):
    paths, _ = teacher_checkpoints
    for points, detach in (("uv", False), ("uvxyz", False), ("uv", True)):
        cfg = tiny_cfg("kd.ot.weight=5", f"kd.ot.region_points={points}", f"kd.ot.detach_masses={str(detach).lower()}",
                       f"kd.teachers=[{paths[0]}]")
        torch.manual_seed(0)
        student = GDRNPoseNet.from_config(cfg.model)
        distiller = build_distiller(cfg, student, torch.device("cpu"))
        images, classes, coords, extents = student_batch(cfg)
        out = student(images, classes, coords, extents)
        for tensor in (out.visible_mask, out.region, out.xyz):
            tensor.retain_grad()
        loss = distiller(images, classes, out, coords)["kd_ot"]
        if detach and points == "uv":
            assert not loss.requires_grad  # nothing of the student's left in 2-D sets with detached masses
            continue
        loss.backward()
        moved = lambda t: t.grad is not None and t.grad.abs().sum() > 0
        assert moved(out.visible_mask) and moved(out.region)
        assert moved(out.xyz) == (points == "uvxyz")


def test_the_students_masks_get_gradient_from_ot_unless_detached(teacher_checkpoints):
    paths, _ = teacher_checkpoints
    for detach in (False, True):
        cfg = tiny_cfg("kd.ot.weight=5", *POOL, f"kd.ot.detach_masses={str(detach).lower()}",
                       f"kd.teachers=[{paths[0]}]")
        torch.manual_seed(0)
        student = GDRNPoseNet.from_config(cfg.model)
        distiller = build_distiller(cfg, student, torch.device("cpu"))
        images, classes, coords, extents = student_batch(cfg)
        out = student(images, classes, coords, extents)
        out.visible_mask.retain_grad()
        out.xyz.retain_grad()
        distiller(images, classes, out)["kd_ot"].backward()
        assert out.xyz.grad.abs().sum() > 0
        mask_grad = out.visible_mask.grad
        assert (mask_grad is not None and mask_grad.abs().sum() > 0) != detach


# --- the tool --------------------------------------------------------------------------------

def run_distill(*args):
    cmd = [sys.executable, str(REPO / "tools/distill.py"), "--config", str(REPO / "configs/p.yaml"),
           "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_distill_tool_trains_logs_each_term_and_saves_the_student_alone(tiny_dataset, teacher_checkpoints, tmp_path):
    paths, _ = teacher_checkpoints
    out = tmp_path / "kd"
    args = ["--teacher", str(paths[0]), "--data", str(tiny_dataset), "--out", str(out), *TINY_TRAIN_OVERRIDES,
            "train.iterations=2", "kd.feature.weight=1", "kd.ot.weight=5"]
    result = run_distill(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"kd_feature", "kd_ot", "loss_coor_x", "loss"} <= set(header)
    final = read_checkpoint(out / "model_final.pth")
    assert not any("adapter" in key for key in final["model"])
    student = GDRNPoseNet.from_config(tiny_cfg().model)
    assert set(final["model"]) == set(student.state_dict())
    last = read_checkpoint(out / "last_checkpoint.pth")
    assert "adapter.weight" in last["distiller"]
    assert final["distillation"]["teachers"] == [str(paths[0])]  # a record ...
    assert final["config"]["kd"]["feature"]["weight"] == 0  # ... but fine-tuning its config distils nothing


def test_distillation_resumes_after_a_kill_like_an_uninterrupted_run(tiny_dataset, teacher_checkpoints, tmp_path):
    paths, _ = teacher_checkpoints
    common = ["--teacher", str(paths[0]), "--data", str(tiny_dataset), *TINY_TRAIN_OVERRIDES, "train.iterations=6",
              "train.checkpoint_period=2", "kd.feature.weight=1", "kd.feature.adapter_lr=1e-3",
              "kd.ot.weight=5"]
    full = run_distill("--out", str(tmp_path / "full"), *common)
    assert full.returncode == 0, full.stderr[-3000:]
    cmd = [sys.executable, str(REPO / "tools/distill.py"), "--config", str(REPO / "configs/p.yaml"), "--no-progress",
           "--out", str(tmp_path / "killed"), *common]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert 2 <= kill_after_checkpoint(proc, tmp_path / "killed" / "last_checkpoint.pth", 2) < 6
    resumed = run_distill("--out", str(tmp_path / "killed"), *common, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("model_final.pth", "last_checkpoint.pth"):
        a, b = (read_checkpoint(tmp_path / run / name) for run in ("full", "killed"))
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), key
    adapters = [read_checkpoint(tmp_path / run / "last_checkpoint.pth")["distiller"] for run in ("full", "killed")]
    assert torch.equal(adapters[0]["adapter.weight"], adapters[1]["adapter.weight"])


def test_distillation_with_two_gloo_processes(tiny_dataset, teacher_checkpoints, tmp_path):
    paths, _ = teacher_checkpoints
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(REPO / "tools/distill.py"),
           "--config", str(REPO / "configs/p.yaml"), "--teacher", str(paths[0]), "--data", str(tiny_dataset),
           "--out", str(tmp_path / "ddp"), "--no-progress", *TINY_TRAIN_OVERRIDES, "train.iterations=2",
           "kd.feature.weight=1", "kd.ot.weight=5"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_checkpoint(tmp_path / "ddp" / "model_final.pth")["iteration"] == 2


def test_distill_tool_needs_a_term_and_has_examples(tiny_dataset, teacher_checkpoints, tmp_path):
    paths, _ = teacher_checkpoints
    result = run_distill("--teacher", str(paths[0]), "--data", str(tiny_dataset), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "no distillation term is on" in result.stderr
    assert "Traceback" not in result.stderr
    help_text = run_distill("--help").stdout
    assert "Examples:" in help_text and "kd.ot.weight" in help_text


def test_a_teacher_trained_from_an_imagenet_file_loads_without_that_file(teacher_checkpoints, tmp_path):
    paths, _ = teacher_checkpoints
    state = read_checkpoint(paths[0])
    state["config"]["model"]["backbone"]["pretrained"] = "/elsewhere/imagenet.pth"  # gone on this machine
    moved = tmp_path / "moved.pth"
    torch.save(state, moved)
    model, _ = load_teacher(moved, fuse=False)
    assert model.state_dict().keys() == state["model"].keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key


def test_teachers_run_fused_convnext_blocks(tmp_path):
    cfg = tiny_cfg()  # a ConvNeXt backbone
    path = save_checkpoint(tmp_path / "convnext.pth", GDRNPoseNet.from_config(cfg.model), config=to_dict(cfg))
    fused, _ = load_teacher(path)
    plain, _ = load_teacher(path, fuse=False)
    assert any(isinstance(m, FusedConvNeXtBlock) for m in fused.modules())
    assert not any(isinstance(m, FusedConvNeXtBlock) for m in plain.modules())
    crops = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fused.extract_features(crops), plain.extract_features(crops), rtol=1e-4, atol=1e-4)
