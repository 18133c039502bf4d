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
  :func:`~fastgdr.eval.batched_errors.rotation_errors`: the angle between rotations, and
  never 0 for an estimated R that is not a rotation (results files may hold any matrix;
  they are scored as given, as the toolkit does).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from fastgdr.data.bop import BopDataset, Scene, TestTarget
from fastgdr.data.mesh import Mesh, load_ply
from fastgdr.data.symmetry import symmetry_transformations
from fastgdr.errors import DatasetError, FastGDRError
from fastgdr.eval import batched_errors
from fastgdr.eval.results import (
    RESULTS_FILE_KEY,
    RESULTS_SHA256_KEY,
    SCORE_FILES,
    PoseEstimate,
    file_sha256,
)
from fastgdr.outputs import atomic_write_text

ERROR_TYPES = ("vsd", "mssd", "mspd", "ad")
VSD_TAUS = np.arange(0.05, 0.51, 0.05)  # × diameter
VSD_THETAS = np.arange(0.05, 0.51, 0.05)
MSSD_THETAS = np.arange(0.05, 0.51, 0.05)  # × diameter
MSPD_THRESHOLDS_PX = np.arange(5, 51, 5).astype(np.float64)  # at a 640 px wide image
AD_THETAS = np.array([0.02, 0.05, 0.10])  # × diameter
AD_THETA_NAMES = ("0.02", "0.05", "0.10")
DEFAULT_VSD_DELTA_MM = 15.0
MSPD_REFERENCE_WIDTH = 640.0

# Matching thresholds per error type: one per column of the normalized error array.
_THRESHOLDS: dict[str, np.ndarray] = {
    "vsd": np.tile(VSD_THETAS, len(VSD_TAUS)),  # column i·10 + j: τ_i, θ_j
    "mssd": MSSD_THETAS,
    "mspd": MSPD_THRESHOLDS_PX,
    "ad": AD_THETAS,
}


# ------------------------------------------------------------------------------------
# Inputs of the error functions
# ------------------------------------------------------------------------------------


@dataclass
class EvalModel:
    """An object as the error functions see it (all from ``models_eval``).

    Attributes:
        obj_id: BOP object id.
        mesh: the evaluation mesh (mm), for rendering.
        points: (P, 3) float64 model vertices in mm.
        sym_R: (S, 3, 3) float64 symmetry rotations (index 0 the identity).
        sym_t: (S, 3) float64 symmetry translations in mm.
        diameter: diameter in mm from models_eval/models_info.json.
        symmetric: whether "ad" uses ADI (the object is in ``symmetric_obj_ids``).
    """

    obj_id: int
    mesh: Mesh
    points: torch.Tensor
    sym_R: torch.Tensor
    sym_t: torch.Tensor
    diameter: float
    symmetric: bool


@dataclass
class PairBatch:
    """N (estimate, GT) pose pairs of one object in one image.

    Attributes:
        model: the object.
        R_e, R_g: (N, 3, 3) float64 rotations, model → camera.
        t_e, t_g: (N, 3) float64 translations, model → camera, mm.
        K: (3, 3) float64 intrinsics of the image, px.
        depth: (H, W) float64 test depth in mm (0 = missing), or None without VSD.
    """

    model: EvalModel
    R_e: torch.Tensor
    t_e: torch.Tensor
    R_g: torch.Tensor
    t_g: torch.Tensor
    K: torch.Tensor
    depth: torch.Tensor | None

    def subset(self, index: torch.Tensor) -> PairBatch:
        """The pairs selected by a boolean mask or index tensor (N,)."""
        return PairBatch(
            self.model, self.R_e[index], self.t_e[index], self.R_g[index], self.t_g[index],
            self.K, self.depth,
        )

    def __len__(self) -> int:
        return len(self.R_e)


class ErrorBackend(Protocol):
    """Computes raw (ungated, unnormalized) pose errors for a batch of pairs.

    :class:`BatchedErrors` is the fast default; a per-pair loop over
    :mod:`fastgdr.eval.reference_errors` is the reference (see benchmarks/bench_eval.py).
    """

    def vsd(self, pairs: PairBatch) -> torch.Tensor:
        """(N, len(VSD_TAUS)) VSD errors in [0, 1]."""

    def mssd(self, pairs: PairBatch) -> torch.Tensor:
        """(N,) MSSD in mm."""

    def mspd(self, pairs: PairBatch) -> torch.Tensor:
        """(N,) MSPD in px."""

    def ad(self, pairs: PairBatch) -> torch.Tensor:
        """(N,) ADI in mm for symmetric objects (``pairs.model.symmetric``), else ADD."""


