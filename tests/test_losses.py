"""Tests for fastgdr.losses (GDRNPP's training losses)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from fastgdr.geometry import (
    egocentric_to_allocentric,
    matrix_to_rot6d,
    project_points,
    rotation_angle_between,
    site_to_translation,
    translation_to_site,
)
from fastgdr.losses import (
    LossWeights,
    GDRNTargets,
    allocentric_rotation_loss,
    closest_symmetric_rotation,
    gdrn_losses,
    point_matching_rotation_loss,
    region_loss,
    region_loss_constant,
    total_loss,
)
from fastgdr.losses.gdrn import teacher_forced_pnp_inputs
from fastgdr.models import PoseNetOutput, decode_pose

F64 = torch.float64
B, RES, REGIONS, POINTS = 3, 64, 8, 50
ALL_KEYS = {
    "loss_coor_x",
    "loss_coor_y",
    "loss_coor_z",
    "loss_mask",
    "loss_mask_full",
    "loss_region",
    "loss_PM_R",
    "loss_centroid",
    "loss_z",
}


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    """n random rotations [n, 3, 3] (float64) via QR with a sign fix."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen, dtype=F64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    return q * torch.det(q)[..., None, None]


def rot_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=F64)


def make_targets(gen: torch.Generator) -> GDRNTargets:
    """A synthetic batch: random poses in front of the camera, box masks, random labels."""
    rot = random_rotations(B, gen)
    t = torch.rand(B, 3, generator=gen, dtype=F64)
    t = torch.stack((0.2 * t[:, 0] - 0.1, 0.2 * t[:, 1] - 0.1, 0.5 + 0.5 * t[:, 2]), dim=-1)
    K = torch.tensor([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]], dtype=F64)
    K = K.expand(B, 3, 3).clone()
    centers = project_points(t[:, None], K)[:, 0]
    centers = centers + 10.0 * torch.rand(B, 2, generator=gen, dtype=F64) - 5.0
    whs = 50.0 + 100.0 * torch.rand(B, 2, generator=gen, dtype=F64)
    ratios = RES / (1.5 * whs.max(dim=1).values)
    site = translation_to_site(t, centers, whs, ratios, K)

    amodal = torch.zeros(B, RES, RES, dtype=F64)
    amodal[:, 10:50, 12:54] = 1.0
    mask_xyz = amodal.clone()
    mask_xyz[0, 10:30] = 0.0  # the first ROI is half occluded
    visible = mask_xyz.clone()
    visible[1, :, 40:] = 0.0  # the second one is cut by the truncation augmentation
    labels = torch.randint(1, REGIONS + 1, (B, RES, RES), generator=gen) * amodal.long()
    xyz = torch.rand(B, 3, RES, RES, generator=gen, dtype=F64) * amodal[:, None]
    points = 0.05 * torch.randn(B, POINTS, 3, generator=gen, dtype=F64)
    sym_rots = torch.eye(3, dtype=F64).expand(B, 2, 3, 3).clone()
    return GDRNTargets(
        xyz=xyz,
        mask_visible=visible,
        mask_xyz=mask_xyz,
        mask_amodal=amodal,
        region=labels,
        rot=rot,
        site=site,
        roi_centers=centers,
        roi_whs=whs,
        resize_ratios=ratios,
        K=K,
        model_points=points,
        sym_rots=sym_rots,
    )


def rot6d_for(rot_ego: torch.Tensor, site: torch.Tensor, targets: GDRNTargets) -> torch.Tensor:
    """The rot6d output that decodes to ``rot_ego`` given the predicted ``site``."""
    t = site_to_translation(
        site, targets.roi_centers, targets.roi_whs, targets.resize_ratios, targets.K
    )
    return matrix_to_rot6d(egocentric_to_allocentric(rot_ego, t))


def perfect_output(targets: GDRNTargets) -> PoseNetOutput:
    """Outputs that match every target."""
    region = 50.0 * torch.nn.functional.one_hot(targets.region, REGIONS + 1).permute(0, 3, 1, 2)
    return PoseNetOutput(
        visible_mask=targets.mask_visible[:, None].clone(),
        amodal_mask=targets.mask_amodal[:, None].clone(),
        xyz=targets.xyz.clone(),
        region=region.to(F64),
        rot6d=rot6d_for(targets.rot, targets.site, targets),
        site=targets.site.clone(),
        features=torch.zeros(B, 8, 2, 2, dtype=F64),
    )


