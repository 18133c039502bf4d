"""The acceleration study's summary: its evaluated runs read back, the seed spreads and
the sentences comparing variants, the targets measured, and the markdown and JSON written.

The summary (:func:`summarize`) is ``acceleration_study.md`` / ``.json``: per variant the mean
and min–max over seeds of AR (and its parts) and ADD(-S), the decoder, the iterations and
minutes trained, and a computed sentence saying whether its difference to its reference
exceeds the seed spread; the targets (distillation closes ≥ 30 % of the teacher–student
gap, P28 within 1 AR point of P) measured; every BOP results CSV copied under its run's name.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from fastgdr.errors import FastGDRError
from fastgdr.study.plan import (
    FINE_TUNE_FRACTION,
    VARIANTS,
    StageBuilder,
    StudyPlan,
    StudySettings,
    format_weight,
    run_name,
    teacher_name,
    tune_name,
)

DISTILLATION_GAP_TARGET = 0.30  # the issue's: close >= 30 % of the teacher-student gap
PRUNING_AR_TARGET = 0.01  # the issue's: P28 within 1 AR point of P
METRICS = (
    ("AR", "bop19_average_recall"), ("AR_VSD", "bop19_average_recall_vsd"),
    ("AR_MSSD", "bop19_average_recall_mssd"), ("AR_MSPD", "bop19_average_recall_mspd"),
    ("ADD(-S) 0.1d", "add_s_recall_0.10"),
)
AR_KEY = "bop19_average_recall"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def checkpoint_iteration(path: Path) -> int:
    """The iteration a finished run stopped at (``model_final.pth``)."""
    from fastgdr.checkpoint import read_checkpoint

    return int(read_checkpoint(path)["iteration"])


@dataclass(frozen=True)
class RunResult:
    """An evaluated run: its scores, decoder, iterations and minutes trained."""

    name: str
    scores: dict[str, float]
    decoder: str
    iterations: int | None
    minutes: float | None


def read_run(folder: Path) -> RunResult | None:
    """A run folder of the study (None when it has not been evaluated yet)."""
    scores_path = folder / "eval" / "scores_bop19.json"
    if not scores_path.is_file():
        return None
    inference = folder / "eval" / "inference.json"
    decoder = read_json(inference).get("decoder", "patchpnp") if inference.is_file() else "?"
    iterations = minutes = None
    final = folder / "model_final.pth"
    if final.is_file():  # the iteration it stopped at, not the last logged one
        from fastgdr.checkpoint import read_checkpoint

        state = read_checkpoint(final)
        iterations = int(state["iteration"]) if "iteration" in state else None
        minutes = state["elapsed_seconds"] / 60.0 if state.get("elapsed_seconds") is not None else None
    scores = {k: v for k, v in read_json(scores_path).items() if isinstance(v, (int, float))}
    return RunResult(folder.name, scores, decoder, iterations, minutes)


@dataclass(frozen=True)
class Spread:
    """Mean and min–max of one metric over seeds."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.mean(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def format(self) -> str:
        if len(self.values) == 1:
            return f"{self.mean:.3f}"
        return f"{self.mean:.3f} ({self.low:.3f}–{self.high:.3f})"


def signed(value: float) -> str:
    """``+0.012`` / ``-0.004`` with three decimals, never ``-0.000``."""
    return f"{round(value, 3) + 0.0:+.3f}"


