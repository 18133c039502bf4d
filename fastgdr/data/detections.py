"""2D detections that pose inference starts from.

Two formats are read:

- the BOP list format of the official default detections (BOP 2022/2023):
  ``[{"scene_id", "image_id", "category_id" (= obj_id), "score", "bbox": [x, y, w, h],
  "time", "segmentation"?}, …]``;
- GDRNPP's dict format: ``{"<scene_id>/<im_id>": [{"obj_id", "bbox_est": [x, y, w, h],
  "score", "time"?}, …], …}``.

Boxes are amodal, in px, (x, y) the top-left corner.

Reading refuses (with the file, entry and field) anything that cannot be a detection: a
missing field, a non-number, a NaN or infinite box or time, a box without area. What a
run cannot use is dropped by :func:`match_detections` and counted in a
:class:`DetectionReport`: detections of images the run does not process, of objects the
dataset does not have, with a NaN or infinite score, or below the score threshold.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

from fastgdr.errors import DatasetError

ImageKey = tuple[int, int]  # (scene_id, im_id)


@dataclass(frozen=True)
class Detection:
    """One detected object instance; ``time`` is the detector's per-image time in s."""

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    bbox: tuple[float, float, float, float]
    time: float = 0.0


def load_detections(path: str | Path) -> dict[ImageKey, list[Detection]]:
    """Read a detections file in either format, grouped by image.

    Raises:
        DatasetError: naming the file, the entry and the field that is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"detections file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    if isinstance(data, list):
        detections = [_from_bop_entry(entry, i, path) for i, entry in enumerate(data)]
    elif isinstance(data, dict):
        detections = [
            _from_gdrnpp_entry(image, entry, i, path) for key, entries in data.items()
            for image in [_image_key(key, path)] for i, entry in enumerate(_as_list(entries, key, path))
        ]
    else:
        raise DatasetError(f"{path}: expected a list (BOP format) or a dict (GDRNPP format) of detections")
    grouped: dict[ImageKey, list[Detection]] = defaultdict(list)
    for det in detections:
        grouped[(det.scene_id, det.im_id)].append(det)
    return dict(grouped)


@dataclass
class DetectionReport:
    """How the detections of a file matched a run (counts of detections).

    Attributes:
        total: detections in the file.
        matched: detections kept: of an image the run processes, of a known object, with
            a finite score at or above the threshold.
        other_images: detections of images the run does not process (not in the split or
            not a test target); ``other_image_examples`` names a few of those images.
        unknown_objects: detections whose object id the dataset does not have
            (``unknown_object_ids``).
        non_finite_scores: detections whose score is NaN or infinite.
        below_threshold: detections with a score below the threshold.
    """

    total: int = 0
    matched: int = 0
    other_images: int = 0
    unknown_objects: int = 0
    non_finite_scores: int = 0
    below_threshold: int = 0
    other_image_examples: list[ImageKey] = field(default_factory=list)
    unknown_object_ids: list[int] = field(default_factory=list)

    @property
    def dropped(self) -> dict[str, int]:
        """Reason → count of the dropped detections (reasons with a count only)."""
        counts = {
            "of images the run does not process": self.other_images,
            "of unknown objects": self.unknown_objects,
            "with a NaN or infinite score": self.non_finite_scores,
            "below the score threshold": self.below_threshold,
        }
        return {reason: count for reason, count in counts.items() if count}

    def describe(self) -> str:
        """One line: what was kept and what was dropped, and why."""
        dropped = self.dropped
        if not dropped:
            return f"{self.matched} of {self.total} detections used"
        parts = []
        for reason, count in dropped.items():
            detail = ""
            if reason.startswith("of images") and self.other_image_examples:
                detail = " (e.g. " + ", ".join(f"scene {s} image {i}" for s, i in self.other_image_examples) + ")"
            elif reason.startswith("of unknown") and self.unknown_object_ids:
                detail = f" (obj_id {', '.join(map(str, self.unknown_object_ids))})"
            parts.append(f"{count} {reason}{detail}")
        return f"{self.matched} of {self.total} detections used; dropped: " + "; ".join(parts)


MAX_EXAMPLES = 3


def match_detections(
    detections: Mapping[ImageKey, Iterable[Detection]],
    images: Collection[ImageKey],
    obj_ids: Collection[int],
    score_threshold: float = 0.0,
) -> tuple[dict[ImageKey, list[Detection]], DetectionReport]:
    """The detections a run over ``images`` can use, grouped by image, and a report of
    the others (see :class:`DetectionReport`).

    Args:
        detections: from :func:`load_detections`.
        images: (scene_id, im_id) of the images the run processes.
        obj_ids: the dataset's object ids.
        score_threshold: detections below it are dropped (and counted).
    """
    images, obj_ids = set(images), set(obj_ids)
    report = DetectionReport()
    kept: dict[ImageKey, list[Detection]] = {}
    unknown_ids: set[int] = set()
    for key in sorted(detections):
        dets = list(detections[key])
        report.total += len(dets)
        if key not in images:
            report.other_images += len(dets)
            if len(report.other_image_examples) < MAX_EXAMPLES:
                report.other_image_examples.append(key)
            continue
        for det in dets:
            if det.obj_id not in obj_ids:
                report.unknown_objects += 1
                unknown_ids.add(det.obj_id)
            elif not math.isfinite(det.score):
                report.non_finite_scores += 1
            elif det.score < score_threshold:
                report.below_threshold += 1
            else:
                kept.setdefault(key, []).append(det)
                report.matched += 1
    report.unknown_object_ids = sorted(unknown_ids)
    return kept, report


def select_detections(
    detections: list[Detection], top_k_per_object: int | None, score_threshold: float = 0.0
) -> list[Detection]:
    """GDRNPP's selection in one image: score ≥ threshold, then the top-k per object.

    Returns the kept detections sorted by descending score.
    """
    kept = sorted((d for d in detections if d.score >= score_threshold), key=lambda d: -d.score)
    if top_k_per_object is None:
        return kept
    counts: dict[int, int] = defaultdict(int)
    selected = []
    for det in kept:
        if counts[det.obj_id] < top_k_per_object:
            counts[det.obj_id] += 1
            selected.append(det)
    return selected


def _as_list(entries: Any, key: str, path: Path) -> list:
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: image '{key}': expected a list of detections")
    return entries


def _field(entry: Any, name: str, where: str, path: Path) -> Any:
    if not isinstance(entry, dict) or name not in entry:
        raise DatasetError(f"{path}: {where}: missing field '{name}'")
    return entry[name]


def _number(
    value: Any, name: str, where: str, path: Path, integer: bool = False, finite: bool = True
) -> float:
    """``value`` if it is a number (an integer with ``integer``; finite unless ``finite``
    is False: a NaN or infinite score is dropped and counted later, not refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        raise DatasetError(f"{path}: {where}: '{name}' must be {kind}, got {value!r}")
    if (finite or integer) and not math.isfinite(value):
        raise DatasetError(f"{path}: {where}: '{name}' must be a finite number, got {value!r}")
    if integer and int(value) != value:
        raise DatasetError(f"{path}: {where}: '{name}' must be an integer, got {value!r}")
    return value


def _bbox(value: Any, name: str, where: str, path: Path) -> tuple[float, float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise DatasetError(f"{path}: {where}: '{name}' must be [x, y, w, h], got {value!r}")
    x, y, w, h = (float(_number(v, name, where, path)) for v in value)
    if w <= 0 or h <= 0:
        raise DatasetError(f"{path}: {where}: '{name}' must have positive width and height, got {value!r}")
    return x, y, w, h


def _from_bop_entry(entry: Any, index: int, path: Path) -> Detection:
    where = f"entry {index}"
    return Detection(
        scene_id=int(_number(_field(entry, "scene_id", where, path), "scene_id", where, path, True)),
        im_id=int(_number(_field(entry, "image_id", where, path), "image_id", where, path, True)),
        obj_id=int(_number(_field(entry, "category_id", where, path), "category_id", where, path, True)),
        score=float(_number(_field(entry, "score", where, path), "score", where, path, finite=False)),
        bbox=_bbox(_field(entry, "bbox", where, path), "bbox", where, path),
        time=float(_number(entry.get("time", 0.0), "time", where, path)),
    )


def _image_key(key: str, path: Path) -> ImageKey:
    scene, sep, image = key.partition("/")
    if not sep or not scene.isdigit() or not image.isdigit():
        raise DatasetError(f"{path}: key '{key}' must look like '<scene_id>/<im_id>'")
    return int(scene), int(image)


def _from_gdrnpp_entry(image: ImageKey, entry: Any, index: int, path: Path) -> Detection:
    where = f"image '{image[0]}/{image[1]}', entry {index}"
    return Detection(
        scene_id=image[0],
        im_id=image[1],
        obj_id=int(_number(_field(entry, "obj_id", where, path), "obj_id", where, path, True)),
        score=float(_number(_field(entry, "score", where, path), "score", where, path, finite=False)),
        bbox=_bbox(_field(entry, "bbox_est", where, path), "bbox_est", where, path),
        time=float(_number(entry.get("time", 0.0), "time", where, path)),
    )