def test_perfect_prediction_gives_zero(gen):
    targets = make_targets(gen)
    losses = gdrn_losses(perfect_output(targets), targets, LossWeights(rot=1.0))
    assert set(losses) == ALL_KEYS | {"loss_rot"}
    for key, value in losses.items():
        assert value.shape == ()
        assert value.item() == pytest.approx(0.0, abs=1e-9), key


def gdrnpp_region_loss(logits, region_gt, mask):
    """GDRNPP's formula, as it is written: logits and labels multiplied by the mask."""
    target = region_gt * mask.to(region_gt.dtype)
    ce = torch.nn.functional.cross_entropy(logits * mask[:, None], target, reduction="sum")
    return ce / mask.sum().clamp(min=1.0)


def test_region_loss_is_gdrnpp_minus_a_constant_with_the_same_gradient(gen):
    targets = make_targets(gen)
    logits = torch.randn(B, REGIONS + 1, RES, RES, generator=gen, dtype=F64, requires_grad=True)
    ours = region_loss(logits, targets.region, targets.mask_xyz)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    reference = gdrnpp_region_loss(logits, targets.region, targets.mask_xyz)
    (grad_reference,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(ours + region_loss_constant(targets.mask_xyz, REGIONS), reference)
    torch.testing.assert_close(grad_ours, grad_reference)


def test_region_loss_zero_with_full_visible_mask(gen):
    labels = torch.randint(0, REGIONS + 1, (B, RES, RES), generator=gen)
    logits = 50.0 * torch.nn.functional.one_hot(labels, REGIONS + 1).permute(0, 3, 1, 2).to(F64)
    loss = region_loss(logits, labels, torch.ones(B, RES, RES, dtype=F64))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_region_loss_known_value_uniform_logits(gen):
    targets = make_targets(gen)
    logits = torch.zeros(B, REGIONS + 1, RES, RES, dtype=F64)
    # Uniform logits: every supervised pixel costs log(R + 1); the loss is their mean.
    loss = region_loss(logits, targets.region, targets.mask_xyz)
    assert loss.item() == pytest.approx(math.log(REGIONS + 1))


def test_coordinate_loss_known_value(gen):
    targets = make_targets(gen)
    out = perfect_output(targets)
    outside = (1.0 - targets.mask_xyz)[:, None]
    # 0.1 inside the untruncated visible mask, arbitrary garbage outside it.
    out.xyz = targets.xyz + 0.1 + 7.0 * outside
    losses = gdrn_losses(out, targets)
    for axis in "xyz":
        assert losses[f"loss_coor_{axis}"].item() == pytest.approx(0.1, rel=1e-9)


def test_coordinates_and_regions_use_the_mask_before_truncation(gen):
    # GDRNPP supervises coordinates and regions on the "visib" mask, the mask loss on "trunc".
    targets = make_targets(gen)
    cut = (targets.mask_xyz - targets.mask_visible)[:, None]
    assert cut.sum() > 0
    out = perfect_output(targets)
    out.xyz = targets.xyz + 0.5 * cut
    assert gdrn_losses(out, targets)["loss_coor_x"].item() == pytest.approx(0.5 * cut.sum().item() / targets.mask_xyz.sum().item())
    out = perfect_output(targets)
    out.region = out.region * (1.0 - cut)
    assert gdrn_losses(out, targets)["loss_region"].item() > 0.0
    assert gdrn_losses(out, targets)["loss_mask"].item() == 0.0


def test_coordinate_loss_empty_mask_divides_by_one(gen):
    targets = make_targets(gen)
    targets.mask_xyz = torch.zeros_like(targets.mask_xyz)
    out = perfect_output(targets)
    out.xyz = targets.xyz + 0.3
    losses = gdrn_losses(out, targets)
    assert losses["loss_coor_x"].item() == 0.0
    assert losses["loss_region"].item() == 0.0


def test_mask_site_losses_known_values(gen):
    targets = make_targets(gen)
    out = perfect_output(targets)
    out.visible_mask = out.visible_mask + 0.25
    out.amodal_mask = out.amodal_mask - 0.5
    out.site = targets.site + torch.tensor([0.1, -0.2, 0.3], dtype=F64)
    losses = gdrn_losses(out, targets)
    assert losses["loss_mask"].item() == pytest.approx(0.25)
    assert losses["loss_mask_full"].item() == pytest.approx(0.5)
    assert losses["loss_centroid"].item() == pytest.approx(0.15)
    assert losses["loss_z"].item() == pytest.approx(0.3)


def test_pm_loss_closed_form():
    # One point on the x axis, GT identity, prediction rotated by θ about z:
    # R X − X = (cos θ − 1, sin θ, 0) → 3 · mean|·| = (1 − cos θ) + sin θ.
    theta = 0.3
    points = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=F64)
    eye = torch.eye(3, dtype=F64)[None]
    loss = point_matching_rotation_loss(rot_z(theta)[None], eye, points, eye[:, None])
    assert loss.item() == pytest.approx(1.0 - math.cos(theta) + math.sin(theta))


