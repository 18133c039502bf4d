"""Compare distillation kinds: the same student trained with and without each kind, from the
same seeds and budget, evaluated with tools/test.py (BOP19 AR and ADD(-S)).

Examples:
  python benchmarks/kd_study.py --data datasets/synth --out runs/kd
  python benchmarks/kd_study.py --data datasets/synth --out runs/kd --seeds 0,1,2 --kinds plain,ot
  python benchmarks/kd_study.py --data datasets/synth --out runs/kd_topk --kinds plain,ot kd.ot.sampling=topk
  python benchmarks/kd_study.py --data /data/bop/lmo --out runs/lmo_kd --input-res 256 \\
      --teacher-config configs/bm.yaml --iterations 20000 --teacher-iterations 40000 --batch 48

Stages (each a real tool run; a re-run skips finished ones): train the teacher (or use
--teacher), train one student per kind and seed (tools/train.py for "plain",
tools/distill.py otherwise), run tools/test.py on the test split from the dataset's
detections for the teacher and every student, then write OUT/kd_study.md: per kind the AR
(VSD/MSSD/MSPD), ADD(-S) recall at 0.1 d, and the seeds' mean and spread (min–max). The cost
of a distillation step is measured apart, on an idle machine: benchmarks/bench_distill.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fastgdr.cli import run_tool
from fastgdr.pipeline import CONFIGS, Stage, run_pipeline

KIND_OVERRIDES = {
    "plain": (),
    "feature": ("kd.feature.weight=1",),
    "ot": ("kd.ot.weight=5",),
    "naive": ("kd.naive.weight=1",),
    "uncertainty": ("kd.ot.weight=5", "kd.uncertainty.enabled=true", "kd.uncertainty.feature_weight=1",
                    "kd.uncertainty.tta_samples=2"),
}
METRICS = (
    ("AR", "bop19_average_recall"), ("AR_VSD", "bop19_average_recall_vsd"),
    ("AR_MSSD", "bop19_average_recall_mssd"), ("AR_MSPD", "bop19_average_recall_mspd"),
    ("ADD(-S) 0.1d", "add_s_recall_0.10"),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="BOP dataset with test detections")
    parser.add_argument("--detections", type=Path, help="detections file (default: the synthetic dataset's)")
    parser.add_argument("--out", type=Path, required=True, help="study folder")
    parser.add_argument("--config", type=Path, default=CONFIGS / "p.yaml", help="the student's config")
    parser.add_argument("--teacher", type=Path, help="an existing teacher checkpoint (skips training one)")
    parser.add_argument("--teacher-config", type=Path, default=CONFIGS / "p.yaml",
                        help="config of the teacher to train (default: the student's architecture)")
    parser.add_argument("--kinds", default=",".join(KIND_OVERRIDES), help=f"subset of {', '.join(KIND_OVERRIDES)}")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--iterations", type=int, default=600, help="student iterations")
    parser.add_argument("--teacher-iterations", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-res", type=int, default=128, help="crop size (256 is GDRNPP's)")
    parser.add_argument("--workers", type=int, default=1, help="data-loading workers")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for every training run")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KIND_OVERRIDES))
    if unknown:
        raise SystemExit(f"unknown kinds {unknown}; choose from {', '.join(KIND_OVERRIDES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    detections = args.detections or next((args.data / "detections").glob("*_test.json"))

    def schedule(iterations: int, seed: int) -> tuple[str, ...]:
        return (f"model.input_res={args.input_res}", f"train.iterations={iterations}", f"train.batch_size={args.batch}",
                f"train.seed={seed}", f"train.warmup_iters={max(1, iterations // 10)}",
                f"train.checkpoint_period={max(1, iterations // 6)}", "train.log_period=20",
                f"data.num_workers={args.workers}", *args.overrides)

    def test_stage(name: str, checkpoint: Path) -> Stage:
        folder = args.out / name / "eval"
        return Stage(f"test {name}", "test.py",
                     ("--ckpt", str(checkpoint), "--data", str(args.data), "--detections", str(detections),
                      "--out", str(folder), "--method", name.replace("_", "-"), "--overwrite"),
                     (folder / "scores_bop19.json",))

    stages = []
    teacher = args.teacher
    if teacher is None:
        teacher = args.out / "teacher" / "model_final.pth"
        stages.append(Stage("train teacher", "train.py",
                            ("--config", str(args.teacher_config), "--data", str(args.data), "--out",
                             str(teacher.parent), "--no-progress", *schedule(args.teacher_iterations, 0)),
                            (teacher,), resumable=teacher.parent / "last_checkpoint.pth"))
    stages.append(test_stage("teacher", teacher))
    for seed in seeds:
        for kind in kinds:
            name = f"{kind}_seed{seed}"
            common = ("--config", str(args.config), "--data", str(args.data), "--out", str(args.out / name),
                      "--no-progress", *schedule(args.iterations, seed), *KIND_OVERRIDES[kind])
            tool, extra = ("train.py", ()) if kind == "plain" else ("distill.py", ("--teacher", str(teacher)))
            stages.append(Stage(f"train {name}", tool, (*extra, *common), (args.out / name / "model_final.pth",),
                                resumable=args.out / name / "last_checkpoint.pth"))
            stages.append(test_stage(name, args.out / name / "model_final.pth"))
    run_pipeline(stages, args.out / "logs")
    table = summarize(args, kinds)
    print(table)
    return 0


def read_scores(run: Path) -> dict[str, float]:
    return json.loads((run / "eval" / "scores_bop19.json").read_text())


def evaluated_seeds(out: Path, kind: str) -> list[int]:
    """Seeds of the evaluated ``{kind}_seed{N}`` runs in ``out`` (earlier invocations included)."""
    prefix = f"{kind}_seed"
    return sorted(int(path.parent.parent.name[len(prefix):]) for path in out.glob(f"{prefix}*/eval/scores_bop19.json"))


def summarize(args: argparse.Namespace, kinds: list[str]) -> str:
    """Write OUT/kd_study.md over every evaluated seed of each kind and return it."""
    header = "| model | seeds | " + " | ".join(label for label, _ in METRICS) + " |"
    lines = [
        f"# Distillation study on {args.data}",
        "",
        f"Student {args.config.name} at {args.input_res} px, {args.iterations} iterations × batch {args.batch}; "
        f"teacher {args.teacher or args.teacher_config.name} "
        f"({'given' if args.teacher else f'{args.teacher_iterations} iterations, seed 0'}). "
        "Cells show the mean over the seeds and, with several seeds, the min–max range.",
        "",
        header,
        "|" + "---|" * (len(METRICS) + 2),
    ]
    teacher_scores = read_scores(args.out / "teacher")
    lines.append("| teacher | 0 | " + " | ".join(f"{teacher_scores[key]:.3f}" for _, key in METRICS) + " |")
    for kind in kinds:
        seeds = evaluated_seeds(args.out, kind)
        scores = [read_scores(args.out / f"{kind}_seed{seed}") for seed in seeds]
        cells = []
        for _, key in METRICS:
            values = [s[key] for s in scores]
            spread = f" ({min(values):.3f}–{max(values):.3f})" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{spread}")
        lines.append(f"| {kind} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    lines += ["", "Distillation settings: " + "; ".join(
        f"{kind}: {' '.join(KIND_OVERRIDES[kind]) or '(none)'}" for kind in kinds)]
    text = "\n".join(lines) + "\n"
    (args.out / "kd_study.md").write_text(text)
    return text


if __name__ == "__main__":
    run_tool(main)
