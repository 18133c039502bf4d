"""The BOP 2019 6D-localization evaluation (AR = mean of AR_VSD, AR_MSSD, AR_MSPD), plus ADD(-S).

The protocol, as the BOP toolkit's ``eval_bop19_pose.py`` implements it:

1. **Targets** (``test_targets_bop19.json``): (scene, image, object, ``inst_count``). Only
   these are evaluated; estimates for other images or objects are ignored.
2. **Estimates used**: per target, the estimates of (scene, image, object) sorted by score,
   highest first (ties keep their order in the input), and only the top ``inst_count``
   kept. Missing estimates are allowed and count as misses.
3. **Valid GTs**: the ``inst_count`` most visible GT instances of the object in the image
   (by ``visib_fract`` from scene_gt_info.json, highest first; ties go to the instance
   listed first in scene_gt.json). Only they can be matched, and only they are counted.
   Errors are computed against them only: an error against a GT that cannot be matched
   has no effect on the scores.
4. **Matching**, per (image, object), per error type and per threshold independently:
   estimates in descending score order; each takes the not yet matched valid GT with the
   smallest error (ties: the GT listed first in scene_gt.json), and the match counts only
   if that error is **strictly** below the threshold.
5. **Recall** = matched valid GTs / valid GTs, pooled over the whole dataset (not a mean
   over objects or scenes). AR_X is the mean of the recalls of X's thresholds.

Thresholds: VSD τ ∈ {0.05, …, 0.5}·diameter × θ ∈ {0.05, …, 0.5} (100 recalls, δ = the
card's ``vsd_delta_mm``, 15 mm without a card); MSSD θ·diameter, θ ∈ {0.05, …, 0.5};
MSPD {5, …, 50} px × width/640 (the error is multiplied by 640/width); ADD(-S) ("ad":
ADI for the dataset's ``symmetric_obj_ids``, ADD otherwise) θ·diameter, θ ∈ {0.02,
0.05, 0.10}. Gating as in the toolkit: VSD is 1 when the image projections of the two
bounding spheres (radius diameter/2) do not overlap; MSSD and ADD(-S) are ∞ when
‖t_e − t_g‖ ≥ diameter; MSPD is not gated. Points, diameters and renders all come from
``models_eval``.

Scores (:attr:`EvalResult.scores`):

* ``bop19_average_recall`` (when VSD, MSSD and MSPD are all evaluated),
  ``bop19_average_recall_{vsd,mssd,mspd}``, ``bop19_average_time_per_image`` (mean over
  the images that have estimates of their per-image time; −1 when any time is negative
  or there are no estimates) — the BOP keys;
* with "ad": ``add_s_recall_0.02``, ``add_s_recall_0.05``, ``add_s_recall_0.10`` (recall
  at θ·diameter), and ``add_s_mean_rotation_error_deg`` / ``add_s_mean_translation_error_mm``:
  the mean rotation error (degrees) and translation error (mm) over the estimates matched
  at 0.10·diameter (NaN when none is matched). The rotation error is
  :func:`~fastgdr.eval.batched_errors.symmetric_rotation_errors`: the angle to the nearest
  symmetric twin of the GT rotation (0 for a twin, as MSSD and MSPD are), and never 0 for
  an estimated R that is not a rotation (results files may hold any matrix; they are
  scored as given, as the toolkit does).

This module runs it: :func:`evaluate`, the per-image loop, and the gating and normalization
of the errors. The protocol's constants are in :mod:`fastgdr.eval.protocol`; what the error
functions see and compute them in :mod:`fastgdr.eval.error_backend`; the targets, the
estimates and GTs that take part and the greedy matching in :mod:`fastgdr.eval.matching`;
pooling the matches into recalls and :class:`~fastgdr.eval.recall.EvalResult` in
:mod:`fastgdr.eval.recall`; the score files in :mod:`fastgdr.eval.scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import cv2
import numpy as np
import torch

from fastgdr.data.bop import BopDataset
from fastgdr.data.bop_records import Scene, TestTarget
from fastgdr.data.mesh import load_ply
from fastgdr.data.symmetry import symmetry_transformations
from fastgdr.errors import DatasetError, FastGDRError
from fastgdr.eval import batched_errors
from fastgdr.eval.error_backend import BatchedErrors, ErrorBackend, EvalModel, PairBatch
from fastgdr.eval.matching import estimates_per_target, greedy_match, targets_per_image, valid_gt_indices
from fastgdr.eval.protocol import (
    DEFAULT_VSD_DELTA_MM,
    ERROR_TYPES,
    MSPD_REFERENCE_WIDTH,
    THRESHOLDS,
    VSD_TAUS,
    VSD_THETAS,
)
from fastgdr.eval.recall import EvalResult, Tally, average_time_per_image
from fastgdr.eval.results import PoseEstimate


# ------------------------------------------------------------------------------------
# The evaluation
# ------------------------------------------------------------------------------------


def evaluate(
    dataset: BopDataset,
    estimates: Iterable[PoseEstimate],
    split: str = "test",
    targets: Sequence[TestTarget] | None = None,
    error_types: Sequence[str] = ERROR_TYPES,
    device: str | torch.device = "cpu",
    progress: bool | Callable[[int, int], None] = False,
    backend: ErrorBackend | None = None,
) -> EvalResult:
    """Evaluate pose estimates with the BOP 2019 protocol (see the module docstring).

    Errors are computed in one batch per (image, object): every kept estimate against
    every valid GT. The VSD test depth is read once per image (mm = stored × depth_scale).

    Args:
        dataset: the dataset (models_eval, scenes with scene_gt_info.json, depth for VSD).
        estimates: the estimates, e.g. from :func:`~fastgdr.eval.results.load_results`.
        split: the split folder of the targets' scenes, e.g. ``"test"``.
        targets: what to evaluate; None reads ``test_targets_bop19.json``.
        error_types: a subset of ``("vsd", "mssd", "mspd", "ad")``.
        device: torch device for the error computations.
        progress: True shows a tqdm bar over images; a callable is called as
            ``progress(done, total)`` after each image.
        backend: computes the raw errors; None uses :class:`BatchedErrors`.

    Returns:
        The scores.

    Raises:
        FastGDRError: unknown error type, duplicate targets, or (DatasetError) missing /
            malformed dataset files.
    """
    error_types = _check_error_types(error_types)
    estimates = list(estimates)
    targets = list(dataset.load_test_targets() if targets is None else targets)
    per_image = targets_per_image(targets)
    candidates = estimates_per_target(estimates, per_image)
    device = torch.device(device)
    obj_ids = sorted({t.obj_id for t in targets})
    models = {obj_id: _load_model(dataset, obj_id, device) for obj_id in obj_ids}
    width, height = _image_size(dataset, split, per_image)
    renderer = None
    if backend is None:
        if "vsd" in error_types:
            from fastgdr.render import Renderer

            renderer = Renderer({obj_id: m.mesh for obj_id, m in models.items()})
        delta = dataset.card.vsd_delta_mm if dataset.card is not None else DEFAULT_VSD_DELTA_MM
        backend = BatchedErrors(renderer, width, height, delta, device)
    report = _progress_callback(progress, len(per_image))
    tally = Tally(error_types)
    scenes: dict[int, Scene] = {}
    try:
        for done, (scene_id, im_id) in enumerate(sorted(per_image), start=1):
            if scene_id not in scenes:
                scenes.clear()
                scenes[scene_id] = _load_scene(dataset, split, scene_id)
            _evaluate_image(
                dataset, scenes[scene_id], im_id, per_image[(scene_id, im_id)], candidates, models,
                backend, tally, width, height, device,
            )
            report(done)
    finally:
        report.close()
        if renderer is not None:
            renderer.close()
    return tally.result(len(targets), average_time_per_image(estimates))


def _image_size(dataset: BopDataset, split: str, per_image: dict[tuple[int, int], dict[int, int]]) -> tuple[int, int]:
    """(width, height): the card's or the camera file's; without either (the evaluation needs
    neither, as in the BOP toolkit) that of the first target image's depth."""
    if dataset.card is not None or dataset.camera_path.is_file() or not per_image:
        return dataset.image_size
    scene_id, im_id = min(per_image)
    try:
        path = dataset.depth_path(split, scene_id, im_id)
    except DatasetError as exc:
        raise DatasetError(
            f"{dataset.camera_path}: file not found, and no depth image to take the image size from ({exc})"
        ) from None
    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if depth is None:
        raise DatasetError(f"{path}: cannot be decoded as an image")
    return int(depth.shape[1]), int(depth.shape[0])