def seed_spread_sentence(
    name: str, reference: str, runs: Mapping[int, float], reference_runs: Mapping[int, float]
) -> str:
    """Whether ``name``'s AR differs from ``reference``'s by more than the seed spread.

    The difference is that of the means; it *exceeds the seed spread* when the two
    min–max ranges over seeds do not overlap (every seed of one is above every seed of
    the other). Seeds both have give the paired differences.
    """
    if not runs or not reference_runs:
        return f"{name} vs {reference}: not evaluated yet."
    ours, theirs = Spread(tuple(runs.values())), Spread(tuple(reference_runs.values()))
    delta = ours.mean - theirs.mean
    paired = [runs[s] - reference_runs[s] for s in sorted(set(runs) & set(reference_runs))]
    paired_text = f" (paired by seed: {', '.join(map(signed, paired))})" if paired else ""
    head = f"{name} vs {reference}: {signed(delta)} AR{paired_text}"
    if len(runs) < 2 or len(reference_runs) < 2:
        return f"{head}; one seed on a side: no spread to compare the difference with."
    ranges = f"{name} {ours.low:.3f}–{ours.high:.3f}, {reference} {theirs.low:.3f}–{theirs.high:.3f}"
    if ours.low > theirs.high or ours.high < theirs.low:
        side = "above" if delta > 0 else "below"
        return f"{head}; the seed ranges do not overlap ({ranges}): the difference exceeds the seed spread ({name} is {side})."
    return f"{head}; the seed ranges overlap ({ranges}): the difference does not exceed the seed spread."


def gap_closed(student: float, plain: float, teacher: float) -> float | None:
    """The fraction of the teacher–student gap a distilled student closes, or None when
    the teacher is not better than the plain student (there is no gap)."""
    gap = teacher - plain
    return None if gap <= 0 else (student - plain) / gap


@dataclass
class StudySummary:
    """The study's numbers: per variant its runs (seed → result), the teachers', the tuning."""

    settings: StudySettings
    runs: dict[str, dict[int, RunResult]]
    teachers: list[RunResult | None]
    tuning: dict[float, RunResult | None]
    ot_weight: float | None

    def ar(self, variant: str) -> dict[int, float]:
        return {seed: r.scores[AR_KEY] for seed, r in self.runs.get(variant, {}).items() if AR_KEY in r.scores}


def collect(settings: StudySettings, plan: StudyPlan) -> StudySummary:
    runs = {}
    for variant in settings.variants:
        found = {seed: read_run(settings.out / run_name(variant, seed)) for seed in settings.seeds}
        runs[variant] = {seed: r for seed, r in found.items() if r is not None}
    teachers = [read_run(settings.out / teacher_name(k)) for k in range(len(StageBuilder(settings).teacher_paths()))] \
        if settings.needs_teachers else []
    tuning = {w: read_run(settings.out / tune_name(w, settings.tune_seed)) for w in settings.ot_weights} \
        if settings.ot_weight is None and settings.needs_ot_weight else {}
    return StudySummary(settings, runs, teachers, tuning, plan.ot_weight)


def choose_ot_weight(tuning: Mapping[float, RunResult | None]) -> float:
    """The candidate weight whose tuning run reached the highest AR (the smaller weight on a tie).

    Raises:
        FastGDRError: no tuning run was evaluated.
    """
    scored = [(r.scores[AR_KEY], -w, w) for w, r in tuning.items() if r is not None and AR_KEY in r.scores]
    if not scored:
        raise FastGDRError("no OT tuning run has scores: the OT weight cannot be chosen")
    return max(scored)[2]


def _budget_text(s: StudySettings) -> str:
    if s.iterations is not None:
        return f"{s.iterations} iterations per from-scratch run"
    if s.equalize == "time":
        return f"{s.minutes:g} minutes of training per from-scratch run"
    return (f"P trains {s.minutes:g} minutes; every other from-scratch run of a seed trains as many iterations as "
            "that seed's P reached (the papers compare at equal schedules)")


