"""Measure data-loading throughput (crops/s) and training speed (iterations/s).

Examples:
  python benchmarks/bench_train.py --data datasets/synth --config configs/p.yaml
  python benchmarks/bench_train.py --data datasets/synth --config configs/p.yaml --batch 8 --workers 0,2 --iters 5

Data loading is timed through the real DataLoader (rendered coordinate targets, crops,
augmentation) after one warm-up batch; training as forward + losses + backward + Ranger
step on pre-loaded batches, and as the full loop. Prints measured numbers only.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fastgdr.config import load_config
from fastgdr.data.train_dataset import CollateTargets, TrainSampler
from fastgdr.engine.optim import build_optimizer
from fastgdr.engine.trainer import build_train_dataset, open_dataset, train_splits
from fastgdr.losses.gdrn import gdrn_losses, total_loss
from fastgdr.models import GDRNPoseNet


def loader_for(data, batch: int, iters: int, workers: int) -> DataLoader:
    return DataLoader(
        data, batch_size=batch, sampler=TrainSampler(iters + 1, batch), num_workers=workers,
        collate_fn=CollateTargets(data.assets), multiprocessing_context="spawn" if workers else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=Path("configs/p.yaml"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts to time")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides)
    dataset = open_dataset(cfg, args.data)
    cfg.model.num_classes = len(dataset.obj_ids)
    data = build_train_dataset(cfg, dataset, train_splits(cfg, dataset))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"{cfg.model.backbone.name}, batch {args.batch}, input {cfg.model.input_res} px")

    for workers in (int(w) for w in args.workers.split(",")):
        batches = iter(loader_for(data, args.batch, args.iters, workers))
        next(batches)  # warm-up: worker start, renderer context
        start = time.perf_counter()
        for _ in range(args.iters):
            next(batches)
        elapsed = time.perf_counter() - start
        print(f"data loading, {workers} workers: {args.iters * args.batch / elapsed:.1f} crops/s")

    torch.manual_seed(0)
    model = GDRNPoseNet.from_config(cfg.model).train()
    optimizer = build_optimizer(cfg.train.optimizer, [{"params": model.parameters()}], cfg.train.lr, cfg.train.weight_decay)
    batches = list(loader_for(data, args.batch, args.iters, 0))
    def step(batch):
        out = model(batch["images"], batch["roi_classes"], batch["roi_coord_2d"], batch["roi_extents"])
        loss = total_loss(gdrn_losses(out, batch["targets"], cfg.train.loss_weights))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    step(batches[0])
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    elapsed = time.perf_counter() - start
    print(f"training step (forward+loss+backward+step, data pre-loaded): {args.iters / elapsed:.3f} it/s "
          f"({elapsed / args.iters:.2f} s/it, {args.iters * args.batch / elapsed:.1f} ROIs/s)")


if __name__ == "__main__":
    main()