def _check_error_types(error_types: Sequence[str]) -> tuple[str, ...]:
    unknown = [et for et in error_types if et not in ERROR_TYPES]
    if unknown or not error_types:
        raise FastGDRError(
            f"unknown error type(s) {unknown}; choose one or more of {list(ERROR_TYPES)}"
            if unknown else f"no error type given; choose one or more of {list(ERROR_TYPES)}"
        )
    return tuple(et for et in ERROR_TYPES if et in error_types)


def _load_model(dataset: BopDataset, obj_id: int, device: torch.device) -> EvalModel:
    infos = dataset.eval_models_info
    if obj_id not in infos:
        raise DatasetError(
            f"{dataset.eval_models_dir / 'models_info.json'}: no entry for object {obj_id} "
            f"(a target object)"
        )
    info = infos[obj_id]
    mesh = load_ply(dataset.model_path(obj_id, eval=True))
    sym_R, sym_t = symmetry_transformations(info.symmetries_discrete, info.symmetries_continuous)
    as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)  # noqa: E731
    return EvalModel(
        obj_id=obj_id,
        mesh=mesh,
        points=as_tensor(mesh.vertices),
        sym_R=as_tensor(sym_R),
        sym_t=as_tensor(sym_t),
        diameter=float(info.diameter),
        symmetric=obj_id in dataset.symmetric_obj_ids,
    )


