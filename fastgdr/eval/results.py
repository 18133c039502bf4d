"""Pose-estimation results in the BOP 2019 CSV format: reading, validation, writing.

One file per dataset, named ``{METHOD}_{DATASET}-{SPLIT}[-{SPLITTYPE}][_{OPTIONAL_ID}].csv``
(METHOD contains no ``_``). The optional first line is the header
``scene_id,im_id,obj_id,score,R,t,time``; every other line is one estimate with exactly
seven comma-separated fields::

    scene_id,im_id,obj_id,score,R,t,time
    1,0,5,0.93,0.1 0.2 ... (9 numbers),12.5 -3.0 610.2,0.081

* ``R``: the 9 entries of the model→camera rotation, row-major, space-separated.
* ``t``: the 3 entries of the model→camera translation in **mm**, space-separated.
* ``score``: confidence, higher is more confident.
* ``time``: seconds spent on the **whole image**; the same (within 1 ms) for every
  estimate of one image; negative means "not available".

:func:`load_results` checks all of this and raises :class:`~fastgdr.errors.ResultsFormatError`
with a one-line message naming the file, the first bad line and what was expected.

The BOP toolkit scores any 3×3 matrix given as R. :func:`load_results` does too, but warns
(:class:`~fastgdr.errors.ResultsWarning`, with the count and the line numbers) about matrices
that are not rotations (RᵀR ≠ I or det R ≠ +1 beyond :data:`ROTATION_TOLERANCE`) and about a
file without estimates; with ``strict=True`` it refuses such files.
:func:`check_dataset_name` compares the dataset in the file name with the data evaluated.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastgdr.errors import ResultsFormatError, ResultsWarning
from fastgdr.outputs import atomic_write_text

HEADER = "scene_id,im_id,obj_id,score,R,t,time"
# Two times of one image may differ by at most this much (s), as in the BOP toolkit.
TIME_TOLERANCE_S = 0.001
# Largest deviation of an entry of RᵀR from the identity's for R to count as a rotation:
# rotations written with 4 or more decimals stay well below it.
ROTATION_TOLERANCE = 1e-3
# Keys of scores_bop19.json naming the results file the scores were computed from
# (fastgdr.eval.scores.write_scores; checked by fastgdr.report).
RESULTS_FILE_KEY, RESULTS_SHA256_KEY = "results_file", "results_sha256"
# Line numbers listed in a warning about non-rotations.
_LINES_SHOWN = 10
# Dataset names of the BOP benchmark (its VSD δ table; the cards in fastgdr.data.cards
# count too): a results file named for one of them was made for that dataset.
BOP_DATASET_NAMES = ("hb", "hope", "icbin", "icmi", "itodd", "lm", "lmo", "ruapc", "tless", "tudl", "tyol", "ycbv")
_FIELDS = HEADER.split(",")
# The files fastgdr.eval.scores.write_scores writes into an output folder.
SCORE_FILES = ("scores_bop19.json", "per_object.csv", "scores.md")


@dataclass
class PoseEstimate:
    """One pose estimate of one object instance.

    Attributes:
        scene_id: BOP scene id.
        im_id: image id within the scene.
        obj_id: BOP object id.
        score: confidence; higher is more confident.
        R: (3, 3) float64 rotation, model → camera.
        t: (3,) float64 translation, model → camera, mm.
        time: seconds spent on the whole image (negative: not available).
    """

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    R: np.ndarray
    t: np.ndarray
    time: float


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (identifies the results file a set of scores is for)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_result_filename(path: str | Path) -> tuple[str, str, str, str | None]:
    """Split a BOP results filename into its parts.

    ``{METHOD}_{DATASET}-{SPLIT}[-{SPLITTYPE}][_{OPTIONAL_ID}].csv``, e.g.
    ``gdrnpp_lmo-test.csv`` or ``mine_tless-test-primesense_run2.csv``. The name is split
    on ``_`` and its second part on ``-``, as the BOP toolkit does, so METHOD must not
    contain ``_``.

    Args:
        path: the results file (only its name is used).

    Returns:
        (method, dataset, split, split_type or None).

    Raises:
        ResultsFormatError: the name does not follow the pattern.
    """
    name = Path(path).name
    expected = (
        "expected {METHOD}_{DATASET}-{SPLIT}[-{SPLITTYPE}][_{OPTIONAL_ID}].csv "
        "with no '_' in METHOD, e.g. mymethod_lmo-test.csv"
    )
    if not name.endswith(".csv"):
        raise ResultsFormatError(f"{path}: bad results filename {name!r}: {expected}")
    parts = name[: -len(".csv")].split("_")
    if len(parts) < 2 or not parts[0]:
        raise ResultsFormatError(f"{path}: bad results filename {name!r}: {expected}")
    dataset_parts = parts[1].split("-")
    if len(dataset_parts) not in (2, 3) or not all(dataset_parts):
        if any("-" in part for part in parts[2:]):
            raise ResultsFormatError(
                f"{path}: bad results filename {name!r}: METHOD must not contain '_' "
                f"(the name is split on '_'); {expected}"
            )
        raise ResultsFormatError(f"{path}: bad results filename {name!r}: {expected}")
    split_type = dataset_parts[2] if len(dataset_parts) == 3 else None
    return parts[0], dataset_parts[0], dataset_parts[1], split_type


def rotation_defect(R: np.ndarray, tolerance: float = ROTATION_TOLERANCE) -> str | None:
    """Why a 3×3 matrix is not a rotation, or None when it is one.

    A rotation has RᵀR = I (every entry within ``tolerance``) and det R = +1 (a matrix
    with RᵀR = I and det R = −1 is a reflection).

    Args:
        R: (3, 3) matrix.
        tolerance: largest deviation of an entry of RᵀR from the identity's.

    Returns:
        A short reason, e.g. ``"RᵀR deviates from I by up to 0.3"``, or None.
    """
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    deviation = float(np.abs(R.T @ R - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if deviation > tolerance:
        return f"RᵀR deviates from I by up to {deviation:.3g}, det R = {det:.3g}"
    if det < 0:
        return f"det R = {det:.3g}: a reflection"
    return None


def load_results(path: str | Path, *, strict: bool = False) -> list[PoseEstimate]:
    """Read and validate a BOP 2019 results CSV.

    Checks, in file order, stopping at the first problem: the optional header on line 1;
    exactly 7 comma-separated fields per line; integer ids; finite numbers for score, the
    9 entries of R, the 3 entries of t and time; and that all estimates of one image have
    the same time within 1 ms. Blank lines are skipped.

    Then, over the whole file: estimates whose R is not a rotation (:func:`rotation_defect`)
    and a file without estimates. The BOP toolkit scores both as they are, and so does the
    evaluation here; they are reported with a :class:`~fastgdr.errors.ResultsWarning` (the
    count and the line numbers), or refused with ``strict``.

    Args:
        path: the CSV file.
        strict: raise instead of warning about non-rotations and an empty file.

    Returns:
        The estimates in file order.

    Raises:
        ResultsFormatError: one-line message naming the file, the line number (1-based)
            and what was expected.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsFormatError(f"{path}: results file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsFormatError(f"{path}: results file cannot be read: {exc}") from None
    estimates: list[PoseEstimate] = []
    line_numbers: list[int] = []
    first_line_of_image: dict[tuple[int, int], tuple[float, int]] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or (line_no == 1 and HEADER in line.replace(" ", "")):
            continue
        estimate = _parse_line(path, line_no, line)
        key = (estimate.scene_id, estimate.im_id)
        if key not in first_line_of_image:
            first_line_of_image[key] = (estimate.time, line_no)
        else:
            time, first_no = first_line_of_image[key]
            if abs(time - estimate.time) > TIME_TOLERANCE_S:
                raise ResultsFormatError(
                    f"{path}: line {line_no}: time {estimate.time} of scene {key[0]} image "
                    f"{key[1]} differs from time {time} on line {first_no}; expected the same "
                    f"per-image time (within 1 ms) for all estimates of an image"
                )
        estimates.append(estimate)
        line_numbers.append(line_no)
    not_rotations = [(line_numbers[k], rotation_defect(estimates[k].R)) for k in _non_rotations(estimates)]
    if not estimates:
        _complain(f"{path}: the file holds no estimates: every target counts as a miss", strict)
    if not_rotations:
        lines = ", ".join(str(line_no) for line_no, _ in not_rotations[:_LINES_SHOWN])
        more = f" (the first {_LINES_SHOWN} shown)" if len(not_rotations) > _LINES_SHOWN else ""
        _complain(
            f"{path}: {len(not_rotations)} of {len(estimates)} estimates have an R that is not a rotation "
            f"(RᵀR = I within {ROTATION_TOLERANCE:g} and det R = +1 expected), on lines {lines}{more}; "
            f"line {not_rotations[0][0]}: {not_rotations[0][1]}. They are scored with the matrix as given, "
            "as the BOP toolkit does",
            strict,
        )
    return estimates


def _non_rotations(estimates: list[PoseEstimate]) -> list[int]:
    """Indices of the estimates whose R :func:`rotation_defect` rejects (vectorized)."""
    if not estimates:
        return []
    R = np.stack([e.R for e in estimates])
    deviation = np.abs(R.transpose(0, 2, 1) @ R - np.eye(3)).max(axis=(1, 2))
    return np.flatnonzero((deviation > ROTATION_TOLERANCE) | (np.linalg.det(R) < 0)).tolist()


def _complain(message: str, strict: bool) -> None:
    """A :class:`ResultsWarning`, or with ``strict`` a :class:`ResultsFormatError`."""
    if strict:
        raise ResultsFormatError(f"{message} (refused in strict mode)")
    warnings.warn(message, ResultsWarning, stacklevel=3)


def check_dataset_name(path: str | Path, data: str | Path, card_name: str | None, *, strict: bool = False) -> None:
    """Check the DATASET of a results file name against the dataset folder it is scored on.

    * The folder has a dataset card and the name differs: always an error (evaluating one
      BOP dataset's results on another is never meant).
    * No card, and the name is a BOP dataset (:data:`BOP_DATASET_NAMES`, the cards): the file is named
      for another dataset; a warning.
    * No card, and the name is neither a known dataset nor the folder's name (as
      ``tools/test.py`` writes it: without ``_`` and ``-``): an unknown dataset name; a
      warning.

    Args:
        path: the results file (``METHOD_DATASET-SPLIT….csv``).
        data: the dataset folder.
        card_name: the name of the folder's dataset card, or None.
        strict: raise instead of warning.

    Raises:
        ResultsFormatError: a bad file name, a name that contradicts the card, or (with
            ``strict``) any of the warnings.
    """
    from fastgdr.data.cards import DATASET_CARDS

    name = parse_result_filename(path)[1]
    data = Path(data)
    if card_name is not None:
        if name != card_name:
            raise ResultsFormatError(f"{path}: the file name says dataset '{name}' but {data} is '{card_name}'")
        return
    known = sorted({*BOP_DATASET_NAMES, *DATASET_CARDS})
    folder = data.resolve().name.replace("_", "").replace("-", "")
    if name in known:
        _complain(
            f"{path}: the file is named for dataset '{name}', but {data} is not recognized as '{name}' "
            f"(folder name '{data.resolve().name}'): the estimates are scored against {data}",
            strict,
        )
    elif name.lower() != folder.lower():
        _complain(
            f"{path}: unknown dataset name '{name}': neither a known BOP dataset "
            f"({', '.join(known)}) nor the folder name '{data.resolve().name}' of {data}; "
            f"the estimates are scored against {data}",
            strict,
        )


def _parse_line(path: Path, line_no: int, line: str) -> PoseEstimate:
    where = f"{path}: line {line_no}"
    fields = line.split(",")
    if len(fields) != len(_FIELDS):
        raise ResultsFormatError(
            f"{where}: expected {len(_FIELDS)} comma-separated fields ({HEADER}), "
            f"got {len(fields)}"
        )
    scene_id, im_id, obj_id = (_integer(fields[i], _FIELDS[i], where) for i in range(3))
    score = _numbers(fields[3], 1, "score", where)[0]
    R = _numbers(fields[4], 9, "R", where).reshape(3, 3)
    t = _numbers(fields[5], 3, "t", where)
    time = _numbers(fields[6], 1, "time", where)[0]
    return PoseEstimate(scene_id, im_id, obj_id, float(score), R, t, float(time))


def _integer(field: str, name: str, where: str) -> int:
    try:
        return int(field.strip())
    except ValueError:
        raise ResultsFormatError(f"{where}: '{name}' must be an integer, got {field.strip()!r}") from None


def _numbers(field: str, count: int, name: str, where: str) -> np.ndarray:
    """Parse ``count`` space-separated finite numbers into a float64 array."""
    items = field.split()
    what = "a number" if count == 1 else f"{count} space-separated numbers"
    if len(items) != count:
        raise ResultsFormatError(f"{where}: '{name}' must be {what}, got {len(items)}: {field.strip()!r}")
    try:
        values = np.array([float(item) for item in items], dtype=np.float64)
    except ValueError:
        raise ResultsFormatError(f"{where}: '{name}' must be {what}, got {field.strip()!r}") from None
    if not np.all(np.isfinite(values)):
        raise ResultsFormatError(f"{where}: '{name}' must be finite, got {field.strip()!r}")
    return values


def save_results(path: str | Path, estimates: Iterable[PoseEstimate]) -> None:
    """Write estimates as a BOP 2019 results CSV (with header).

    Numbers are written with Python's shortest round-trip representation, so
    :func:`load_results` gives back exactly the same floats. R is written row-major, t in
    mm. Each line carries the estimate's own ``time``; give all estimates of an image
    the same time (inference does).

    Args:
        path: the CSV file to write (parent folders are created), atomically.
        estimates: the estimates, written in the given order.

    Raises:
        ResultsFormatError: an estimate holds a NaN or infinite number.
    """
    lines = [HEADER, *(format_estimate(e) for e in estimates)]
    atomic_write_text(path, "\n".join(lines) + "\n", what="results file")


def format_estimate(e: PoseEstimate) -> str:
    """One CSV line (no newline) of an estimate.

    Raises:
        ResultsFormatError: a number of the estimate is NaN or infinite (naming the image
            and object: a results file never holds them).
    """
    R = np.asarray(e.R, dtype=np.float64).reshape(9)
    t = np.asarray(e.t, dtype=np.float64).reshape(3)
    values = {"score": [e.score], "R": R, "t": t, "time": [e.time]}
    bad = [name for name, v in values.items() if not np.all(np.isfinite(np.asarray(v, dtype=np.float64)))]
    if bad:
        raise ResultsFormatError(
            f"non-finite {', '.join(bad)} in the estimate of scene {e.scene_id} image {e.im_id} object "
            f"{e.obj_id} (R={R.tolist()}, t={t.tolist()}): a results file cannot hold it"
        )
    return (
        f"{int(e.scene_id)},{int(e.im_id)},{int(e.obj_id)},{_num(e.score)},"
        f"{' '.join(_num(v) for v in R)},{' '.join(_num(v) for v in t)},{_num(e.time)}"
    )


class ResultsWriter:
    """Writes a BOP results CSV while the estimates are made.

    Each :meth:`write` appends the lines of an image to ``<path>.partial`` at once
    (validated first, then one write and a flush), so an interrupted or failing run
    keeps what it did in a file no tool mistakes for finished results; :meth:`close`
    renames it to ``path``. Used as a context manager, an exception leaves the partial
    file in place.

    Args:
        path: the results CSV to produce (parent folders are created).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self._file = self.partial.open("w", encoding="utf-8")
        self._file.write(HEADER + "\n")
        self._file.flush()

    def write(self, estimates: Iterable[PoseEstimate]) -> None:
        """Append estimates (one image's), all or none of them."""
        lines = [format_estimate(e) for e in estimates]
        if lines:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()
            self.count += len(lines)

    def close(self) -> Path:
        """Finish: the partial file becomes ``path``."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.path)
        return self.path

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def _num(value: float) -> str:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot write a non-finite number ({value}) to a results file")
    return repr(value)