def table_markdown(summary: StudySummary) -> tuple[str, list[str]]:
    """The study table and the per-row sentences."""
    s = summary.settings
    header = ["variant", "what", "seeds", "decoder", "iterations", "train min",
              *[label for label, _ in METRICS], "vs", "Δ AR"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    sentences = []
    ensemble = len(summary.teachers) >= 2 or len(s.teachers) >= 2
    for variant in s.variants:
        v, runs = VARIANTS[variant], summary.runs.get(variant, {})
        what = v.description.format(geo_d=s.geo_d, pnp_d=s.pnp_d)
        if v.teachers == "all" and not ensemble:
            what += " (one teacher: perturbed-crop uncertainty, the single-teacher fallback)"
        ref = v.reference or "–"
        if not runs:
            lines.append("| " + " | ".join([variant, what, *["–"] * (4 + len(METRICS)), ref, "–"]) + " |")
            continue
        results = list(runs.values())
        cells = []
        for _, key in METRICS:
            values = tuple(r.scores[key] for r in results if key in r.scores)
            cells.append(Spread(values).format() if values else "–")
        iterations = [r.iterations for r in results if r.iterations is not None]
        minutes = [r.minutes for r in results if r.minutes is not None]
        delta = "–"
        if v.reference is not None and summary.ar(v.reference) and summary.ar(variant):
            ours, theirs = summary.ar(variant), summary.ar(v.reference)
            delta = signed(statistics.mean(ours.values()) - statistics.mean(theirs.values()))
            sentences.append(seed_spread_sentence(variant, v.reference, ours, theirs))
        row = [
            variant, what, ", ".join(map(str, sorted(runs))), ", ".join(sorted({r.decoder for r in results})),
            str(round(statistics.mean(iterations))) if iterations else "–",
            f"{statistics.mean(minutes):.1f}" if minutes else "–", *cells, ref, delta,
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), sentences


def targets_markdown(summary: StudySummary) -> list[str]:
    """The issue's two accuracy targets, measured, one sentence each."""
    out = []
    teacher = summary.teachers[0] if summary.teachers else None
    plain = summary.ar("p")
    if teacher is not None and plain:
        t_ar, p_ar = teacher.scores[AR_KEY], statistics.mean(plain.values())
        for variant in (v for v in summary.settings.variants if VARIANTS[v].kd):
            ar = summary.ar(variant)
            if not ar:
                continue
            closed = gap_closed(statistics.mean(ar.values()), p_ar, t_ar)
            if closed is None:
                out.append(f"- {variant}: the teacher (AR {t_ar:.3f}) is not better than plain P ({p_ar:.3f}): there "
                           "is no gap to close, so the ≥ 30 % target cannot be assessed.")
            else:
                met = "met" if closed >= DISTILLATION_GAP_TARGET else "not met"
                out.append(f"- {variant} closes {100 * closed:.0f} % of the teacher–student gap (teacher "
                           f"{t_ar:.3f}, plain P {p_ar:.3f}, {variant} {statistics.mean(ar.values()):.3f}): "
                           f"target ≥ 30 % {met} (FAST GDRNPP: 28 %, ADLP: 23 %).")
    p28 = summary.ar("p28")
    if plain and p28:
        delta = statistics.mean(p28.values()) - statistics.mean(plain.values())
        met = "met" if delta >= -PRUNING_AR_TARGET else "not met"
        out.append(f"- p28 − p = {signed(delta)} AR: target within 1 AR point (≥ −0.010) {met} "
                   "(FAST GDRNPP: −1.6 points on the 7-dataset mean).")
    return out or ["- not evaluated yet."]


def summarize(summary: StudySummary, command: str = "") -> str:
    """Write ``OUT/acceleration_study.md`` and ``.json`` and copy every run's BOP results
    CSV to ``OUT/bop_results/`` under its run's name; return the markdown."""
    from fastgdr.report import copy_results_csvs

    s = summary.settings
    table, sentences = table_markdown(summary)
    teachers = [t for t in summary.teachers if t is not None]
    teacher_text = ", ".join(f"{t.name} AR {t.scores[AR_KEY]:.3f}" for t in teachers) or "given checkpoints"
    lines = [
        f"# Acceleration study on {s.data}",
        "",
        f"Recipe `train.recipe={s.recipe}`, {s.input_res} px crops, "
        f"batch {s.batch if s.batch is not None else 'of the recipe'}, seeds {', '.join(map(str, s.seeds))}; "
        f"{_budget_text(s)}; pruned networks fine-tune {FINE_TUNE_FRACTION * 8:g}/8 of the budget (FAST GDRNPP: 15 of "
        f"40 epochs), head D={s.geo_d}, Patch-PnP D={s.pnp_d} for the `_pnp16` variant. Teachers: "
        f"{s.teacher_config.name if not s.teachers else 'given'} ({teacher_text}); the first one distils every "
        "single-teacher kind and is the teacher of the gap below, all of them form UA-KD's ensemble. "
        f"OT weight {format_weight(summary.ot_weight) if summary.ot_weight is not None else '–'}"
        + (" (tuned on seed " + str(s.tune_seed) + ", below)" if summary.tuning else "") + ". "
        f"Poses from `tools/test.py --decoder {s.decoder}`. Cells: mean over the seeds and, with several, the "
        "min–max range.",
        "",
        table,
        "",
        "## Differences against the seed spread",
        "",
        "A difference exceeds the seed spread when the min–max ranges over seeds of the two rows do not overlap.",
        "",
        *[f"- {sentence}" for sentence in sentences],
        "",
        "## Targets",
        "",
        *targets_markdown(summary),
    ]
    if summary.tuning:
        lines += ["", f"## OT weight, tuned at its own scale (seed {s.tune_seed}, P with OT only)", "",
                  "| weight | AR | ADD(-S) 0.1d |", "|---|---|---|"]
        for weight, result in summary.tuning.items():
            ar = f"{result.scores[AR_KEY]:.3f}" if result else "–"
            add = f"{result.scores.get('add_s_recall_0.10', float('nan')):.3f}" if result else "–"
            lines.append(f"| {format_weight(weight)} | {ar} | {add} |")
    evaluated = [s.out / run_name(v, seed) / "eval" for v in s.variants for seed in s.seeds]
    evaluated += [s.out / teacher_name(k) / "eval" for k in range(len(summary.teachers))]
    evaluated += [s.out / tune_name(w, s.tune_seed) / "eval" for w in summary.tuning]
    found = [run for run in map(_csv_run, evaluated) if run is not None]
    copied = copy_results_csvs(found, s.out / "bop_results")
    files = ("Every run's BOP results file, named after the run, is in `bop_results/`: "
             + ", ".join(f"`{name}`" for name in copied) + ".") if copied else "No results files yet."
    lines += ["", "## Files", "", files]
    if command:
        lines += ["", f"Command: `{command}`"]
    text = "\n".join(lines) + "\n"
    (s.out / "acceleration_study.md").write_text(text)
    data = {
        "settings": {k: _plain(v) for k, v in vars(s).items()},
        "ot_weight": summary.ot_weight,
        "runs": {variant: {str(seed): vars(r) for seed, r in runs.items()} for variant, runs in summary.runs.items()},
        "teachers": [vars(t) if t else None for t in summary.teachers],
        "tuning": {format_weight(w): (vars(r) if r else None) for w, r in summary.tuning.items()},
        "sentences": sentences,
        "targets": targets_markdown(summary),
    }
    (s.out / "acceleration_study.json").write_text(json.dumps(data, indent=2, default=str))
    return text


def _plain(value):
    """Paths as strings, tuples as lists (JSON)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _csv_run(eval_folder: Path):
    """A :class:`~fastgdr.report.RunSummary` carrying just the run's name and results CSV."""
    from fastgdr.report import RunSummary

    inference = eval_folder / "inference.json"
    if not inference.is_file():
        return None
    csv_name = read_json(inference).get("results_csv")
    if csv_name is None:
        return None
    return RunSummary(eval_folder.parent.name, "", {}, 0.0, 0, 0, results_csv=eval_folder / csv_name,
                      path=eval_folder)