def _load_scene(dataset: BopDataset, split: str, scene_id: int) -> Scene:
    scene = dataset.load_scene(split, scene_id)
    if scene.gt_info is None:
        path = dataset.scene_dir(split, scene_id) / "scene_gt_info.json"
        raise DatasetError(f"{path}: file not found (the evaluation needs visib_fract per GT)")
    return scene


def _evaluate_image(
    dataset: BopDataset,
    scene: Scene,
    im_id: int,
    objects: dict[int, int],
    candidates: dict[tuple[int, int, int], list[PoseEstimate]],
    models: dict[int, EvalModel],
    backend: ErrorBackend,
    tally: Tally,
    width: int,
    height: int,
    device: torch.device,
) -> None:
    """Count the valid GTs and the matches of all target objects of one image."""
    where = f"{dataset.scene_dir(scene.split, scene.scene_id)}: image {im_id}"
    if im_id not in scene.camera:
        raise DatasetError(f"{where}: a target image that scene_camera.json does not list")
    camera = scene.camera[im_id]
    gts, infos = scene.gt[im_id], scene.gt_info[im_id]
    K = torch.as_tensor(camera.K, dtype=torch.float64, device=device)
    depth = None
    for obj_id, inst_count in sorted(objects.items()):
        indices = [i for i, gt in enumerate(gts) if gt.obj_id == obj_id]
        valid = [indices[i] for i in valid_gt_indices([infos[i].visib_fract for i in indices], inst_count)]
        kept = candidates.get((scene.scene_id, im_id, obj_id), [])
        tally.valid[obj_id] += len(valid)
        tally.used[obj_id] += len(kept)
        if not valid or not kept:
            continue
        if "vsd" in tally.error_types and depth is None:
            depth = _read_depth(dataset, scene, im_id, camera.depth_scale, width, height, device)
        pairs = _pairs(models[obj_id], kept, [gts[i] for i in valid], K, depth, device)
        for et in tally.error_types:
            errors = _normalized_errors(et, backend, pairs, width).reshape(len(kept), len(valid), -1)
            matched = greedy_match(errors, THRESHOLDS[et])
            tally.matched[et][obj_id] += (matched >= 0).sum(axis=0)
            if et == "ad":
                _collect_pose_errors(pairs, matched[:, -1], len(valid), tally)


