"""Summaries of evaluated runs: one markdown table of accuracy and speed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fastgdr.config import load_config
from fastgdr.errors import FastGDRError


@dataclass
class RunSummary:
    """Accuracy and timing of one evaluated run (an ``eval`` folder of tools/test.py)."""

    name: str
    backbone: str
    scores: dict[str, float]
    network_ms_per_image: float
    estimates: int
    images: int


def read_eval_dir(path: str | Path) -> RunSummary:
    """Read scores_bop19.json, inference.json and config.yaml written by tools/test.py."""
    path = Path(path)
    files = {name: path / name for name in ("scores_bop19.json", "inference.json", "config.yaml")}
    for name, file in files.items():
        if not file.is_file():
            raise FastGDRError(f"{path}: {name} is missing (is this an output folder of tools/test.py?)")
    scores = json.loads(files["scores_bop19.json"].read_text())
    inference = json.loads(files["inference.json"].read_text())
    cfg = load_config(files["config.yaml"])
    name = path.parent.name if path.name == "eval" else path.name
    return RunSummary(
        name=name,
        backbone=cfg.model.backbone.name,
        scores=scores,
        network_ms_per_image=1000.0 * inference["mean_network_seconds_per_image"],
        estimates=inference["estimates"],
        images=inference["images"],
    )


COLUMNS = (
    ("AR", "bop19_average_recall"),
    ("AR_VSD", "bop19_average_recall_vsd"),
    ("AR_MSSD", "bop19_average_recall_mssd"),
    ("AR_MSPD", "bop19_average_recall_mspd"),
    ("ADD(-S) 0.1d", "add_s_recall_0.10"),
    ("rot. err. (deg)", "add_s_mean_rotation_error_deg"),
    ("transl. err. (mm)", "add_s_mean_translation_error_mm"),
)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def markdown_table(runs: list[RunSummary]) -> str:
    """One row per run; recalls in [0, 1], errors of the estimates matched at 0.1·d."""
    header = ["run", "backbone", *[c for c, _ in COLUMNS], "network ms/image", "estimates"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = [run.name, run.backbone, *[_fmt(run.scores.get(key)) for _, key in COLUMNS],
                 f"{run.network_ms_per_image:.1f}", str(run.estimates)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
