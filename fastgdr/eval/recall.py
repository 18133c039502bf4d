"""Pooling the matches of an evaluation into recalls and scores: the per-threshold counts of
matched and valid GTs (dataset-wide and per object), the ADD(-S) pose errors of the matched
estimates, the average time per image, and the :class:`EvalResult` they make (its keys are
described in :mod:`fastgdr.eval.bop19`)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fastgdr.eval.protocol import AD_THETA_NAMES, ERROR_TYPES, THRESHOLDS, VSD_TAUS, VSD_THETAS
from fastgdr.eval.results import PoseEstimate


@dataclass
class EvalResult:
    """Scores of one evaluation.

    Attributes:
        scores: the BOP keys and the extra ones (see :mod:`fastgdr.eval.bop19`).
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


class Tally:
    """Matched-GT counts per error type, object and threshold column."""

    def __init__(self, error_types: Sequence[str]) -> None:
        self.error_types = tuple(error_types)
        self.matched = {et: defaultdict(lambda et=et: np.zeros(len(THRESHOLDS[et]), np.int64)) for et in error_types}
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
            counts = sum(self.matched[et].values(), np.zeros(len(THRESHOLDS[et]), np.int64))
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