class BatchedErrors:
    """The default :class:`ErrorBackend`: :mod:`fastgdr.eval.batched_errors` on ``device``.

    Args:
        renderer: renderer holding the evaluation meshes, or None when VSD is not needed.
        width, height: image size in px (VSD renders at this size).
        vsd_delta: VSD visibility tolerance δ in mm.
        device: torch device of the computations.
    """

    def __init__(self, renderer, width: int, height: int, vsd_delta: float, device: str | torch.device) -> None:
        self._vsd = None
        if renderer is not None:
            self._vsd = batched_errors.VSDEvaluator(
                renderer, width, height, vsd_delta, VSD_TAUS.tolist(),
                normalized_by_diameter=True, device=device,
            )

    def vsd(self, pairs: PairBatch) -> torch.Tensor:
        if self._vsd is None:
            raise RuntimeError("BatchedErrors was built without a renderer: VSD is not available")
        return self._vsd.errors(
            pairs.model.obj_id, pairs.R_e, pairs.t_e, pairs.R_g, pairs.t_g, pairs.depth, pairs.K,
            pairs.model.diameter,
        )

    def mssd(self, pairs: PairBatch) -> torch.Tensor:
        m = pairs.model
        return batched_errors.mssd_errors(pairs.R_e, pairs.t_e, pairs.R_g, pairs.t_g, m.points, m.sym_R, m.sym_t)

    def mspd(self, pairs: PairBatch) -> torch.Tensor:
        m = pairs.model
        return batched_errors.mspd_errors(
            pairs.R_e, pairs.t_e, pairs.R_g, pairs.t_g, pairs.K, m.points, m.sym_R, m.sym_t
        )

    def ad(self, pairs: PairBatch) -> torch.Tensor:
        fn = batched_errors.adi_errors if pairs.model.symmetric else batched_errors.add_errors
        return fn(pairs.R_e, pairs.t_e, pairs.R_g, pairs.t_g, pairs.model.points)


# ------------------------------------------------------------------------------------
# Matching
# ------------------------------------------------------------------------------------