def _read_depth(
    dataset: BopDataset, scene: Scene, im_id: int, depth_scale: float, width: int, height: int,
    device: torch.device,
) -> torch.Tensor:
    depth = dataset.read_depth(scene.split, scene.scene_id, im_id, depth_scale)
    if depth.shape != (height, width):
        path = dataset.depth_path(scene.split, scene.scene_id, im_id)
        raise DatasetError(f"{path}: depth image is {depth.shape[1]}×{depth.shape[0]} px, expected {width}×{height}")
    return torch.as_tensor(depth, dtype=torch.float64, device=device)


def _pairs(model: EvalModel, kept: list[PoseEstimate], gts: list, K: torch.Tensor, depth, device) -> PairBatch:
    """All (estimate, GT) pairs, estimate-major: pair e·G + g."""
    as_tensor = lambda arrays: torch.as_tensor(np.stack(arrays), dtype=torch.float64, device=device)  # noqa: E731
    R_e, t_e = as_tensor([e.R for e in kept]), as_tensor([e.t for e in kept])
    R_g, t_g = as_tensor([g.R for g in gts]), as_tensor([g.t for g in gts])
    E, G = len(kept), len(gts)
    return PairBatch(
        model=model,
        R_e=R_e.repeat_interleave(G, dim=0),
        t_e=t_e.repeat_interleave(G, dim=0),
        R_g=R_g.repeat(E, 1, 1),
        t_g=t_g.repeat(E, 1),
        K=K,
        depth=depth,
    )


def _normalized_errors(error_type: str, backend: ErrorBackend, pairs: PairBatch, width: int) -> np.ndarray:
    """Gated errors in the unit of their thresholds: (N, C) float64, one column per
    threshold (VSD), or (N, 1) when one error serves all thresholds.

    VSD: error per (τ, θ) column; MSSD and ADD(-S): ÷ diameter; MSPD: × 640 / width.
    """
    diameter = pairs.model.diameter
    n = len(pairs)
    if error_type == "vsd":
        overlap = batched_errors.spheres_overlap(pairs.t_e, pairs.t_g, pairs.K, diameter / 2.0)
        errors = np.ones((n, len(VSD_TAUS)))
        if bool(overlap.any()):
            errors[overlap.cpu().numpy()] = _numpy(backend.vsd(pairs.subset(overlap)))
        return np.repeat(errors, len(VSD_THETAS), axis=1)
    if error_type == "mspd":
        return (MSPD_REFERENCE_WIDTH / width) * _numpy(backend.mspd(pairs))[:, None]
    near = torch.linalg.norm(pairs.t_e - pairs.t_g, dim=1) < diameter
    errors = np.full(n, np.inf)
    if bool(near.any()):
        compute = backend.mssd if error_type == "mssd" else backend.ad
        errors[near.cpu().numpy()] = _numpy(compute(pairs.subset(near)))
    return (errors / diameter)[:, None]


def _collect_pose_errors(pairs: PairBatch, matched: np.ndarray, num_gts: int, tally: Tally) -> None:
    """Rotation (deg) and translation (mm) errors of the pairs matched at 0.10·diameter."""
    est = np.nonzero(matched >= 0)[0]
    if len(est) == 0:
        return
    index = torch.as_tensor(est * num_gts + matched[est], device=pairs.R_e.device)
    chosen = pairs.subset(index)
    rotation = batched_errors.symmetric_rotation_errors(chosen.R_e, chosen.R_g, chosen.model.sym_R)
    tally.rotation_errors.append(_numpy(rotation))
    tally.translation_errors.append(_numpy(batched_errors.translation_errors(chosen.t_e, chosen.t_g)))


def _numpy(values: torch.Tensor) -> np.ndarray:
    return values.detach().to("cpu", torch.float64).numpy()


class _Progress:
    """Calls a ``(done, total)`` callback, or drives a tqdm bar."""

    def __init__(self, callback: Callable[[int, int], None] | None, bar, total: int) -> None:
        self._callback, self._bar, self._total = callback, bar, total

    def __call__(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(1)
        if self._callback is not None:
            self._callback(done, self._total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _progress_callback(progress: bool | Callable[[int, int], None], total: int) -> _Progress:
    if progress is True:
        from tqdm import tqdm

        return _Progress(None, tqdm(total=total, desc="evaluate", unit="img"), total)
    return _Progress(progress if callable(progress) else None, None, total)
