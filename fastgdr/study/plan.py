"""The acceleration study's plan: its variants and settings, the stages that train,
prune and evaluate them phase by phase, and the estimate of its duration.

Variants (:data:`VARIANTS`; runs are named ``{variant}_seed{seed}``):

================  =========================================================================
``p``             P (ConvNeXt-V2 Pico) from scratch: the reference
``p28``           FAST GDRNPP's P28: ``p`` of the same seed pruned (geometric head D=28,
                  Patch-PnP unpruned) and fine-tuned for 3/8 of the budget (the paper's 15
                  of 40 epochs)
``p28_pnp16``     the same with Patch-PnP pruned too (D=16, the setting of the paper's §4.5)
``n``             N (ConvNeXt-V2 Nano) from scratch
``n28``           ``n`` pruned like ``p28`` and fine-tuned
``kd_feature``    P distilled with FAST GDRNPP's feature MSE (×1)
``kd_ot``         P distilled with ADLP's OT (its published setting; the weight tuned)
``kd_naive``      P distilled per cell (L1, ×1: ADLP's Naive-KD baseline)
``kd_ua``         P distilled with UA-KD: OT weighted by a deep ensemble's confidence, and
                  features at the cells the OT plan pairs
``kd_feature_ot`` feature MSE + OT: the combination ADLP reports with FKD
``p28_kd``        FAST GDRNPP's P28-D: ``kd_feature`` pruned like ``p28`` and fine-tuned
================  =========================================================================

Every run uses the same training recipe, crop size, batch and seeds. Budget: with
``iterations`` every from-scratch run trains that many iterations; otherwise ``p`` trains
``minutes`` of wall clock and, with ``equalize="iterations"`` (the default, the papers'
"same schedule"), every other from-scratch run of the same seed trains as many iterations as
``p`` reached, or, with ``equalize="time"``, the same minutes. Fine-tuning of pruned networks
gets 3/8 of that. Teachers (``teachers`` of them, an ensemble for UA-KD; the first one for the
other kinds) train ``teacher_minutes`` (or ``teacher_iterations``). The OT weight is tuned at
its own scale on a seed of its own (``ot_weights``), unless given.

Stages are real tool runs (:mod:`fastgdr.pipeline`): a re-run skips finished ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Sequence

from fastgdr.errors import FastGDRError
from fastgdr.pipeline import CONFIGS, Stage

FINE_TUNE_FRACTION = 3 / 8  # FAST GDRNPP fine-tunes pruned networks 15 of the 40 epochs
TEACHER_SEED = 100  # teachers k = 0, 1, … train with seed 100 + k
TUNE_SEED = 1000  # the OT weight is tuned on a seed the study does not report


@dataclass(frozen=True)
class Variant:
    """One row of the study.

    Attributes:
        name: run-name prefix (runs are ``{name}_seed{seed}``).
        description: what it is, for the table.
        config: config file of a from-scratch run (``configs/``); None for a pruned one.
        kd: distillation overrides (a distilled P); ``{ot_weight}`` is filled in.
        teachers: ``"first"`` (the first teacher) or ``"all"`` (the ensemble).
        prune_from: the variant whose run of the same seed is pruned (then fine-tuned).
        prune_pnp: prune Patch-PnP too (by the study's ``pnp_d``).
        reference: the variant it is compared with.
        needs_ot_weight: uses the (tuned) OT weight.
    """

    name: str
    description: str
    config: str | None = None
    kd: tuple[str, ...] = ()
    teachers: Literal["first", "all"] = "first"
    prune_from: str | None = None
    prune_pnp: bool = False
    reference: str | None = None
    needs_ot_weight: bool = False


OT = "kd.ot.weight={ot_weight}"  # ADLP's setting is kd.ot's default
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("p", "P from scratch (the reference)", config="p.yaml"),
    Variant("p28", "FAST GDRNPP's P28: p pruned (head D={geo_d}, Patch-PnP unpruned), fine-tuned 3/8",
            prune_from="p", reference="p"),
    Variant("p28_pnp16", "p28 with Patch-PnP pruned too (D={pnp_d}), fine-tuned 3/8", prune_from="p", prune_pnp=True,
            reference="p28"),
    Variant("n", "N from scratch", config="n.yaml", reference="p"),
    Variant("n28", "FAST GDRNPP's N28: n pruned (head D={geo_d}), fine-tuned 3/8", prune_from="n", reference="n"),
    Variant("kd_feature", "P + feature MSE ×1 (FAST GDRNPP's distillation)", config="p.yaml",
            kd=("kd.feature.weight=1",), reference="p"),
    Variant("kd_ot", "P + OT, ADLP's setting (region sets, blur 0.001, reach 0.5), tuned weight", config="p.yaml",
            kd=(OT,), reference="p", needs_ot_weight=True),
    Variant("kd_naive", "P + per-cell L1 ×1 (ADLP's Naive-KD baseline)", config="p.yaml",
            kd=("kd.naive.weight=1",), reference="p"),
    Variant("kd_ua", "P + UA-KD: ensemble-weighted OT + features at OT-paired cells ×1", config="p.yaml",
            kd=(OT, "kd.uncertainty.enabled=true", "kd.uncertainty.feature_weight=1"), teachers="all",
            reference="p", needs_ot_weight=True),
    Variant("kd_feature_ot", "P + feature MSE ×1 + OT (ADLP with FKD)", config="p.yaml",
            kd=("kd.feature.weight=1", OT), reference="p", needs_ot_weight=True),
    Variant("p28_kd", "FAST GDRNPP's P28-D: kd_feature pruned like p28, fine-tuned 3/8", prune_from="kd_feature",
            reference="p28"),
)}


@dataclass
class StudySettings:
    """What the study trains and how (``benchmarks/acceleration_study.py`` fills it).

    Attributes:
        data, detections, out: dataset, its test detections, study folder.
        seeds: training seeds of every variant.
        variants: the variants to run (their dependencies are added).
        minutes: wall-clock budget of ``p`` (and of every from-scratch run with
            ``equalize="time"``); ignored when ``iterations`` is set.
        iterations: a fixed iteration budget for every from-scratch run instead.
        equalize: ``iterations`` (every from-scratch run trains as many iterations as ``p``
            of its seed) or ``time`` (the same minutes).
        recipe: ``train.recipe`` of every run.
        input_res: crop size of every run.
        batch: ``train.batch_size`` (None: the recipe's).
        workers: ``data.num_workers``.
        decoder: ``tools/test.py --decoder`` of every evaluation.
        teachers: teacher checkpoints to use (none: train ``teacher_count`` of them).
        teacher_count, teacher_config, teacher_minutes, teacher_iterations: teachers to train.
        ot_weight: the OT weight; None tunes it over ``ot_weights`` on seed ``tune_seed``.
        geo_d, pnp_d: pruning of P28 (head) and of the Patch-PnP-pruned variants.
        overrides: dotted overrides for every from-scratch run (``model.*`` ones are left
            out of fine-tuning: a pruned network's config is its checkpoint's).
    """

    data: Path
    detections: Path
    out: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[str, ...] = tuple(VARIANTS)
    minutes: float = 20.0
    iterations: int | None = None
    equalize: Literal["iterations", "time"] = "iterations"
    recipe: str = "short"
    input_res: int = 128
    batch: int | None = None
    workers: int = 1
    decoder: str = "patchpnp"
    teachers: tuple[Path, ...] = ()
    teacher_count: int = 3
    teacher_config: Path = CONFIGS / "n.yaml"
    teacher_minutes: float | None = None
    teacher_iterations: int | None = None
    ot_weight: float | None = None
    ot_weights: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
    tune_seed: int = TUNE_SEED
    geo_d: int = 28
    pnp_d: int = 16
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise FastGDRError(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
        if not self.seeds:
            raise FastGDRError("give at least one seed")
        if self.tune_seed in self.seeds:
            raise FastGDRError(f"the tuning seed {self.tune_seed} is one of the study's seeds: choose another "
                               "(the reported runs must not be the ones the weight was chosen on)")
        if (self.iterations is not None and self.iterations < 1) or self.minutes <= 0:
            raise FastGDRError("the budget must be positive (--minutes, --iterations)")
        if not self.teachers and self.teacher_count < 1 and self.needs_teachers:
            raise FastGDRError("distillation needs teachers: --teacher PATH or --teacher-count >= 1")
        self.variants = with_dependencies(self.variants)

    @property
    def needs_teachers(self) -> bool:
        return any(VARIANTS[v].kd for v in with_dependencies(self.variants))

    @property
    def needs_ot_weight(self) -> bool:
        return any(VARIANTS[v].needs_ot_weight for v in self.variants)

    @property
    def teacher_budget(self) -> tuple[str, ...]:
        """Budget overrides of the teachers (default: twice the student's)."""
        if self.teacher_iterations is not None:
            return iteration_budget(self.teacher_iterations)
        if self.teacher_minutes is not None:
            return time_budget(self.teacher_minutes)
        if self.iterations is not None:
            return iteration_budget(2 * self.iterations)
        return time_budget(2 * self.minutes)


def with_dependencies(variants: Sequence[str]) -> tuple[str, ...]:
    """``variants`` plus what they are pruned from, and ``p`` (the reference), in
    :data:`VARIANTS` order."""
    wanted = set(variants) | {"p"}
    changed = True
    while changed:
        extra = {VARIANTS[v].prune_from for v in wanted if VARIANTS[v].prune_from} - wanted
        changed = bool(extra)
        wanted |= extra
    return tuple(v for v in VARIANTS if v in wanted)


def run_name(variant: str, seed: int) -> str:
    return f"{variant}_seed{seed}"


def teacher_name(k: int) -> str:
    return f"teacher{k}"


def tune_name(weight: float, seed: int) -> str:
    """``tune_ot_w0p1_seed1000`` for weight 0.1 (no dots in run names)."""
    return f"tune_ot_w{format_weight(weight).replace('.', 'p')}_seed{seed}"


def format_weight(weight: float | str) -> str:
    return weight if isinstance(weight, str) else f"{weight:g}"


def time_budget(minutes: float) -> tuple[str, ...]:
    return (f"train.time_budget_minutes={minutes:g}", "train.iterations=null")


def iteration_budget(iterations: int | str) -> tuple[str, ...]:
    """``train.iterations=N`` (at least 1); a string is a placeholder (``--dry-run``)."""
    value = iterations if isinstance(iterations, str) else max(1, iterations)
    return (f"train.iterations={value}", "train.time_budget_minutes=null")


def fine_tune_iterations(iterations: int | str) -> int | str:
    if isinstance(iterations, str):
        return f"3/8×{iterations}"
    return round(FINE_TUNE_FRACTION * iterations)


@dataclass
class StudyPlan:
    """What later phases need from earlier ones: the reference runs' iterations per seed
    (``equalize="iterations"``) and the OT weight."""

    reference_iterations: dict[int, int | str] = field(default_factory=dict)
    ot_weight: float | str | None = None


class StageBuilder:
    """The stages of the study, phase by phase (each a list for
    :func:`~fastgdr.pipeline.run_pipeline`)."""

    def __init__(self, settings: StudySettings) -> None:
        self.s = settings

    # ---- budgets and common arguments

    def common(self, seed: int) -> tuple[str, ...]:
        s = self.s
        batch = (f"train.batch_size={s.batch}",) if s.batch is not None else ()
        return (f"model.input_res={s.input_res}", f"train.recipe={s.recipe}", f"train.seed={seed}", *batch,
                f"data.num_workers={s.workers}", "train.log_period=20", "train.checkpoint_period=50", *s.overrides)

    def fine_tune_common(self, seed: int) -> tuple[str, ...]:
        """The common overrides minus ``model.*`` (a pruned network keeps its checkpoint's)."""
        return tuple(o for o in self.common(seed) if not o.startswith("model."))

    def scratch_budget(self, variant: str, seed: int, plan: StudyPlan) -> tuple[str, ...]:
        s = self.s
        if s.iterations is not None:
            return iteration_budget(s.iterations)
        if variant == "p" or s.equalize == "time":
            return time_budget(s.minutes)
        return iteration_budget(plan.reference_iterations[seed])

    def fine_tune_budget(self, seed: int, plan: StudyPlan) -> tuple[str, ...]:
        s = self.s
        if s.iterations is not None:
            return iteration_budget(fine_tune_iterations(s.iterations))
        if s.equalize == "time":
            return time_budget(FINE_TUNE_FRACTION * s.minutes)
        return iteration_budget(fine_tune_iterations(plan.reference_iterations[seed]))

    # ---- single stages

    def run_dir(self, name: str) -> Path:
        return self.s.out / name

    def test_stage(self, name: str, checkpoint: Path | None = None) -> Stage:
        s, folder = self.s, self.run_dir(name) / "eval"
        checkpoint = checkpoint or self.run_dir(name) / "model_final.pth"
        return Stage(f"test {name}", "test.py",
                     ("--ckpt", str(checkpoint), "--data", str(s.data), "--detections",
                      str(s.detections), "--out", str(folder), "--method", name.replace("_", "-"),
                      "--decoder", s.decoder, "--overwrite"),
                     (folder / "scores_bop19.json",))

    def train_stage(self, name: str, config: Path, overrides: tuple[str, ...], teachers: Sequence[Path] = ()) -> Stage:
        out = self.run_dir(name)
        tool, extra = ("distill.py", tuple(a for t in teachers for a in ("--teacher", str(t)))) if teachers \
            else ("train.py", ())
        return Stage(f"train {name}", tool,
                     (*extra, "--config", str(config), "--data", str(self.s.data), "--out", str(out), "--no-progress",
                      *overrides),
                     (out / "model_final.pth",), resumable=out / "last_checkpoint.pth")

    def teacher_paths(self) -> list[Path]:
        if self.s.teachers:
            return list(self.s.teachers)
        return [self.run_dir(teacher_name(k)) / "model_final.pth" for k in range(self.s.teacher_count)]

    # ---- phases

    def reference_phase(self) -> list[Stage]:
        """Teachers (trained unless given) and the reference ``p`` of every seed, with
        their evaluations."""
        s, stages = self.s, []
        if s.needs_teachers:
            for k, path in enumerate(self.teacher_paths()):
                name = teacher_name(k)
                if not s.teachers:
                    stages.append(self.train_stage(name, s.teacher_config,
                                                   (*self.common(TEACHER_SEED + k), *s.teacher_budget)))
                stages.append(self.test_stage(name, path))
        for seed in s.seeds:
            name = run_name("p", seed)
            stages.append(self.train_stage(name, CONFIGS / "p.yaml", (*self.common(seed),
                                                                       *self.scratch_budget("p", seed, StudyPlan()))))
            stages.append(self.test_stage(name))
        return stages

    def tuning_phase(self, plan: StudyPlan) -> list[Stage]:
        """OT-distilled P at each candidate weight on the tuning seed (none when the
        weight is given or no variant uses it)."""
        s = self.s
        if s.ot_weight is not None or not s.needs_ot_weight:
            return []
        seed, stages = s.tune_seed, []
        first = s.seeds[0]
        budget = self.scratch_budget("kd_ot", first, plan)  # the first seed's reference budget
        for weight in s.ot_weights:
            name = tune_name(weight, seed)
            stages.append(self.train_stage(name, CONFIGS / "p.yaml",
                                           (*self.common(seed), *budget, f"kd.ot.weight={format_weight(weight)}"),
                                           self.teacher_paths()[:1]))
            stages.append(self.test_stage(name))
        return stages

    def variant_stages(self, variant: str, seed: int, plan: StudyPlan) -> list[Stage]:
        s, v = self.s, VARIANTS[variant]
        name = run_name(variant, seed)
        if v.prune_from is not None:
            parent = self.run_dir(run_name(v.prune_from, seed)) / "model_final.pth"
            pruned = self.run_dir(name) / "pruned.pth"
            prune = Stage(f"prune {name}", "prune.py",
                          ("--ckpt", str(parent), "--geo-d", str(s.geo_d), "--pnp-d", str(s.pnp_d if v.prune_pnp else 0),
                           "--out", str(pruned), "--repeats", "3", "--overwrite"),
                          (pruned, pruned.with_suffix(".yaml")))
            train = self.train_stage(name, pruned.with_suffix(".yaml"),
                                     (*self.fine_tune_common(seed), *self.fine_tune_budget(seed, plan)))
            train = replace(train, args=("--init", str(pruned), *train.args))
            return [prune, train, self.test_stage(name)]
        teachers: Sequence[Path] = ()
        kd: tuple[str, ...] = ()
        if v.kd:
            teachers = self.teacher_paths() if v.teachers == "all" else self.teacher_paths()[:1]
            kd = tuple(o.format(ot_weight=format_weight(plan.ot_weight if plan.ot_weight is not None else 0.0))
                       for o in v.kd)
            if v.teachers == "all" and len(teachers) < 2:
                kd += ("kd.uncertainty.source=tta", "kd.uncertainty.tta_samples=4")  # the labelled fallback
        train = self.train_stage(name, CONFIGS / v.config,
                                 (*self.common(seed), *self.scratch_budget(variant, seed, plan), *kd), teachers)
        return [train, self.test_stage(name)]

    def variants_phase(self, plan: StudyPlan) -> list[Stage]:
        """Every other variant of every seed, seed by seed (a seed's table is complete
        before the next seed starts)."""
        return [stage for seed in self.s.seeds for variant in self.s.variants if variant != "p"
                for stage in self.variant_stages(variant, seed, plan)]


def estimate_minutes(settings: StudySettings) -> dict[str, float]:
    """A rough wall-clock estimate of the whole study at ``settings`` (training minutes
    per part, plus ~1 minute per evaluation), from assumed step-cost factors of each variant
    against plain P (rough values, not measured for the region OT or the ensemble); with ``equalize="iterations"`` slower variants
    take longer than ``minutes``."""
    s = settings
    if s.iterations is not None:
        return {}
    slow = {"n": 1.4, "kd_feature": 1.3, "kd_ot": 1.4, "kd_naive": 1.3, "kd_feature_ot": 1.45,
            "kd_ua": 1.0 + 0.35 * max(len(s.teachers) or s.teacher_count, 1)}
    per_seed = 0.0
    for variant in s.variants:
        if variant == "p":
            continue
        v = VARIANTS[variant]
        factor = 1.0 if s.equalize == "time" else slow.get(variant, 1.0)
        if v.prune_from is not None:
            parent = 1.0 if s.equalize == "time" else slow.get(v.prune_from, 1.0)
            per_seed += FINE_TUNE_FRACTION * s.minutes * parent
        else:
            per_seed += s.minutes * factor
    teachers = 0.0
    if s.needs_teachers and not s.teachers:
        teachers = s.teacher_count * (s.teacher_minutes or 2 * s.minutes)
    tuning = len(s.ot_weights) * s.minutes * slow["kd_ot"] if s.ot_weight is None and s.needs_ot_weight else 0.0
    evaluations = len(s.seeds) * len(s.variants) + (s.teacher_count if teachers else 0) + (len(s.ot_weights) if tuning else 0)
    parts = {"teachers": teachers, "reference P": len(s.seeds) * s.minutes, "OT weight tuning": tuning,
             "other variants": len(s.seeds) * per_seed, "evaluations": 1.0 * evaluations}
    parts["total"] = sum(parts.values())
    return parts


def plan_text(settings: StudySettings) -> str:
    """The stages the study would run and its estimated duration (``--dry-run``)."""
    builder = StageBuilder(settings)
    placeholder = StudyPlan({seed: f"<iterations of p_seed{seed}>" for seed in settings.seeds},
                            settings.ot_weight if settings.ot_weight is not None else "<tuned>")
    lines = ["phase 1 (teachers, reference P):"]
    lines += [f"  {st.name}: {st.tool} {' '.join(st.args)}" for st in builder.reference_phase()]
    tuning = builder.tuning_phase(placeholder)
    if tuning:
        lines += ["phase 2 (OT weight tuning):"]
        lines += [f"  {st.name}: {st.tool} {' '.join(st.args)}" for st in tuning]
    lines += ["phase 3 (variants, seed by seed):"]
    lines += [f"  {st.name}: {st.tool} {' '.join(st.args)}" for st in builder.variants_phase(placeholder)]
    estimate = estimate_minutes(settings)
    if estimate:
        lines += ["estimated wall clock (minutes, rough): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in estimate.items()) + f" (≈ {estimate['total'] / 60:.1f} h)"]
    return "\n".join(lines)