def greedy_match(errors: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Greedy BOP matching of estimates to GTs, independently for every threshold.

    Estimates are taken in the given order (sort them by descending score first). Each
    takes the not yet matched GT with the smallest error (ties: the lowest GT index) and
    the match counts only if that error is strictly below the threshold; otherwise the
    estimate stays unmatched and the GT stays free. NaN errors never match.

    Args:
        errors: (E, G, C) errors of E estimates against G GTs, one column per threshold,
            or (E, G, 1) when one error serves all thresholds.
        thresholds: (C,) thresholds, in the unit of ``errors``.

    Returns:
        (E, C) int64: index of the GT matched by each estimate at each threshold, −1 when
        none.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    errors = np.where(np.isnan(errors), np.inf, errors)
    num_est, num_gt, num_cols = errors.shape[0], errors.shape[1], len(thresholds)
    errors = np.broadcast_to(errors, (num_est, num_gt, num_cols))
    matched = np.full((num_est, num_cols), -1, dtype=np.int64)
    if num_gt == 0:
        return matched
    taken = np.zeros((num_gt, num_cols), dtype=bool)
    cols = np.arange(num_cols)
    for k in range(num_est):
        available = np.where(taken, np.inf, errors[k])
        best = np.argmin(available, axis=0)
        ok = available[best, cols] < thresholds
        matched[k, ok] = best[ok]
        taken[best[ok], cols[ok]] = True
    return matched


# ------------------------------------------------------------------------------------
# Result
# ------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Scores of one evaluation.

    Attributes:
        scores: the BOP keys and the extra ones (see the module docstring).
        recalls: error type → pooled recall per threshold: "vsd" (10 τ, 10 θ), "mssd" (10,),
            "mspd" (10,), "ad" (3,) — for the evaluated types.
        per_object: obj_id → {"num_valid_gts", "num_estimates" (estimates used; both int),
            "ar_vsd" / "ar_mssd" / "ar_mspd" (the object's mean recall over the
            thresholds), "add_s_recall_0.02" / "_0.05" / "_0.10"} — the metrics evaluated.
        num_estimates_used: estimates kept by the top-``inst_count`` rule.
        num_targets: targets evaluated.
        num_valid_gts: valid GT instances (the recall denominator).
        error_types: the error types evaluated.
    """

    scores: dict[str, float]
    recalls: dict[str, np.ndarray]
    per_object: dict[int, dict[str, float]]
    num_estimates_used: int
    num_targets: int
    num_valid_gts: int
    error_types: tuple[str, ...] = field(default=ERROR_TYPES)


class _Tally:
    """Matched-GT counts per error type, object and threshold column."""

    def __init__(self, error_types: Sequence[str]) -> None:
        self.error_types = tuple(error_types)
        self.matched = {et: defaultdict(lambda et=et: np.zeros(len(_THRESHOLDS[et]), np.int64)) for et in error_types}
        self.valid: dict[int, int] = defaultdict(int)
        self.used: dict[int, int] = defaultdict(int)
        self.rotation_errors: list[np.ndarray] = []
        self.translation_errors: list[np.ndarray] = []

    def result(self, num_targets: int, time_per_image: float) -> EvalResult:
        total_valid = sum(self.valid.values())
        recalls: dict[str, np.ndarray] = {}
        per_object: dict[int, dict[str, float]] = {
            obj_id: {"num_valid_gts": self.valid[obj_id], "num_estimates": self.used[obj_id]}
            for obj_id in sorted(self.valid)
        }
        for et in self.error_types:
            counts = sum(self.matched[et].values(), np.zeros(len(_THRESHOLDS[et]), np.int64))
            recalls[et] = _ratio(counts, total_valid)
            for obj_id, row in per_object.items():
                obj_recall = _ratio(self.matched[et][obj_id], self.valid[obj_id])
                if et == "ad":
                    row.update({f"add_s_recall_{n}": float(r) for n, r in zip(AD_THETA_NAMES, obj_recall)})
                else:
                    row[f"ar_{et}"] = float(obj_recall.mean())
        scores: dict[str, float] = {}
        bop = [et for et in ("vsd", "mssd", "mspd") if et in recalls]
        if len(bop) == 3:
            scores["bop19_average_recall"] = float(np.mean([recalls[et].mean() for et in bop]))
        for et in bop:
            scores[f"bop19_average_recall_{et}"] = float(recalls[et].mean())
        scores["bop19_average_time_per_image"] = time_per_image
        if "ad" in recalls:
            scores.update({f"add_s_recall_{n}": float(r) for n, r in zip(AD_THETA_NAMES, recalls["ad"])})
            re = np.concatenate(self.rotation_errors) if self.rotation_errors else np.zeros(0)
            te = np.concatenate(self.translation_errors) if self.translation_errors else np.zeros(0)
            scores["add_s_mean_rotation_error_deg"] = float(re.mean()) if len(re) else math.nan
            scores["add_s_mean_translation_error_mm"] = float(te.mean()) if len(te) else math.nan
        recalls = {et: (r.reshape(len(VSD_TAUS), len(VSD_THETAS)) if et == "vsd" else r) for et, r in recalls.items()}
        return EvalResult(
            scores=scores,
            recalls=recalls,
            per_object=per_object,
            num_estimates_used=sum(self.used.values()),
            num_targets=num_targets,
            num_valid_gts=total_valid,
            error_types=self.error_types,
        )


def _ratio(counts: np.ndarray, total: int) -> np.ndarray:
    """counts / total as float64; 0 when total is 0 (as the toolkit reports)."""
    return counts / total if total > 0 else np.zeros(len(counts))


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
    per_image = _targets_per_image(targets)
    candidates = _estimates_per_target(estimates, per_image)
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
    tally = _Tally(error_types)
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


def average_time_per_image(estimates: Sequence[PoseEstimate]) -> float:
    """Mean over the images with estimates of their per-image time (s), as BOP reports it.

    The time of an image is the one of its first estimate (:func:`load_results` checks
    they agree). Returns −1 when any time is negative or there are no estimates.
    """
    times: dict[tuple[int, int], float] = {}
    for e in estimates:
        if e.time < 0:
            return -1.0
        times.setdefault((e.scene_id, e.im_id), float(e.time))
    return float(np.mean(list(times.values()))) if times else -1.0


def _check_error_types(error_types: Sequence[str]) -> tuple[str, ...]:
    unknown = [et for et in error_types if et not in ERROR_TYPES]
    if unknown or not error_types:
        raise FastGDRError(
            f"unknown error type(s) {unknown}; choose one or more of {list(ERROR_TYPES)}"
            if unknown else f"no error type given; choose one or more of {list(ERROR_TYPES)}"
        )
    return tuple(et for et in ERROR_TYPES if et in error_types)


def _targets_per_image(targets: Sequence[TestTarget]) -> dict[tuple[int, int], dict[int, int]]:
    """(scene, image) → {obj_id: inst_count}."""
    per_image: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)
    for t in targets:
        objects = per_image[(t.scene_id, t.im_id)]
        if t.obj_id in objects:
            raise DatasetError(
                f"duplicate target: scene {t.scene_id}, image {t.im_id}, object {t.obj_id} "
                f"is listed twice"
            )
        objects[t.obj_id] = t.inst_count
    return dict(per_image)


def _estimates_per_target(
    estimates: Sequence[PoseEstimate], per_image: dict[tuple[int, int], dict[int, int]]
) -> dict[tuple[int, int, int], list[PoseEstimate]]:
    """(scene, image, object) → its top-``inst_count`` estimates, highest score first.

    The sort is stable: estimates with equal scores keep their input order.
    """
    grouped: dict[tuple[int, int, int], list[PoseEstimate]] = defaultdict(list)
    for e in estimates:
        if e.obj_id in per_image.get((e.scene_id, e.im_id), ()):
            grouped[(e.scene_id, e.im_id, e.obj_id)].append(e)
    return {
        key: sorted(group, key=lambda e: -e.score)[: per_image[key[:2]][key[2]]]
        for key, group in grouped.items()
    }


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


def valid_gt_indices(visib_fracts: Sequence[float], inst_count: int) -> list[int]:
    """Indices of the ``inst_count`` most visible GTs, returned in ascending index order.

    Sorted by ``visib_fract`` descending; ties go to the lower index (the instance listed
    first in scene_gt.json).
    """
    order = sorted(range(len(visib_fracts)), key=lambda i: -visib_fracts[i])
    return sorted(order[: max(inst_count, 0)])


def _evaluate_image(
    dataset: BopDataset,
    scene: Scene,
    im_id: int,
    objects: dict[int, int],
    candidates: dict[tuple[int, int, int], list[PoseEstimate]],
    models: dict[int, EvalModel],
    backend: ErrorBackend,
    tally: _Tally,
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
            matched = greedy_match(errors, _THRESHOLDS[et])
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


def _collect_pose_errors(pairs: PairBatch, matched: np.ndarray, num_gts: int, tally: _Tally) -> None:
    """Rotation (deg) and translation (mm) errors of the pairs matched at 0.10·diameter."""
    est = np.nonzero(matched >= 0)[0]
    if len(est) == 0:
        return
    index = torch.as_tensor(est * num_gts + matched[est], device=pairs.R_e.device)
    chosen = pairs.subset(index)
    tally.rotation_errors.append(_numpy(batched_errors.rotation_errors(chosen.R_e, chosen.R_g)))
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


# ------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------


def remove_scores(out_dir: str | Path) -> list[Path]:
    """Delete the score files of :func:`write_scores` from ``out_dir`` (before a new results
    file is written there: scores never stay beside a file they were not computed from).

    Returns:
        The files removed.
    """
    removed = []
    for name in SCORE_FILES:
        path = Path(out_dir) / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def write_scores(result: EvalResult, out_dir: str | Path, results_file: str | Path | None = None) -> dict[str, Path]:
    """Write ``scores_bop19.json`` (the scores; NaN as null), ``per_object.csv`` and
    ``scores.md`` (both tables as markdown) into ``out_dir``.

    Args:
        result: the scores.
        out_dir: the output folder (created).
        results_file: the results CSV that was scored; its name and SHA-256 are recorded in
            scores_bop19.json (``results_file``, ``results_sha256``) and scores.md, so that
            readers (tools/report.py) can tell stale scores from current ones.

    Returns:
        name → path of the written files.
    """
    out_dir = Path(out_dir)
    paths = dict(zip(("scores", "per_object", "markdown"), (out_dir / name for name in SCORE_FILES)))
    scores: dict[str, float | str | None] = {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.scores.items()
    }
    source = ""
    if results_file is not None:
        digest = file_sha256(results_file)
        scores.update({RESULTS_FILE_KEY: Path(results_file).name, RESULTS_SHA256_KEY: digest})
        source = f"\n\nScores of `{Path(results_file).name}` (SHA-256 {digest})."
    columns = _per_object_columns(result)
    lines = [",".join(["obj_id", *columns])]
    for obj_id, row in result.per_object.items():
        lines.append(",".join([str(obj_id), *(_cell(row[c]) for c in columns)]))
    for key, text in (("per_object", "\n".join(lines)), ("markdown", format_scores(result) + source),
                      ("scores", json.dumps(scores, indent=2))):  # the scores last: they mark a finished run
        atomic_write_text(paths[key], text + "\n", what="scores file")
    return paths


def _per_object_columns(result: EvalResult) -> list[str]:
    return list(next(iter(result.per_object.values()), {}).keys())


def _cell(value: float) -> str:
    """Counts as integers, scores with 6 decimals."""
    return str(value) if isinstance(value, int) else f"{value:.6f}"


def format_scores(result: EvalResult) -> str:
    """The scores and the per-object table as markdown."""
    lines = ["| score | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v) if not math.isnan(v) else 'n/a'} |" for k, v in result.scores.items()]
    lines += [
        "",
        f"{result.num_targets} targets, {result.num_valid_gts} valid GT instances, "
        f"{result.num_estimates_used} estimates used",
        "",
    ]
    columns = _per_object_columns(result)
    lines += ["| obj_id | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for obj_id, row in result.per_object.items():
        lines.append(f"| {obj_id} | " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return "\n".join(lines)
