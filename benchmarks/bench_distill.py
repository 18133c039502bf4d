"""Time one distillation step against one plain student step at the same batch.

Examples:
  python benchmarks/bench_distill.py --data datasets/synth
  python benchmarks/bench_distill.py --data datasets/synth --teacher-config configs/bm.yaml \\
      --config configs/p.yaml --batch 8 --iters 5 --out docs/bench_distill
  python benchmarks/bench_distill.py --data datasets/synth --kinds feature,ot --precisions float32

A step is forward + GDRNPP losses + distillation terms + backward + Ranger step on batches
loaded beforehand (data loading is the same with and without a teacher). The teacher has
random weights of the teacher config's architecture: its cost does not depend on them.
Each kind is timed with the teacher in float32 and in bfloat16 autocast. Prints the
median step times, the ratio to the plain step and whether it meets the issue's target
(at most 1.6x the plain student step) — measured numbers only. With --out, writes
bench_distill.csv and bench_distill.md there.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fastgdr.config import Config, ModelConfig, load_config
from fastgdr.data.train_dataset import CollateTargets, TrainSampler
from fastgdr.engine.distiller import Distiller, TeacherEnsemble
from fastgdr.engine.optim import build_optimizer
from fastgdr.engine.trainer import build_train_dataset, open_dataset, train_splits
from fastgdr.losses.gdrn import gdrn_losses, total_loss
from fastgdr.models import GDRNPoseNet

TARGET_RATIO = 1.6
KINDS = {
    "feature": ["kd.feature.weight=1"],
    "ot": ["kd.ot.weight=5"],
    "feature+ot": ["kd.feature.weight=1", "kd.ot.weight=5"],
    "naive": ["kd.naive.weight=1"],
    "uncertainty": ["kd.ot.weight=5", "kd.uncertainty.enabled=true", "kd.uncertainty.feature_weight=1",
                    "kd.uncertainty.source=tta", "kd.uncertainty.tta_samples=2"],
    "uncertainty-ensemble3": ["kd.ot.weight=5", "kd.uncertainty.enabled=true", "kd.uncertainty.feature_weight=1"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="BOP dataset folder (batches come from it)")
    parser.add_argument("--config", type=Path, default=Path("configs/p.yaml"), help="the student's config")
    parser.add_argument("--teacher-config", type=Path, default=Path("configs/bm.yaml"), help="the teacher's config")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {', '.join(KINDS)}")
    parser.add_argument("--precisions", default="float32,bfloat16", help="teacher precisions to time")
    parser.add_argument("--out", type=Path, help="folder for bench_distill.csv / .md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    cfg = load_config(args.config)
    dataset = open_dataset(cfg, args.data)
    cfg.model.num_classes = len(dataset.obj_ids)
    teacher_cfg = load_config(args.teacher_config).model
    teacher_cfg.num_classes = cfg.model.num_classes
    data = build_train_dataset(cfg, dataset, train_splits(cfg, dataset))
    loader = DataLoader(data, batch_size=args.batch, sampler=TrainSampler(args.iters + 1, args.batch),
                        num_workers=0, collate_fn=CollateTargets(data.assets))
    batches = list(loader)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"student {cfg.model.backbone.name}, teacher {teacher_cfg.backbone.name}, batch {args.batch}, "
          f"input {cfg.model.input_res} px, median of {args.iters} steps")

    torch.manual_seed(0)
    teacher = GDRNPoseNet.from_config(teacher_cfg).eval().requires_grad_(False)
    rows = [{"kind": "plain", "teacher_precision": "-", "seconds": time_steps(cfg, None, batches)}]
    plain = rows[0]["seconds"]
    print(f"plain student step: {plain:.3f} s")
    for kind in kinds:
        for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
            kd_cfg = load_config(None, [*KINDS[kind], f"kd.teacher_precision={precision}"]).kd
            seconds = time_steps(replace(cfg, kd=kd_cfg), (teacher, teacher_cfg), batches)
            rows.append({"kind": kind, "teacher_precision": precision, "seconds": seconds})
            print(f"{kind:12s} teacher {precision:8s}: {seconds:.3f} s = {seconds / plain:.2f}x plain "
                  f"({'meets' if seconds / plain <= TARGET_RATIO else 'misses'} the {TARGET_RATIO}x target)")
    if args.out:
        write_tables(args.out, rows, plain, cfg, teacher_cfg, args)


def time_steps(cfg: Config, teacher: tuple[GDRNPoseNet, ModelConfig] | None, batches: list[dict]) -> float:
    """Median seconds of one training step (the first batch warms up)."""
    torch.manual_seed(0)
    model = GDRNPoseNet.from_config(cfg.model).train()
    groups = [{"params": list(model.parameters())}]
    distiller = None
    if teacher is not None:
        members = 3 if cfg.kd.uncertainty.enabled and cfg.kd.uncertainty.source == "ensemble" else 1  # cost only
        ensemble = TeacherEnsemble([teacher[0]] * members, [teacher[1]] * members, cfg.model, cfg.kd)
        distiller = Distiller(cfg.kd, ensemble, model.backbone_info.channels)
        if any(True for _ in distiller.parameters()):
            groups.append({"params": list(distiller.parameters()), "lr": cfg.kd.feature.adapter_lr, "weight_decay": 0.0})
    optimizer = build_optimizer(cfg.train.optimizer, groups, cfg.train.lr, cfg.train.weight_decay)
    times = []
    for batch in batches:
        start = time.perf_counter()
        out = model(batch["images"], batch["roi_classes"], batch["roi_coord_2d"], batch["roi_extents"])
        losses = gdrn_losses(out, batch["targets"], cfg.train.loss_weights)
        if distiller is not None:
            losses.update(distiller(batch["images"], batch["roi_classes"], out, batch["roi_coord_2d"]))
        optimizer.zero_grad(set_to_none=True)
        total_loss(losses).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def write_tables(out: Path, rows: list[dict], plain: float, cfg: Config, teacher_cfg: ModelConfig, args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench_distill.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["kind", "teacher_precision", "seconds", "ratio_to_plain"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "seconds": f"{row['seconds']:.4f}", "ratio_to_plain": f"{row['seconds'] / plain:.3f}"})
    lines = [
        f"# Distillation step cost ({cfg.model.backbone.name} student, {teacher_cfg.backbone.name} teacher)",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} cores; batch {args.batch}, "
        f"{cfg.model.input_res} px crops, median of {args.iters} steps after a warm-up step.",
        f"Target: a distillation step costs at most {TARGET_RATIO}x the plain student step.",
        "",
        "| kind | teacher precision | step (s) | × plain | target |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = row["seconds"] / plain
        verdict = "-" if row["kind"] == "plain" else ("met" if ratio <= TARGET_RATIO else "missed")
        lines.append(f"| {row['kind']} | {row['teacher_precision']} | {row['seconds']:.3f} | {ratio:.2f} | {verdict} |")
    (out / "bench_distill.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'bench_distill.md'}")


if __name__ == "__main__":
    main()
