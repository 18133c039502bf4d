"""Running the acceleration study: every phase run (or resumed) as tool stages, the
reference iterations and the OT weight passed on between phases, then the summary."""

from __future__ import annotations

import json
from typing import Callable

from fastgdr.pipeline import run_pipeline
from fastgdr.study.plan import StageBuilder, StudyPlan, StudySettings, format_weight, run_name, tune_name
from fastgdr.study.summary import checkpoint_iteration, choose_ot_weight, collect, read_json, read_run, summarize


def run_study(settings: StudySettings, announce: Callable[[str], None] = print, command: str = "") -> str:
    """Run (or resume) every phase, then write the summary; return its markdown."""
    s = settings
    s.out.mkdir(parents=True, exist_ok=True)
    builder = StageBuilder(s)
    logs = s.out / "logs"
    run_pipeline(builder.reference_phase(), logs / "1_reference" / "stages", announce)
    plan = StudyPlan()
    if s.iterations is None and s.equalize == "iterations":
        plan.reference_iterations = {seed: checkpoint_iteration(s.out / run_name("p", seed) / "model_final.pth")
                                     for seed in s.seeds}
        announce("reference iterations per seed: " + ", ".join(f"seed {k}: {v}" for k, v in plan.reference_iterations.items()))
    if s.needs_ot_weight:
        if s.ot_weight is not None:
            plan.ot_weight = s.ot_weight
        else:
            run_pipeline(builder.tuning_phase(plan), logs / "2_tuning" / "stages", announce)
            tuning = {w: read_run(s.out / tune_name(w, s.tune_seed)) for w in s.ot_weights}
            plan.ot_weight = choose_ot_weight(tuning)
            announce(f"OT weight {format_weight(plan.ot_weight)} (best AR of the tuning runs)")
        (s.out / "ot_weight.json").write_text(json.dumps({"ot_weight": plan.ot_weight}))
    run_pipeline(builder.variants_phase(plan), logs / "3_variants" / "stages", announce)
    return summarize(collect(s, plan), command)


def run_summary_only(settings: StudySettings, command: str = "") -> str:
    """The summary of whatever runs exist (nothing is trained)."""
    weight_file = settings.out / "ot_weight.json"
    weight = read_json(weight_file)["ot_weight"] if weight_file.is_file() else settings.ot_weight
    return summarize(collect(settings, StudyPlan(ot_weight=weight)), command)
