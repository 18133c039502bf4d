"""The score files of an evaluation: writing ``scores_bop19.json``, ``per_object.csv`` and
``scores.md`` from an :class:`~fastgdr.eval.recall.EvalResult`, formatting the scores as
markdown, and removing stale score files before a new results file is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fastgdr.eval.recall import EvalResult
from fastgdr.eval.results import RESULTS_FILE_KEY, RESULTS_SHA256_KEY, SCORE_FILES, file_sha256
from fastgdr.outputs import atomic_write_text


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
