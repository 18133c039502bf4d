"""Inference over a dataset: the detections of every image to process → poses, as BOP results.

:func:`images_to_process` lists the images (the test targets where the dataset has them),
:func:`usable_detections` keeps the detections a run can use (counting the rest), and
:func:`infer_dataset` reads each image (and its depth when refining), runs a
:class:`~fastgdr.inference.predictor.PosePredictor` on its detections and times it
(:class:`InferenceStats`). The estimates go on to :mod:`fastgdr.eval.results` (the BOP
results CSV) and :mod:`fastgdr.eval.bop19` (the scores).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from fastgdr.data.detections import Detection, DetectionReport, match_detections
from fastgdr.errors import DatasetError
from fastgdr.inference.predictor import PosePredictor
from fastgdr.inference.refine import RefineStats


def timed(fn, *args):
    """``(fn(*args), seconds)``, synchronizing CUDA before reading the clock."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


@dataclass
class InferenceStats:
    """Timing of an inference run (seconds, per image, detector time excluded).

    ``network_seconds`` covers crops, forward and decoding; ``refine_seconds`` the depth
    refinement of each image (empty when not refining); ``refine`` holds the refinement counters and
    per-object times (None when not refining); ``detections`` how the detections matched
    the images (what was dropped and why).
    """

    images: int
    estimates: int
    network_seconds: list[float]
    refine_seconds: list[float] = field(default_factory=list)
    refine: RefineStats | None = None
    detections: DetectionReport | None = None

    @property
    def mean_seconds(self) -> float:
        return float(np.mean(self.network_seconds)) if self.network_seconds else 0.0


def images_to_process(dataset, split: str) -> list[tuple[int, int]]:
    """(scene_id, im_id) of the test targets when the dataset has them, else every image."""
    if (dataset.root / "test_targets_bop19.json").exists() and split == getattr(dataset.card, "test_split", "test"):
        return sorted({(t.scene_id, t.im_id) for t in dataset.load_test_targets()})
    keys = []
    for scene_id in dataset.scene_ids(split):
        scene = dataset.load_scene(split, scene_id, require_gt=False)
        keys += [(scene_id, im_id) for im_id in sorted(scene.camera)]
    return keys


def usable_detections(
    detections: Mapping[tuple[int, int], Sequence[Detection]],
    dataset,
    split: str,
    obj_ids: Sequence[int],
    score_threshold: float = 0.0,
    source: str = "detections",
) -> tuple[dict[tuple[int, int], list[Detection]], DetectionReport]:
    """The detections of the images :func:`images_to_process` gives, of ``obj_ids``, with
    a finite score ≥ ``score_threshold`` (see :func:`~fastgdr.data.detections.match_detections`).

    Raises:
        DatasetError: when no detection is left (naming ``source`` and what was dropped):
            a run that would write no estimate is a mistake, e.g. the detections of another
            dataset or split.
    """
    keys = images_to_process(dataset, split)
    usable, report = match_detections(detections, keys, obj_ids, score_threshold)
    if report.matched == 0:
        raise DatasetError(
            f"{source}: no detection can be used for the {len(keys)} image(s) of split '{split}' "
            f"of {dataset.root} ({report.describe()}); detections of another dataset or split?"
        )
    return usable, report


def infer_dataset(
    predictor: PosePredictor,
    dataset,
    split: str,
    detections: Mapping[tuple[int, int], Sequence[Detection]],
    top_k_per_object: int | None,
    score_threshold: float = 0.0,
    progress=None,
    on_image: Callable[[list], None] | None = None,
) -> tuple[list, InferenceStats]:
    """Poses for every detection of every image to process, as BOP results.

    The per-image time written with each estimate is the network time of that image
    (crops, forward, decoding), plus the depth-refinement time of the image when the
    predictor refines, plus the detector's time from the detections file: the same value
    for all estimates of the image. When refining, each image's depth is read (reading
    is not timed, like the colour image); a missing or unreadable depth file leaves the
    image's poses unrefined and is counted in ``stats.refine``.

    Only usable detections are kept (:func:`usable_detections`: the dropped ones are
    counted in ``stats.detections``); none at all raises DatasetError before any image
    is processed.

    Args:
        progress: optional callable wrapping an iterable (e.g. tqdm).
        on_image: called with each image's estimates as soon as they exist (e.g.
            :meth:`fastgdr.eval.results.ResultsWriter.write`).
    """
    from fastgdr.data.detections import select_detections
    from fastgdr.eval.results import PoseEstimate

    keys = images_to_process(dataset, split)
    detections, detection_report = usable_detections(
        detections, dataset, split, list(predictor.labels), score_threshold
    )
    scenes: dict[int, object] = {}
    estimates, seconds, refine_seconds = [], [], []
    refining = predictor.refine_method != "none"
    refine_stats = RefineStats() if refining else None
    warmed_up = False
    for scene_id, im_id in progress(keys) if progress else keys:
        if scene_id not in scenes:
            scenes[scene_id] = dataset.load_scene(split, scene_id, require_gt=False)
        camera = scenes[scene_id].camera[im_id]
        dets = select_detections(detections.get((scene_id, im_id), []), top_k_per_object, score_threshold)
        image = dataset.read_image(split, scene_id, im_id)
        depth = _read_depth_or_none(dataset, split, scene_id, im_id, camera.depth_scale) if refining and dets else None
        refine_args = (camera.K, image.shape[:2], depth, camera.depth_scale)
        if dets and not warmed_up:  # first call pays one-off allocations; keep it out of the timings
            warm_up = predictor.predict(image, camera.K, dets)
            predictor.refine(*warm_up, *refine_args, RefineStats())  # GL context, framebuffers
            warmed_up = True
        (poses, out, batch), elapsed = timed(predictor.predict, image, camera.K, dets)
        seconds.append(elapsed)
        if refining:
            poses, refine_elapsed = timed(predictor.refine, poses, out, batch, *refine_args, refine_stats)
            refine_seconds.append(refine_elapsed)
            elapsed += refine_elapsed
        image_time = elapsed + max((d.time for d in dets), default=0.0)
        image_estimates = [
            PoseEstimate(scene_id, im_id, p.detection.obj_id, p.detection.score, p.R, p.t, image_time)
            for p in poses
        ]
        if on_image is not None:
            on_image(image_estimates)
        estimates += image_estimates
    return estimates, InferenceStats(
        len(keys), len(estimates), seconds, refine_seconds, refine_stats, detection_report
    )


def _read_depth_or_none(dataset, split: str, scene_id: int, im_id: int, depth_scale: float) -> np.ndarray | None:
    """The depth image in mm, or None when its file is missing or unreadable."""
    try:
        return dataset.read_depth(split, scene_id, im_id, depth_scale)
    except DatasetError:
        return None
