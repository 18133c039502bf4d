"""The acceleration study: every lever of FAST GDRNPP and the distillation kinds, trained
alike from several seeds, evaluated, and tabulated against the seed spread.

Its modules, one job each: ``plan`` (the variants, the settings, the stages of each phase
and the estimated duration), ``summary`` (the evaluated runs read back, the seed spreads,
the targets, the markdown and JSON summary) and ``runner`` (the phases run or resumed,
then the summary). ``benchmarks/acceleration_study.py`` is its command line; code outside
the package imports the names below from ``fastgdr.study``.
"""

from fastgdr.study.plan import (
    FINE_TUNE_FRACTION,
    OT,
    TEACHER_SEED,
    TUNE_SEED,
    VARIANTS,
    StageBuilder,
    StudyPlan,
    StudySettings,
    Variant,
    estimate_minutes,
    fine_tune_iterations,
    format_weight,
    iteration_budget,
    plan_text,
    run_name,
    teacher_name,
    time_budget,
    tune_name,
    with_dependencies,
)
from fastgdr.study.runner import run_study, run_summary_only
from fastgdr.study.summary import (
    AR_KEY,
    DISTILLATION_GAP_TARGET,
    METRICS,
    PRUNING_AR_TARGET,
    RunResult,
    Spread,
    StudySummary,
    checkpoint_iteration,
    choose_ot_weight,
    collect,
    gap_closed,
    read_json,
    read_run,
    seed_spread_sentence,
    signed,
    summarize,
    table_markdown,
    targets_markdown,
)

__all__ = [
    "AR_KEY", "DISTILLATION_GAP_TARGET", "FINE_TUNE_FRACTION", "METRICS", "OT", "PRUNING_AR_TARGET",
    "TEACHER_SEED", "TUNE_SEED", "VARIANTS",
    "RunResult", "Spread", "StageBuilder", "StudyPlan", "StudySettings", "StudySummary", "Variant",
    "checkpoint_iteration", "choose_ot_weight", "collect", "estimate_minutes", "fine_tune_iterations",
    "format_weight", "gap_closed", "iteration_budget", "plan_text", "read_json", "read_run", "run_name",
    "run_study", "run_summary_only", "seed_spread_sentence", "signed", "summarize", "table_markdown",
    "targets_markdown", "teacher_name", "time_budget", "tune_name", "with_dependencies",
]
