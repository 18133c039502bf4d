"""The main job: the toolkit's story on the synthetic default, stage by stage.

Every stage runs one of the real command-line tools in ``tools/`` as a subprocess (what
a user would type), logs its output to ``OUT/logs/<stage>.log`` and is skipped when its
outputs already exist, so re-running resumes after the last finished stage. A stage's
outputs are written by the tool itself (atomically for checkpoints), so an interrupted
stage runs again: with ``--overwrite`` (the tools refuse to replace earlier outputs
otherwise), a training stage with ``--resume`` from its last checkpoint when it has one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from fastgdr.errors import FastGDRError

TOOLS = Path(__file__).resolve().parents[1] / "tools"
DEMO_DISTILLATION = ("kd.feature.weight=1", "kd.ot.weight=5")  # FAST GDRNPP's feature MSE + ADLP's OT
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: a tool invocation and the files that prove it finished."""

    name: str
    tool: str
    args: tuple[str, ...]
    outputs: tuple[Path, ...]
    always: bool = False  # cheap summaries of earlier stages run every time
    resumable: Path | None = None  # a training stage's last checkpoint: resumed when it exists
    # Consecutive stages of one group run at the same time, the CPU cores split between them
    # (see :func:`run_pipeline`); None runs the stage alone.
    group: str | None = None

    def outputs_exist(self) -> bool:
        return all(p.exists() for p in self.outputs)

    def done(self) -> bool:
        return not self.always and self.outputs_exist()

    def command(self) -> list[str]:
        """The tool's command line; a training stage gets ``--resume`` when its last
        checkpoint exists, else ``--overwrite`` (an earlier attempt's files are replaced)."""
        rerun = ()
        if self.resumable is not None:
            rerun = ("--resume",) if self.resumable.exists() else ("--overwrite",)
        return [sys.executable, str(TOOLS / self.tool), *self.args, *rerun]


