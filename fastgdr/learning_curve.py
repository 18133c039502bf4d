"""Learning curves: accuracy on held-out images against minutes of training.

A timed training run (``train.time_budget_minutes``) saves its weights at a few fractions
of the budget (``train.snapshots``, each with the training time it had used) and at the
end. :func:`curve_points` evaluates every one of those checkpoints on a test split from
its detections (BOP 2019 AR and ADD(-S), as ``tools/test.py`` would), once per pose
decoder; :func:`write_curve_csv` and :func:`plot_curve` save the curve, and
:func:`plot_curve_comparison` draws several runs' curves in one figure.
``benchmarks/bench_learning.py`` runs the whole measurement.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

from fastgdr._compat import import_optional
from fastgdr.checkpoint import read_checkpoint
from fastgdr.data.bop import BopDataset
from fastgdr.data.cards import detect_card
from fastgdr.data.detections import load_detections
from fastgdr.errors import FastGDRError

SCORE_KEYS = {
    "ar": "bop19_average_recall",
    "ar_vsd": "bop19_average_recall_vsd",
    "ar_mssd": "bop19_average_recall_mssd",
    "ar_mspd": "bop19_average_recall_mspd",
    "add_s": "add_s_recall_0.10",
}


@dataclass(frozen=True)
class CurvePoint:
    """Scores of one checkpoint with one decoder.

    Attributes:
        minutes: training wall clock the checkpoint had used (0 for the untrained model).
        iteration: training iterations done.
        decoder: pose decoder (see ``fastgdr.inference.decoding.DECODERS``).
        ar, ar_vsd, ar_mssd, ar_mspd: BOP 2019 average recalls.
        add_s: ADD(-S) recall at 0.1 × the object diameter.
        checkpoint: file name of the checkpoint.
    """

    minutes: float
    iteration: int
    decoder: str
    ar: float
    ar_vsd: float
    ar_mssd: float
    ar_mspd: float
    add_s: float
    checkpoint: str


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """A timed run's snapshots (``snapshots/model_*.pth``) and ``model_final.pth``, in the
    order they were written."""
    run_dir = Path(run_dir)
    found = sorted((run_dir / "snapshots").glob("model_*.pth")) + [run_dir / "model_final.pth"]
    missing = [p for p in found if not p.exists()]
    if missing:
        raise FastGDRError(f"{run_dir}: no trained model ({missing[0]} is missing)")
    return found


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_root: str | Path,
    detections: str | Path,
    decoder: str,
    split: str = "test",
    device: str = "cpu",
) -> dict[str, float]:
    """BOP 2019 scores (``scores_bop19.json``'s keys) of a checkpoint's poses on ``split``,
    estimated from ``detections`` with ``decoder`` (ConvNeXt blocks fused, as tools/test.py)."""
    from fastgdr.eval.bop19 import evaluate
    from fastgdr.inference import build_predictor, infer_dataset, load_model
    from fastgdr.models.fusion import fuse_for_inference

    model, cfg = load_model(checkpoint)
    fuse_for_inference(model)
    dataset = BopDataset(data_root, detect_card(data_root))
    predictor = build_predictor(model, cfg, dataset, decoder, device=device)
    card = dataset.card
    estimates, _ = infer_dataset(
        predictor, dataset, split, load_detections(detections),
        card.det_topk_per_obj if card else None, card.det_score_threshold if card else 0.0,
    )
    return evaluate(dataset, estimates, split=split, device=device).scores


def curve_points(
    checkpoints: Sequence[Path],
    data_root: str | Path,
    detections: str | Path,
    decoders: Sequence[str],
    cache_dir: str | Path | None = None,
    announce: Callable[[str], None] = print,
) -> list[CurvePoint]:
    """Evaluate every checkpoint with every decoder.

    With ``cache_dir``, each evaluation's scores are kept in
    ``<cache_dir>/<checkpoint stem>_<decoder>.json`` and reused when the file is newer
    than the checkpoint (an interrupted benchmark resumes).
    """
    points = []
    for checkpoint in checkpoints:
        state = read_checkpoint(checkpoint)
        minutes = float(state.get("elapsed_seconds", 0.0)) / 60.0
        iteration = int(state.get("iteration", 0))
        for decoder in decoders:
            cached = Path(cache_dir) / f"{checkpoint.parent.name}_{checkpoint.stem}_{decoder}.json" if cache_dir else None
            if cached is not None and cached.exists() and cached.stat().st_mtime >= checkpoint.stat().st_mtime:
                scores = json.loads(cached.read_text())
            else:
                scores = evaluate_checkpoint(checkpoint, data_root, detections, decoder)
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    cached.write_text(json.dumps(scores, indent=1))
            point = CurvePoint(
                minutes, iteration, decoder, **{k: float(scores.get(v, math.nan)) for k, v in SCORE_KEYS.items()},
                checkpoint=checkpoint.name,
            )
            announce(f"{minutes:6.2f} min, iteration {iteration:6d}, {decoder:9s}: AR {point.ar:.4f}, ADD(-S) {point.add_s:.4f}")
            points.append(point)
    return points


def write_curve_csv(points: Sequence[CurvePoint], path: str | Path) -> Path:
    """One row per point, columns as :class:`CurvePoint`'s fields."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(CurvePoint)])
        writer.writeheader()
        for point in points:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(point).items()})
    return path