def test_pm_loss_uses_predicted_translation_decoding(gen):
    targets = make_targets(gen)
    out = perfect_output(targets)
    R_pred = random_rotations(B, gen)
    out.rot6d = rot6d_for(R_pred, out.site, targets)
    loss = gdrn_losses(out, targets)["loss_PM_R"]
    # Reference: per-ROI loop on the decoded egocentric rotation.
    R_dec, _ = decode_pose(
        out.rot6d, out.site, targets.roi_centers, targets.roi_whs, targets.resize_ratios, targets.K
    )
    torch.testing.assert_close(R_dec, R_pred)
    points = targets.model_points
    per_roi = [
        (points[b] @ R_pred[b].T - points[b] @ targets.rot[b].T).abs().mean() for b in range(B)
    ]
    torch.testing.assert_close(loss, 3.0 * torch.stack(per_roi).mean())


def test_pm_loss_symmetry(gen):
    targets = make_targets(gen)
    flip = rot_z(math.pi)
    sym_rots = torch.stack((torch.eye(3, dtype=F64), flip)).expand(B, 2, 3, 3)
    declared = replace(targets, sym_rots=sym_rots)
    out = perfect_output(targets)
    out.rot6d = rot6d_for(targets.rot @ flip, out.site, targets)
    assert gdrn_losses(out, declared)["loss_PM_R"].item() == pytest.approx(0.0, abs=1e-9)
    # Undeclared symmetry (identities only): the flipped prediction is penalized.
    assert gdrn_losses(out, targets)["loss_PM_R"].item() > 0.01


def test_rotation_loss_closed_form():
    # On the optical axis allocentric = egocentric; GT identity, prediction θ about z:
    # Rz(θ) − I has |cos θ − 1| twice and |sin θ| twice among its 9 entries.
    theta = 0.4
    eye = torch.eye(3, dtype=F64)[None]
    t = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)
    loss = allocentric_rotation_loss(matrix_to_rot6d(rot_z(theta)[None]), eye, t, eye[:, None])
    assert loss.item() == pytest.approx((2 * (1 - math.cos(theta)) + 2 * math.sin(theta)) / 9)


def test_rotation_loss_matches_loop_and_honours_symmetry(gen):
    targets = make_targets(gen)
    t_gt = site_to_translation(targets.site, targets.roi_centers, targets.roi_whs, targets.resize_ratios, targets.K)
    allo = egocentric_to_allocentric(targets.rot, t_gt)
    eye = torch.eye(3, dtype=F64).expand(B, 1, 3, 3)
    turned = allo @ rot_z(0.4)
    loss = allocentric_rotation_loss(matrix_to_rot6d(turned), targets.rot, t_gt, eye)
    torch.testing.assert_close(loss, torch.stack([(turned[b] - allo[b]).abs().mean() for b in range(B)]).mean())
    # Declaring the turn a symmetry makes the prediction correct.
    sym = torch.stack((torch.eye(3, dtype=F64), rot_z(0.4))).expand(B, 2, 3, 3)
    assert allocentric_rotation_loss(matrix_to_rot6d(turned), targets.rot, t_gt, sym).item() == pytest.approx(0.0, abs=1e-9)


def test_closest_symmetric_rotation_matches_loop(gen):
    S = 5
    R_pred, R_gt = random_rotations(B, gen), random_rotations(B, gen)
    sym = random_rotations(B * S, gen).view(B, S, 3, 3)
    sym[:, 0] = torch.eye(3, dtype=F64)
    closest = closest_symmetric_rotation(R_pred, R_gt, sym)
    for b in range(B):
        angles = [rotation_angle_between(R_pred[b], R_gt[b] @ sym[b, k]) for k in range(S)]
        best = int(torch.stack(angles).argmin())
        torch.testing.assert_close(closest[b], R_gt[b] @ sym[b, best])


