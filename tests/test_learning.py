"""Training learns: a tiny network overfits a few training ROIs with the short recipe.

A guard against recipes that do not learn (the coordinate loss stuck at its "predict the
mean" level, one rotation for every ROI). The same test with ``train.recipe=gdrnpp`` does
not pass (docs/training.md records it), so it fails when learning breaks.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fastgdr.checkpoint import read_checkpoint
from fastgdr.config import load_config
from fastgdr.data.train_dataset import CollateTargets
from fastgdr.engine.trainer import build_train_dataset, open_dataset, train
from fastgdr.geometry import rotation_angle_between
from fastgdr.inference import load_model
from fastgdr.losses.gdrn import closest_symmetric_rotation, coordinate_losses
from fastgdr.models import decode_pose

from conftest import REPO, TINY_TRAIN_OVERRIDES

OVERFIT_OVERRIDES = [
    *TINY_TRAIN_OVERRIDES,
    "model.input_res=64",
    "data.augment.color_prob=0",
    "data.augment.background_prob=0",
    "data.augment.dzi_scale_ratio=0",
    "data.augment.dzi_shift_ratio=0",
    "train.batch_size=8",
    "train.log_period=50",
    "train.checkpoint_period=1000",
]
ITERATIONS = 500
TRAIN_ROIS = 8


def overfit(tiny_dataset, tmp_path, recipe: str):
    """Train on the first TRAIN_ROIS instances only; return (xyz L1, its mean level, median
    rotation error in degrees) on them."""
    cfg = load_config(REPO / "configs/p.yaml", [
        *OVERFIT_OVERRIDES, f"train.recipe={recipe}", f"train.iterations={ITERATIONS}", f"data.max_instances={TRAIN_ROIS}",
    ])
    result = train(cfg, tiny_dataset, tmp_path / recipe, progress=False)
    model, _ = load_model(result.final_checkpoint)
    data = build_train_dataset(cfg, open_dataset(cfg, tiny_dataset), ["train_pbr"])
    data.augment = None
    batch = CollateTargets(data.assets)([data[k] for k in range(TRAIN_ROIS)])
    targets = batch["targets"]
    with torch.no_grad():
        out = model(batch["images"], batch["roi_classes"], batch["roi_coord_2d"], batch["roi_extents"])
    xyz = sum(coordinate_losses(out.xyz, targets.xyz, targets.mask_xyz)) / 3
    mean_level = sum(coordinate_losses(torch.full_like(targets.xyz, 0.5), targets.xyz, targets.mask_xyz)) / 3
    R, _ = decode_pose(out.rot6d, out.site, targets.roi_centers, targets.roi_whs, targets.resize_ratios, targets.K)
    R_gt = closest_symmetric_rotation(R, targets.rot, targets.sym_rots)
    angles = torch.rad2deg(rotation_angle_between(R, R_gt))
    return xyz.item(), mean_level.item(), angles.median().item()


@pytest.mark.parametrize("recipe", ["short"])
def test_short_recipe_overfits_a_few_rois(tiny_dataset, tmp_path, recipe):
    xyz, mean_level, rotation_deg = overfit(tiny_dataset, tmp_path, recipe)
    assert xyz < 0.5 * mean_level, f"xyz L1 {xyz:.3f} vs its mean level {mean_level:.3f}"
    assert rotation_deg < 20.0, f"median rotation error on the training ROIs {rotation_deg:.1f}°"


def test_bench_learning_pretrains_the_backbone_once_and_reports_it_apart(tiny_dataset, tmp_path):
    cache = tmp_path / "pretraining"
    tiny = [o for o in TINY_TRAIN_OVERRIDES if o.startswith(("model.", "data."))]

    def bench(out: str, *extra: str, iterations: int = 2, ok: bool = True) -> str:
        cmd = [sys.executable, str(REPO / "benchmarks/bench_learning.py"), "--config", str(REPO / "configs/p.yaml"),
               "--minutes", "0.05", "--out", str(tmp_path / out), "--data", str(tiny_dataset), "--points", "1",
               "--decoders", "patchpnp", "--pretrain-iterations", str(iterations), "--pretrain-dir", str(cache),
               *tiny, *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert (done.returncode == 0) == ok, done.stdout + done.stderr
        return done.stdout if ok else done.stderr

    first = bench("run_a")
    pretrained = read_checkpoint(cache / "model_final.pth")
    assert pretrained["iteration"] == 2 and pretrained["config"]["train"]["recipe"] == "backbone_pretraining"
    assert first.strip().splitlines()[-1].endswith(f"pretrain_iterations=2 pretrain_minutes={pretrained['elapsed_seconds'] / 60:.2f}")
    run = read_checkpoint(tmp_path / "run_a" / "train" / "model_final.pth")
    assert run["config"]["model"]["backbone"]["pretrained"] == str(cache / "model_final.pth")
    start = read_checkpoint(tmp_path / "run_a" / "untrained" / "model_final.pth")["model"]
    assert all(torch.equal(start[key], value) for key, value in pretrained["model"].items() if key.startswith("backbone."))
    second = bench("run_b")  # a second run reuses the pretraining
    assert "backbone pretraining: already done, skipped" in second
    assert read_checkpoint(cache / "model_final.pth")["elapsed_seconds"] == pretrained["elapsed_seconds"]
    # a cached pretraining made at other settings (another crop jitter, another length) is refused
    refused = bench("run_c", "data.augment.dzi_scale_ratio=0.2", ok=False)
    assert "data.augment.dzi_scale_ratio: 0.1 in the cached run, 0.2 for this one" in refused
    assert "train.iterations: 2 in the cached run, 3 for this one" in bench("run_d", iterations=3, ok=False)
    assert not (tmp_path / "run_c").exists() and not (tmp_path / "run_d").exists()