def read_curve_csv(path: str | Path) -> list[CurvePoint]:
    types = {fl.name: fl.type for fl in fields(CurvePoint)}
    cast = {"float": float, "int": int, "str": str}
    with Path(path).open(newline="") as f:
        return [CurvePoint(**{k: cast[types[k]](v) for k, v in row.items()}) for row in csv.DictReader(f)]


def plot_curve(points: Sequence[CurvePoint], path: str | Path, title: str) -> Path:
    """AR (solid) and ADD(-S) at 0.1 d (dashed) against training minutes, one colour per
    decoder (matplotlib's Agg canvas; no display needed)."""
    figure, axes = _curve_figure()
    for index, decoder in enumerate(dict.fromkeys(p.decoder for p in points)):
        mine = sorted((p for p in points if p.decoder == decoder), key=lambda p: p.minutes)
        color = f"C{index}"
        axes.plot([p.minutes for p in mine], [p.ar for p in mine], "o-", color=color, label=f"AR ({decoder})")
        axes.plot([p.minutes for p in mine], [p.add_s for p in mine], "s--", color=color, alpha=0.6,
                  label=f"ADD(-S) 0.1d ({decoder})")
    return _save_curve_figure(figure, axes, path, "recall on the held-out test split", title)


def plot_curve_comparison(
    runs: Sequence[tuple[str, Sequence[CurvePoint]]], path: str | Path, decoder: str = "patchpnp", title: str = ""
) -> Path:
    """AR against training minutes of several runs with one decoder, one line per run.

    Runs with the same label (the seeds of one setting) share a colour and one legend entry,
    so the spread across seeds shows as a band of lines.

    Raises:
        FastGDRError: a run has no point with ``decoder``.
    """
    figure, axes = _curve_figure()
    colors: dict[str, str] = {}
    for label, points in runs:
        mine = sorted((p for p in points if p.decoder == decoder), key=lambda p: p.minutes)
        if not mine:
            found = sorted({p.decoder for p in points})
            raise FastGDRError(f"run '{label}' has no point with decoder '{decoder}' (it has {found})")
        first = label not in colors
        colors.setdefault(label, f"C{len(colors)}")
        axes.plot([p.minutes for p in mine], [p.ar for p in mine], "o-", color=colors[label], alpha=0.8,
                  label=label if first else None)
    return _save_curve_figure(figure, axes, path, f"AR on the held-out test split ({decoder})", title)


def _curve_figure():
    """A figure with one axes for recall against minutes (matplotlib's Agg canvas; no display needed)."""
    figure_module = import_optional("matplotlib.figure", extra="plot", purpose="the learning-curve plot")
    agg = import_optional("matplotlib.backends.backend_agg", extra="plot", purpose="the learning-curve plot")
    figure = figure_module.Figure(figsize=(6.4, 4.2), dpi=120)
    agg.FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _save_curve_figure(figure, axes, path: str | Path, ylabel: str, title: str) -> Path:
    axes.set_xlabel("training wall clock (min)")
    axes.set_ylabel(ylabel)
    axes.set_ylim(bottom=0.0)
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path


def read_loss_curves(metrics_csv: str | Path) -> dict[str, list[tuple[int, float]]]:
    """The loss terms of a training run's metrics.csv (``loss_*`` and distillation's
    ``kd_*`` columns): term → [(iteration, value)].

    Raises:
        FastGDRError: the file is missing, empty or has no ``iter`` or no loss-term column.
    """
    path = Path(metrics_csv)
    if not path.is_file():
        raise FastGDRError(f"no training metrics at {path} (a run folder of tools/train.py holds metrics.csv)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    terms = [key for key in (rows[0] if rows else {}) if key.startswith(("loss_", "kd_"))]
    if not rows or "iter" not in rows[0] or not terms:
        raise FastGDRError(f"{path}: expected a header with 'iter' and loss_*/kd_* columns and at least one row")
    curves: dict[str, list[tuple[int, float]]] = {}
    for term in terms:
        points = [(int(row["iter"]), float(row[term])) for row in rows if row.get(term) not in (None, "")]
        curves[term.removeprefix("loss_")] = points
    return curves


def plot_loss_curves(runs: dict[str, str | Path], path: str | Path) -> Path:
    """One panel per run: every loss term against iterations, log scale (the region term is
    logged without its gradient-free constant, so a run that learns shows every term falling)."""
    figure_module = import_optional("matplotlib.figure", extra="plot", purpose="the loss-curve plot")
    agg = import_optional("matplotlib.backends.backend_agg", extra="plot", purpose="the loss-curve plot")
    columns = 2 if len(runs) > 1 else 1
    rows = math.ceil(len(runs) / columns)
    figure = figure_module.Figure(figsize=(6.0 * columns, 3.4 * rows), dpi=100)
    agg.FigureCanvasAgg(figure)
    for index, (name, metrics_csv) in enumerate(runs.items(), start=1):
        axes = figure.add_subplot(rows, columns, index)
        for term, points in read_loss_curves(metrics_csv).items():
            positive = [(i, v) for i, v in points if v > 0]
            if positive:
                axes.plot([i for i, _ in positive], [v for _, v in positive], label=term, linewidth=1.0,
                          linestyle="--" if term.startswith(("tf_", "kd_")) else "-")
        axes.set_yscale("log")
        axes.set_xlabel("iteration")
        axes.set_title(name, fontsize=9)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=6, ncol=3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path