@dataclass(frozen=True)
class DemoBudget:
    """Sizes of the demo; ``QUICK`` is the variant the test suite runs.

    Attributes:
        input_res: crop size of every trained and benchmarked model (GDRNPP: 256; the CPU
            demo uses 128).
        student_iterations: training iterations of each P at ``batch_size``; P28's
            fine-tuning gets 3/8 of them (FAST GDRNPP: 15 of 40 epochs).
        seeds: training seeds of P, of P28 (pruned from the P of the same seed) and of
            distilled P.
        distill: also train a teacher (N, ``teacher_iterations``) and distil P from it with
            every seed. Off in ``FULL``: in 30 minutes of a 2-core CPU a teacher cannot be
            trained better than its students (docs/training.md).
    """

    objects: int
    train_images: int
    test_images: int
    width: int
    height: int
    input_res: int
    student_iterations: int
    batch_size: int
    teacher_iterations: int = 0
    distill: bool = False
    seeds: tuple[int, ...] = (0, 1)
    presets: str = "all"
    bench_configs: str = "bm,n,n28,p,p28"
    bench_rois: str = "1,8"
    latency_repeats: int = 15

    def __post_init__(self) -> None:
        if self.distill and self.teacher_iterations < 1:
            raise ValueError("a demo with distillation needs teacher_iterations >= 1")

    @property
    def fine_tune_iterations(self) -> int:
        return max(1, self.student_iterations * 3 // 8)

    def describe(self) -> str:
        """The budget as a markdown paragraph for the report."""
        seeds = ", ".join(map(str, self.seeds))
        distillation = (
            f"a teacher (N preset, {self.teacher_iterations} iterations, seed {self.seeds[0]}) and P distilled from it "
            f"(feature MSE ×1 + OT on local predictions ×5) with seeds {seeds}, as long as P; "
            if self.distill else
            "no distillation (`tools/demo.py --distill` adds a teacher and distilled students; "
            "benchmarks/acceleration_study.py compares every kind); "
        )
        return (
            f"Demo budget: synthetic dataset of {self.objects} objects, {self.train_images} training and "
            f"{self.test_images} test images ({self.width}×{self.height}); {self.input_res} px crops (GDRNPP: 256); "
            f"batch {self.batch_size}; the short training recipe (docs/training.md) from random weights; "
            f"P (ConvNeXt-V2 Pico) {self.student_iterations} iterations with seeds {seeds}; P28 = each P pruned "
            f"(FAST GDRNPP's P28: geometric head D=28, Patch-PnP unpruned) and fine-tuned {self.fine_tune_iterations} "
            f"iterations with its seed; {distillation}"
            "the seeds of a model train at the same time when the machine has a CPU core for each (the cores split "
            "between them), else one after the other; "
            "per-term loss curves of every trained run in training/loss_curves.png, their metrics in "
            "training/metrics/. Backbones start from random weights (nothing can be downloaded), so accuracies are far "
            "below the paper's; compare runs with each other, with p_untrained and with the seed spread below."
        )


FULL = DemoBudget(
    objects=4, train_images=400, test_images=50, width=640, height=480, input_res=128,
    student_iterations=1200, batch_size=16, bench_rois="1",
)
QUICK = DemoBudget(
    objects=2, train_images=16, test_images=4, width=320, height=240, input_res=128,
    student_iterations=4, batch_size=4, teacher_iterations=4, distill=True, presets="P", bench_configs="p,p28",
    bench_rois="1", latency_repeats=3,
)


@dataclass
class StageRecord:
    name: str
    status: str  # "ran" or "skipped"
    seconds: float
    group: str | None = None
    threads: int | None = None  # CPU threads it was given when it shared the machine


@dataclass
class PipelineResult:
    records: list[StageRecord] = field(default_factory=list)
    seconds: float = 0.0  # wall clock of the whole run (stages of a group overlap)


def demo_stages(out: Path, budget: DemoBudget) -> list[Stage]:
    """Synthetic data → P (every seed, side by side) and an untrained P → each P pruned to
    P28 → the P28 fine-tuned (side by side) → with ``budget.distill``, a teacher (N) and P
    distilled from it (every seed, side by side) → per-term loss curves of every trained
    run → inference from the detections and BOP evaluation of every model, with GDRNPP's
    fast depth refinement for P and P28 of the first seed (the "-R" configurations) →
    latency benchmark at the demo's crop size → model report of the presets → summary
    table, seed spread and speed/accuracy plot."""
    data = out / "data" / "synth"
    detections = data / "detections" / "synth_default_detections_test.json"
    first_seed = budget.seeds[0]

    def train_args(iterations: int, seed: int) -> tuple[str, ...]:
        return (
            f"model.input_res={budget.input_res}", f"train.iterations={iterations}",
            f"train.batch_size={budget.batch_size}", f"train.seed={seed}",
            "train.recipe=short", f"train.warmup_iters={max(1, iterations // 10)}",
            f"train.checkpoint_period={max(1, iterations // 6)}", "train.log_period=10", "data.num_workers=0",
        )

    def train_stage(
        name: str, config: str, iterations: int, seed: int, tool: str = "train.py",
        tool_args: tuple[str, ...] = (), overrides: tuple[str, ...] = (), group: str | None = None,
    ) -> Stage:
        return Stage(
            f"train {name}", tool,
            (*tool_args, "--config", str(CONFIGS / config), "--data", str(data), "--out", str(out / name),
             "--no-progress", *train_args(iterations, seed), *overrides),
            (out / name / "model_final.pth",),
            resumable=out / name / "last_checkpoint.pth",
            group=group,
        )

    def test_stage(name: str, checkpoint: Path, refine: str = "none") -> Stage:
        folder = out / name / "eval"
        return Stage(
            f"test {name}", "test.py",
            ("--ckpt", str(checkpoint), "--data", str(data), "--detections", str(detections), "--out", str(folder),
             "--method", name.replace("_", "-"), "--refine", refine, "--overwrite"),
            (folder / "scores_bop19.json",),
        )

    teacher = out / "teacher" / "model_final.pth"
    p_first = f"p_seed{first_seed}"
    stages = [
        Stage(
            "synthetic data", "make_synthetic.py",
            ("--out", str(data), "--objects", str(budget.objects), "--train-images", str(budget.train_images),
             "--test-images", str(budget.test_images), "--width", str(budget.width), "--height", str(budget.height),
             "--seed", str(first_seed), "--overwrite"),
            (data / "test_targets_bop19.json", detections),
        ),
        *[train_stage(f"p_seed{seed}", "p.yaml", budget.student_iterations, seed, group="p") for seed in budget.seeds],
        train_stage("p_untrained", "p.yaml", 0, first_seed),
    ]
    pruned = {seed: out / f"p28_seed{seed}" / "pruned.pth" for seed in budget.seeds}
    for seed in budget.seeds:  # alone: pruning measures latency
        stages.append(Stage(
            f"prune p_seed{seed} to p28", "prune.py",
            ("--ckpt", str(out / f"p_seed{seed}" / "model_final.pth"), "--geo-d", "28", "--out", str(pruned[seed]),
             "--repeats", str(budget.latency_repeats), "--overwrite"),
            (pruned[seed], pruned[seed].with_suffix(".yaml")),
        ))
    for seed in budget.seeds:
        stages.append(Stage(
            f"fine-tune p28_seed{seed}", "train.py",
            ("--config", str(pruned[seed].with_suffix(".yaml")), "--init", str(pruned[seed]), "--data", str(data),
             "--out", str(pruned[seed].parent), "--no-progress", *train_args(budget.fine_tune_iterations, seed)),
            (pruned[seed].parent / "model_final.pth",),
            resumable=pruned[seed].parent / "last_checkpoint.pth",
            group="p28",
        ))
    trained = [*[f"p_seed{seed}" for seed in budget.seeds], *[f"p28_seed{seed}" for seed in budget.seeds]]
    if budget.distill:
        stages.append(train_stage("teacher", "n.yaml", budget.teacher_iterations, first_seed))
        stages += [
            train_stage(f"p_kd_seed{seed}", "p.yaml", budget.student_iterations, seed, tool="distill.py",
                        tool_args=("--teacher", str(teacher)), overrides=DEMO_DISTILLATION, group="p_kd")
            for seed in budget.seeds
        ]
        trained += ["teacher", *[f"p_kd_seed{seed}" for seed in budget.seeds]]
    training = out / "training"
    stages.append(Stage(
        "loss curves", "plot_losses.py",
        (*[str(out / name) for name in trained], "--out", str(training), "--overwrite"),
        (training / "loss_curves.png",),
    ))
    evaluated = {
        **{f"p_seed{seed}": (f"p_seed{seed}", "none") for seed in budget.seeds},
        "p_untrained": ("p_untrained", "none"), "p_R": (p_first, "fast"),
        **{f"p28_seed{seed}": (f"p28_seed{seed}", "none") for seed in budget.seeds},
        "p28_R": (f"p28_seed{first_seed}", "fast"),
    }
    if budget.distill:
        evaluated["teacher"] = ("teacher", "none")
        evaluated.update({f"p_kd_seed{seed}": (f"p_kd_seed{seed}", "none") for seed in budget.seeds})
    for name, (model, refine) in evaluated.items():
        stages.append(test_stage(name, out / model / "model_final.pth", refine))
    bench = out / "bench"
    stages.append(Stage(
        "latency benchmark", "bench_latency.py",
        ("--configs", budget.bench_configs, "--rois", budget.bench_rois, "--repeats", str(budget.latency_repeats),
         "--out", str(bench), "--overwrite", f"model.input_res={budget.input_res}"),
        (bench / "latency.json",),
    ))
    stages.append(Stage(
        "model report", "model_info.py", ("--presets", budget.presets, "--out", str(out / "model_info"), "--overwrite"),
        (out / "model_info" / "model_info.json",),
    ))
    notes = out / "budget.md"
    stages.append(Stage(
        "summary", "report.py",
        (*[str(out / name / "eval") for name in evaluated], str(bench), "--notes", str(notes),
         "--out", str(out / "report"), "--overwrite"),
        (out / "report" / "README.md",),
        always=True,
    ))
    return stages


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def stage_batches(stages: Sequence[Stage]) -> list[list[tuple[int, Stage]]]:
    """``(position, stage)`` pairs in runs of consecutive stages that share a group (a
    stage without one is a run of its own); positions count from 1."""
    batches: list[list[tuple[int, Stage]]] = []
    for i, stage in enumerate(stages, start=1):
        if batches and stage.group is not None and batches[-1][-1][1].group == stage.group:
            batches[-1].append((i, stage))
        else:
            batches.append([(i, stage)])
    return batches


def run_pipeline(
    stages: Sequence[Stage], log_dir: Path, announce: Callable[[str], None] = print, cores: int | None = None
) -> PipelineResult:
    """Run the stages that are not done yet, in order; stop at the first failure.

    The stages of a group that are still to do run at the same time when there are at
    least as many ``cores`` (default: :func:`available_cores`) as stages, each with an
    equal share of the cores (``OMP_NUM_THREADS``): on a 2-core CPU two 1-thread trainings
    together did ~13 % more iterations per minute than one after the other with 2 threads
    (docs/training.md). Otherwise they run one after the other. A group with a failed stage
    lets the others finish (their outputs are kept) and then stops the pipeline.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    cores = cores or available_cores()
    result = PipelineResult()
    start = time.perf_counter()
    for batch in stage_batches(stages):
        pending, records = [], []
        for i, stage in batch:
            if stage.done():
                announce(f"[{i}/{len(stages)}] {stage.name}: already done, skipped")
                records.append((i, StageRecord(stage.name, "skipped", 0.0, stage.group)))
            else:
                pending.append((i, stage))
        together = len(pending) > 1 and cores >= len(pending)
        threads = cores // len(pending) if together else None
        for chunk in ([pending] if together else [[item] for item in pending]):
            records += _run_stages(chunk, len(stages), log_dir, announce, threads)
        result.records += [record for _, record in sorted(records, key=lambda item: item[0])]
    result.seconds = time.perf_counter() - start
    (log_dir.parent / "pipeline.json").write_text(json.dumps([r.__dict__ for r in result.records], indent=2))
    return result


def _run_stages(
    chunk: Sequence[tuple[int, Stage]], total: int, log_dir: Path, announce: Callable[[str], None],
    threads: int | None,
) -> list[tuple[int, StageRecord]]:
    """Run the stages of ``chunk`` at the same time (with ``threads`` CPU threads each when
    given), wait for all of them, then raise with the log of every one that failed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads is not None else None
    running = []
    for i, stage in chunk:
        shown = " ".join(Path(c).name if j < 2 else c for j, c in enumerate(stage.command()))
        shared = f" (beside {len(chunk) - 1} other stage(s), {threads} CPU thread(s) each)" if threads is not None else ""
        announce(f"[{i}/{total}] {stage.name}: running {shown}{shared}")
        log = log_dir / f"{i:02d}_{stage.name.replace(' ', '_')}.log"
        handle = log.open("w")
        process = subprocess.Popen(stage.command(), stdout=handle, stderr=subprocess.STDOUT, env=env)
        running.append((i, stage, log, handle, process, time.perf_counter()))
    finished: dict[int, float] = {}
    try:
        while len(finished) < len(running):  # poll, so that each stage's time is its own
            for index, (*_, process, started) in enumerate(running):
                if index not in finished and process.poll() is not None:
                    finished[index] = time.perf_counter() - started
            time.sleep(0.2 if len(finished) < len(running) else 0.0)
    except BaseException:  # interrupted: stop the stages too (a training resumes from its checkpoint)
        for *_, handle, process, _ in running:
            process.terminate()
            process.wait()
            handle.close()
        raise
    records, failures = [], []
    for index, (i, stage, log, handle, process, _) in enumerate(running):
        code, seconds = process.returncode, finished[index]
        handle.close()
        if code != 0 or not stage.outputs_exist():
            tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
            failures.append(f"stage '{stage.name}' failed (exit {code}); its log {log} ends with:\n{tail}")
            continue
        announce(f"[{i}/{total}] {stage.name}: done in {seconds:.0f} s")
        records.append((i, StageRecord(stage.name, "ran", seconds, stage.group, threads)))
    if failures:
        raise FastGDRError("\n".join(failures))
    return records
