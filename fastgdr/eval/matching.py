"""Who can be matched to whom in the BOP 2019 protocol (steps 1-4 of
:mod:`fastgdr.eval.bop19`): the targets per image, the top-``inst_count`` estimates per
target, the valid (most visible) GTs, and the greedy matching of estimates to GTs per
threshold."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from fastgdr.data.bop_records import TestTarget
from fastgdr.errors import DatasetError
from fastgdr.eval.results import PoseEstimate


def targets_per_image(targets: Sequence[TestTarget]) -> dict[tuple[int, int], dict[int, int]]:
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


def estimates_per_target(
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


def valid_gt_indices(visib_fracts: Sequence[float], inst_count: int) -> list[int]:
    """Indices of the ``inst_count`` most visible GTs, returned in ascending index order.

    Sorted by ``visib_fract`` descending; ties go to the lower index (the instance listed
    first in scene_gt.json).
    """
    order = sorted(range(len(visib_fracts)), key=lambda i: -visib_fracts[i])
    return sorted(order[: max(inst_count, 0)])


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
