"""Summaries of evaluated runs: a markdown table of accuracy and speed, a speed/accuracy plot.

Accuracy comes from the eval folders of ``tools/test.py``; latency either from a
benchmark of ``tools/bench_latency.py`` (``latency.json``) or from each run's own
network time per image (``inference.json``).

How a run finds its benchmark row (:func:`match_latency`): the candidates are the rows of
module ``network`` (crop batch in → poses out) at the chosen ROI count and runtime, one
per benchmarked config (the fastest one where several benchmarks timed the same config
name). Then, in this order:

1. **architecture**: the one config whose architecture (backbone and feature level, crop
   size, head and Patch-PnP widths, region count: :func:`~fastgdr.bench.architecture_key`)
   equals that of the run's ``config.yaml``;
2. **name**: else the config whose name equals the run's name (the folder above
   ``eval``, e.g. ``runs/p28/eval`` → ``p28``), ignoring case;
3. else none: the run keeps its row in the table with "–" for latency and is left out
   of the plot.

A run evaluated with depth refinement (``"refine": "fast"`` in its ``inference.json``,
FAST GDRNPP's "-R") adds the same config's ``refine_fast`` row at the same ROI count to
the network's (median and p90 are the sums of the parts'); without that row it has no
latency. With each run's own times (``--latency eval``) the run's refinement time per
image is added the same way.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from fastgdr._compat import import_optional
from fastgdr.bench import (
    REFINE_PREFIX,
    TARGETS_TITLE,
    BenchResult,
    BenchRow,
    TargetResult,
    architecture_key,
    format_spread,
)
from fastgdr.config import load_config
from fastgdr.errors import FastGDRError
from fastgdr.eval.results import RESULTS_FILE_KEY, RESULTS_SHA256_KEY, file_sha256

LatencySource = Literal["auto", "bench", "eval"]
PLOT_FILE = "speed_accuracy.png"


@dataclass
class RunSummary:
    """Accuracy and timing of one evaluated run (an ``eval`` folder of tools/test.py).

    ``architecture`` is the run's :func:`~fastgdr.bench.architecture_key`;
    ``decoder`` how tools/test.py read poses from the network (see
    ``fastgdr.inference.decoding.DECODERS``); ``refine`` its depth refiner (``"none"``, ``"fast"``, ``"icp"``) and
    ``refine_ms_per_image`` the refinement time per image tools/test.py measured.
    """

    name: str
    backbone: str
    scores: dict[str, float]
    network_ms_per_image: float
    estimates: int
    images: int
    architecture: str = ""
    decoder: str = "patchpnp"
    refine: str = "none"
    refine_ms_per_image: float = 0.0
    results_csv: Path | None = None
    path: Path | None = None  # the eval folder it was read from

    @property
    def average_recall(self) -> float | None:
        """BOP 2019 AR in [0, 1], or None when the run was not scored."""
        return self.scores.get("bop19_average_recall")


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
    results_csv = _results_csv(path, inference)
    _check_scores_source(path, scores, results_csv)
    return RunSummary(
        name=name,
        backbone=cfg.model.backbone.name,
        scores=scores,
        network_ms_per_image=1000.0 * inference["mean_network_seconds_per_image"],
        estimates=inference["estimates"],
        images=inference["images"],
        architecture=architecture_key(cfg.model),
        decoder=inference.get("decoder", "patchpnp"),
        refine=inference.get("refine", "none"),
        refine_ms_per_image=1000.0 * inference.get("mean_refine_seconds_per_image", 0.0),
        results_csv=results_csv,
        path=path,
    )


def _check_scores_source(path: Path, scores: dict, results_csv: Path | None) -> None:
    """Refuse scores computed from another results file than the CSV of the run (a stale
    scores_bop19.json); remove the source keys from ``scores``. Scores written without
    them (older versions) are taken as they are."""
    source, digest = scores.pop(RESULTS_FILE_KEY, None), scores.pop(RESULTS_SHA256_KEY, None)
    if source is None or digest is None or results_csv is None:
        return
    rerun = f"rescore it: python tools/eval_bop.py --results {results_csv} --data DATASET --out {path} --overwrite"
    if source != results_csv.name:
        raise FastGDRError(
            f"{path / 'scores_bop19.json'}: the scores are those of {source}, not of the run's results file "
            f"{results_csv.name}: they are stale; {rerun}"
        )
    if not results_csv.is_file() or file_sha256(results_csv) != digest:
        raise FastGDRError(
            f"{path / 'scores_bop19.json'}: {results_csv.name} has changed (or is missing) since it was scored: "
            f"the scores are stale; {rerun}"
        )


def _results_csv(path: Path, inference: dict) -> Path | None:
    """The BOP results file of an eval folder: named in inference.json, or (folders of
    older versions) the one file named like METHOD_DATASET-SPLIT.csv."""
    if "results_csv" in inference:
        return path / inference["results_csv"]
    candidates = list(path.glob("*_*-*.csv"))
    return candidates[0] if len(candidates) == 1 else None


# --------------------------------------------------------------------------- latency join


@dataclass(frozen=True)
class LatencyCandidate:
    """The benchmark rows a config offers: its network row, its refinement rows (method →
    row at the same ROI count, device and dtype) and the architecture it was timed with."""

    row: BenchRow
    refine: dict[str, BenchRow]
    architecture: str
    source: str  # the benchmark file or folder


@dataclass(frozen=True)
class LatencyMatch:
    """The benchmark rows joined to a run and the rule that chose them ("architecture" or "name")."""

    row: BenchRow
    rule: str
    source: str
    refine: BenchRow | None = None

    @property
    def median_ms(self) -> float:
        """Network median, plus the refinement median for a refined run."""
        return self.row.median_ms + (self.refine.median_ms if self.refine else 0.0)

    @property
    def p90_ms(self) -> float:
        """Network p90, plus the refinement p90 for a refined run (an upper estimate)."""
        return self.row.p90_ms + (self.refine.p90_ms if self.refine else 0.0)


def latency_candidates(
    benches: Sequence[tuple[str, BenchResult]], rois: int = 1, runtime: str = "torch"
) -> dict[str, LatencyCandidate]:
    """{config name: its ``network`` row at ``rois`` ROIs under ``runtime``, with its
    ``refine_*`` rows}; the fastest network row where several benchmarks (``(source,
    result)`` pairs) timed the same name."""
    best: dict[str, LatencyCandidate] = {}
    for source, bench in benches:
        for row in bench.rows:
            if row.module != "network" or row.rois != rois or row.runtime != runtime:
                continue
            known = best.get(row.config)
            if known is None or row.median_ms < known.row.median_ms:
                refine = {
                    r.module[len(REFINE_PREFIX):]: r for r in bench.rows
                    if r.module.startswith(REFINE_PREFIX) and r.config == row.config
                    and (r.rois, r.device, r.dtype) == (row.rois, row.device, row.dtype)
                }
                architecture = bench.configs.get(row.config, {}).get("architecture", "")
                best[row.config] = LatencyCandidate(row, refine, architecture, source)
    return best


def match_latency(run: RunSummary, candidates: dict[str, LatencyCandidate]) -> LatencyMatch | None:
    """The benchmark rows of ``run`` by the rules in the module docstring, or None."""
    same = [c for c in candidates.values() if run.architecture and c.architecture == run.architecture]
    if len(same) == 1:
        chosen, rule = same[0], "architecture"
    else:
        named = [c for name, c in candidates.items() if name.lower() == run.name.lower()]
        if not named:
            return None
        chosen, rule = named[0], "name"
    if run.refine == "none":
        return LatencyMatch(chosen.row, rule, chosen.source)
    refine = chosen.refine.get(run.refine)
    return LatencyMatch(chosen.row, rule, chosen.source, refine) if refine else None


# --------------------------------------------------------------------------- tables


COLUMNS = (
    ("AR", "bop19_average_recall"),
    ("AR_VSD", "bop19_average_recall_vsd"),
    ("AR_MSSD", "bop19_average_recall_mssd"),
    ("AR_MSPD", "bop19_average_recall_mspd"),
    ("ADD(-S) 0.1d", "add_s_recall_0.10"),
    ("rot. err. (deg)", "add_s_mean_rotation_error_deg"),
    ("transl. err. (mm)", "add_s_mean_translation_error_mm"),
)
LATENCY_COLUMNS = ("bench config", "latency ms", "p90 ms", "params (M)", "GFLOPs", "GFLOP/s")


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _latency_cells(match: LatencyMatch | None) -> list[str]:
    if match is None:
        return ["–"] * len(LATENCY_COLUMNS)
    r = match.row
    name = f"{r.config} ({match.rule})" + (f" + {match.refine.module}" if match.refine else "")
    return [name, f"{match.median_ms:.2f}", f"{match.p90_ms:.2f}", f"{r.params / 1e6:.2f}", f"{r.gflops:.2f}",
            f"{r.gflop_per_s:.1f}"]


def markdown_table(runs: list[RunSummary], latency: Sequence[LatencyMatch | None] | None = None) -> str:
    """One row per run; recalls in [0, 1], errors of the estimates matched at 0.1·d.

    Args:
        latency: one benchmark match (or None) per run; adds the latency columns
            (benchmark config, matching rule and refinement row, median and p90 ms with
            refinement, the network's parameters, GFLOPs and GFLOP/s of the whole batch).
    """
    header = ["run", "backbone", "decoder", *[c for c, _ in COLUMNS], "network ms/image", "estimates"]
    if latency is not None:
        header += LATENCY_COLUMNS
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, run in enumerate(runs):
        cells = [run.name, run.backbone, run.decoder, *[_fmt(run.scores.get(key)) for _, key in COLUMNS],
                 f"{run.network_ms_per_image:.1f}", str(run.estimates)]
        if latency is not None:
            cells += _latency_cells(latency[i])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SEED_SUFFIX = re.compile(r"^(?P<base>.+)_seed(?P<seed>\d+)$")
SPREAD_COLUMNS = (("AR", "bop19_average_recall"), ("ADD(-S) 0.1d", "add_s_recall_0.10"))


def seed_spread_markdown(runs: Sequence[RunSummary]) -> str | None:
    """Mean and min–max over seeds of the runs named ``NAME_seedK``, one row per NAME
    with at least two seeds; None when there is no such group."""
    groups: dict[str, list[tuple[int, RunSummary]]] = {}
    for run in runs:
        match = SEED_SUFFIX.match(run.name)
        if match:
            groups.setdefault(match["base"], []).append((int(match["seed"]), run))
    rows = []
    for base, members in groups.items():
        if len(members) < 2:
            continue
        cells = []
        for _, key in SPREAD_COLUMNS:
            values = [run.scores[key] for _, run in members if run.scores.get(key) is not None]
            cells.append(f"{sum(values) / len(values):.3f} ({min(values):.3f}–{max(values):.3f})" if values else "–")
        seeds = ", ".join(str(seed) for seed, _ in sorted(members, key=lambda m: m[0]))
        rows.append(f"| {base} | {seeds} | " + " | ".join(cells) + " |")
    if not rows:
        return None
    header = "| runs | seeds | " + " | ".join(f"{label} mean (min–max)" for label, _ in SPREAD_COLUMNS) + " |"
    return "\n".join([header, "|" + "---|" * (len(SPREAD_COLUMNS) + 2), *rows])


def targets_markdown(results: Sequence[TargetResult]) -> str:
    """The speed targets as a markdown table: target, ROIs, measured ratio, the IQR of the
    per-round ratios, fastgdr's target, met, FAST GDRNPP's own value, note."""
    lines = ["| target | ROIs | measured | per-round spread | target (fastgdr) | met | FAST GDRNPP | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        measured = "–" if r.measured is None else f"{r.measured:.3f}"
        met = "–" if r.met is None else ("yes" if r.met else "no")
        limit = f"{'≥' if r.at_least else '≤'} {r.limit:.2f}"
        lines.append(f"| {r.description} | {'–' if r.rois is None else r.rois} | {measured} | {format_spread(r)} | "
                     f"{limit} | {met} | {r.reference or '–'} | {r.note} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plot


def pareto_front(latency_ms: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (lower or equal latency and higher
    or equal accuracy, one of them strictly), ordered by latency."""
    order = sorted(range(len(latency_ms)), key=lambda i: (latency_ms[i], -accuracy[i]))
    front: list[int] = []
    for i in order:
        if not front or accuracy[i] > accuracy[front[-1]]:
            front.append(i)
    return front


def plot_speed_accuracy(
    labels: Sequence[str], latency_ms: Sequence[float], ar: Sequence[float], path: str | Path, xlabel: str,
    title: str = "Average recall vs latency",
) -> Path:
    """A labelled AR (%) over latency (ms) scatter with its Pareto front, as a PNG.

    In the style of FAST GDRNPP's Figure 1: one point per configuration, labelled; the
    front joins the configurations no other one beats in both speed and accuracy.
    Drawn with matplotlib's Agg canvas (no display, no global backend change).

    Args:
        ar: average recalls in [0, 1] (plotted in %).
    """
    figure_module = import_optional("matplotlib.figure", extra="plot", purpose="the speed/accuracy plot")
    agg = import_optional("matplotlib.backends.backend_agg", extra="plot", purpose="the speed/accuracy plot")
    if not labels:
        raise FastGDRError("no run has both an AR and a latency to plot")
    fig = figure_module.Figure(figsize=(7.0, 4.8), layout="constrained")
    agg.FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    percent = [100.0 * a for a in ar]
    ax.scatter(latency_ms, percent, s=36, color="tab:blue", zorder=3)
    for label, x, y in zip(labels, latency_ms, percent):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
    front = pareto_front(latency_ms, percent)
    ax.plot([latency_ms[i] for i in front], [percent[i] for i in front], "--", color="tab:red",
            label="Pareto front", zorder=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("AR (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.12)  # room for the labels
    ax.legend(loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    """What :func:`build_report` wrote and the table it contains."""

    readme: Path
    plot: Path | None
    table: str


INTRO = (
    "BOP 2019 average recalls (VSD, MSSD, MSPD) and ADD(-S) on the evaluated split; rotation/translation errors "
    "are means over the estimates matched at 0.1·d; network time per image is measured by tools/test.py on the "
    "machine that ran it (crops, forward, decoding)."
)


BOP_CSV_DIR = "bop_results"
REPORT_FILES = ("README.md", PLOT_FILE, BOP_CSV_DIR)  # what build_report writes into its folder


def results_csv_name(run: RunSummary) -> str | None:
    """The name a run's BOP results file gets in a report: ``RUN_DATASET-SPLIT.csv``, the
    run's name (with ``_`` written ``-``, as BOP splits file names at ``_``) in place of
    the method name tools/test.py was given; None for a run without a results file."""
    if run.results_csv is None:
        return None
    _, sep, dataset_split = run.results_csv.name.partition("_")
    return f"{run.name.replace('_', '-')}_{dataset_split if sep else run.results_csv.name}"


def check_results_csv_names(runs: Sequence[RunSummary]) -> dict[str, RunSummary]:
    """{file name: run} of :func:`results_csv_name` for every run with a results file.

    Raises:
        FastGDRError: two runs would be written to one file (same name up to ``_``/``-``
            and letter case, which case-insensitive file systems do not tell apart).
    """
    names: dict[str, RunSummary] = {}
    for run in runs:
        name = results_csv_name(run)
        if name is None:
            continue
        clash = next((other for key, other in names.items() if key.lower() == name.lower()), None)
        if clash is not None:
            where = lambda r: f"'{r.name}'" + (f" ({r.path})" if r.path is not None else "")
            raise FastGDRError(
                f"runs {where(clash)} and {where(run)} would both be saved as {BOP_CSV_DIR}/{name}: "
                "give their eval folders distinct names (a run is named after the folder above 'eval')"
            )
        names[name] = run
    return names


def copy_results_csvs(runs: Sequence[RunSummary], folder: Path) -> list[str]:
    """Copy each run's BOP results CSV (named in its inference.json) into ``folder`` under
    :func:`results_csv_name`, never two runs to one file; the names written."""
    names = []
    for name, run in check_results_csv_names(runs).items():
        if not run.results_csv.is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.results_csv, folder / name)
        names.append(name)
    return names


def _matmul_description(bench: BenchResult) -> str:
    by_rois = bench.matmul.get("by_rois") or {}
    if by_rois:
        values = ", ".join(f"{v['gflop_per_s']:.1f} GFLOP/s at {rois} ROI{'s' if int(rois) > 1 else ''}"
                           for rois, v in by_rois.items())
        return f"; 2048² fp32 matmul timed in each round-robin: {values}"
    matmul = bench.matmul_gflop_per_s
    return f"; 2048² fp32 matmul {matmul:.1f} GFLOP/s (timed once, before the configurations)" if matmul else ""


def _bench_description(source: str, bench: BenchResult) -> str:
    env, s = bench.environment, bench.settings
    return (
        f"`{source}`: {env.get('device')} ({env.get('device_name')}), {env.get('threads')} threads, torch "
        f"{env.get('torch_version')}, {s.get('dtype')}, channels_last={s.get('channels_last')}, "
        f"compile={s.get('compile')}, fused ConvNeXt blocks={s.get('fused', False)}, median of {s.get('repeats')} after {s.get('warmup')} warm-up rounds"
        + _matmul_description(bench)
        + (f"; load average {env['load_average_1min']:.1f} on {env.get('cpu_count')} cores at the start"
           if env.get("load_average_1min") is not None else "")
    )


def build_report(
    runs: Sequence[RunSummary],
    benches: Sequence[tuple[str, BenchResult]],
    out: str | Path,
    rois: int = 1,
    runtime: str = "torch",
    latency: LatencySource = "auto",
    notes: str | None = None,
) -> Report:
    """Write ``OUT/README.md`` (table, seed spread, plot, latency notes, speed targets)
    and the plot.

    Args:
        runs: evaluated runs (:func:`read_eval_dir`).
        benches: ``(source, result)`` of benchmarks (:func:`fastgdr.bench.read_results`).
        rois: ROI count of the benchmark rows joined to the runs.
        runtime: ``"torch"`` or ``"onnxruntime"`` rows.
        latency: the plot's x axis: ``"bench"`` (joined benchmark rows), ``"eval"`` (each
            run's network time per image, the paper's latency: forward time over all
            test images / images) or ``"auto"`` (bench when a benchmark is given).
        notes: markdown shown under the title (what was run, budgets, seeds).
    """
    if latency not in ("auto", "bench", "eval"):
        raise FastGDRError(f"unknown latency source {latency!r}. Valid: auto, bench, eval")
    use_bench = latency == "bench" or (latency == "auto" and bool(benches))
    if use_bench and not benches:
        raise FastGDRError("latency source 'bench' needs a benchmark folder (latency.json of tools/bench_latency.py)")
    check_results_csv_names(runs)  # before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    candidates = latency_candidates(benches, rois, runtime)
    matches = [match_latency(run, candidates) for run in runs] if benches else None
    table = markdown_table(list(runs), matches)
    sections = ["# fastgdr report", *([notes] if notes else []), INTRO, table]
    spread = seed_spread_markdown(runs)
    if spread is not None:
        sections += ["## Across seeds", "Runs that differ only in their training seed: how far apart they land "
                     "says how much of a difference between methods is noise.", spread]

    points = []
    for i, run in enumerate(runs):
        if use_bench:
            x = matches[i].median_ms if matches and matches[i] else None
        else:
            x = run.network_ms_per_image + run.refine_ms_per_image
        if x is not None and run.average_recall is not None:
            points.append((run.name, x, run.average_recall))
    if use_bench:
        xlabel = f"latency (ms): network, {rois} ROI{'s' if rois > 1 else ''}, {runtime}"
        how = (f"x: median latency of the whole network (crop batch in → poses out) at {rois} ROI(s) under "
               f"{runtime}, plus depth refinement for refined runs, joined by architecture, else by run name "
               "(see `fastgdr/report.py`).")
    else:
        xlabel = "network (+ refinement) time per image (ms), tools/test.py"
        how = ("x: each run's network time per image (crops, forward, decoding), plus its depth-refinement time, "
               "measured by tools/test.py.")
    plot = None
    if points:
        plot = plot_speed_accuracy(*zip(*points), path=out / PLOT_FILE, xlabel=xlabel)
        sections += ["## Speed vs accuracy", f"![AR vs latency]({PLOT_FILE})", how + " The dashed line is the "
                     "Pareto front (no other run is both faster and more accurate)."]
    else:
        sections += ["## Speed vs accuracy", "No run has both an AR and a latency: no plot."]
    for source, bench in benches:
        sections += ["## Latency benchmark and speed targets", _bench_description(source, bench),
                     TARGETS_TITLE + ".", targets_markdown(bench.targets())]
    copied = copy_results_csvs(runs, out / BOP_CSV_DIR)
    if copied:
        sections += ["## BOP results files", f"The runs' BOP-format result files (submission CSVs) are in "
                     f"`{BOP_CSV_DIR}/`, each named after its run: " + ", ".join(f"`{name}`" for name in copied) + "."]
    readme = out / "README.md"
    readme.write_text("\n\n".join(sections) + "\n")
    return Report(readme, plot, table)