def test_closest_symmetric_rotation_no_gradient_through_argmin(gen):
    R_pred = random_rotations(B, gen).requires_grad_()
    R_gt = random_rotations(B, gen)
    sym = torch.eye(3, dtype=F64).expand(B, 3, 3, 3)
    assert not closest_symmetric_rotation(R_pred, R_gt, sym).requires_grad


def test_gradients_finite_for_every_output(gen):
    targets = make_targets(gen)
    targets = GDRNTargets(
        **{k: (v.float() if v.is_floating_point() else v) for k, v in vars(targets).items()}
    )
    out = PoseNetOutput(
        visible_mask=torch.randn(B, 1, RES, RES, generator=gen),
        amodal_mask=torch.randn(B, 1, RES, RES, generator=gen),
        xyz=torch.rand(B, 3, RES, RES, generator=gen),
        region=torch.randn(B, REGIONS + 1, RES, RES, generator=gen),
        rot6d=torch.randn(B, 6, generator=gen),
        site=targets.site + 0.1 * torch.randn(B, 3, generator=gen),
        features=torch.zeros(B, 8, 2, 2),
    )
    inputs = [out.visible_mask, out.amodal_mask, out.xyz, out.region, out.rot6d, out.site]
    for tensor in inputs:
        tensor.requires_grad_()
    total = total_loss(gdrn_losses(out, targets, LossWeights(rot=1.0)))
    assert torch.isfinite(total)
    total.backward()
    for tensor in inputs:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0


def test_weights_scale_and_remove_terms(gen):
    targets = make_targets(gen)
    out = perfect_output(targets)
    out.xyz = out.xyz + 0.1
    out.site = out.site + 0.2
    base = gdrn_losses(out, targets)
    weights = LossWeights(xyz=0.0, pm=0.0, mask_amodal=0.0, z=2.0)
    losses = gdrn_losses(out, targets, weights)
    assert set(losses) == ALL_KEYS - {
        "loss_coor_x",
        "loss_coor_y",
        "loss_coor_z",
        "loss_PM_R",
        "loss_mask_full",
    }
    torch.testing.assert_close(losses["loss_z"], 2.0 * base["loss_z"])
    torch.testing.assert_close(losses["loss_centroid"], base["loss_centroid"])


def test_total_loss_is_sum(gen):
    targets = make_targets(gen)
    losses = gdrn_losses(perfect_output(targets), targets)
    torch.testing.assert_close(total_loss(losses), sum(losses.values()))
    with pytest.raises(ValueError, match="every loss weight is 0"):
        total_loss({})


def test_shape_mismatch_names_field(gen):
    targets = make_targets(gen)
    bad = replace(targets, mask_visible=targets.mask_visible[:, None])
    expected = r"GDRNTargets\.mask_visible must have shape \[3, 64, 64\]"
    with pytest.raises(ValueError, match=expected):
        gdrn_losses(perfect_output(targets), bad)
    with pytest.raises(ValueError, match="region must be int64"):
        gdrn_losses(perfect_output(targets), replace(targets, region=targets.region.int()))


def test_teacher_forced_pnp_inputs_are_the_ground_truth_on_the_object(gen):
    targets = make_targets(gen)
    out = perfect_output(targets)
    out.xyz = torch.rand(B, 3, RES, RES, generator=gen, dtype=F64, requires_grad=True)
    out.region = torch.randn(B, REGIONS + 1, RES, RES, generator=gen, dtype=F64, requires_grad=True)
    xyz, prob = teacher_forced_pnp_inputs(out, targets)
    on = targets.mask_xyz.bool()
    torch.testing.assert_close(xyz.permute(0, 2, 3, 1)[on], targets.xyz.permute(0, 2, 3, 1)[on])
    torch.testing.assert_close(xyz.permute(0, 2, 3, 1)[~on], out.xyz.detach().permute(0, 2, 3, 1)[~on])
    assert torch.equal(prob.argmax(1)[on] + 1, targets.region[on]) and torch.allclose(prob.sum(1), torch.ones(()).double())
    assert not xyz.requires_grad and not prob.requires_grad  # the head gets no gradient from this pass
