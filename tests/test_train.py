"""Training data (crops, online targets), one optimisation step, resume and DDP."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastgdr.checkpoint import read_checkpoint
from fastgdr.config import load_config
from fastgdr.data.train_dataset import CollateTargets
from fastgdr.engine.optim import build_optimizer
from fastgdr.engine.trainer import build_train_dataset, open_dataset
from fastgdr.geometry import crop_affine_matrix, egocentric_to_allocentric, matrix_to_rot6d
from fastgdr.losses.gdrn import gdrn_losses, total_loss
from fastgdr.models import GDRNPoseNet, decode_pose

from conftest import REPO, TINY_TRAIN_OVERRIDES, kill_after_checkpoint


def tiny_cfg(*extra):
    return load_config(REPO / "configs/p.yaml", [*TINY_TRAIN_OVERRIDES, *extra])


@pytest.fixture(scope="module")
def plain_data(tiny_dataset):
    cfg = tiny_cfg("data.augment.color_prob=0", "data.augment.background_prob=0")
    dataset = open_dataset(cfg, tiny_dataset)
    data = build_train_dataset(cfg, dataset, ["train_pbr"])
    data.augment = None  # exact box crop, no jitter
    return data


def crop_pixel_of(uv: np.ndarray, sample: dict) -> np.ndarray:
    """Crop pixel index (column, row) that GDRNPP's crop warp puts image point ``uv`` at: the
    warp maps pixel indices, and pixel (i, j) is centred at (j + 0.5, i + 0.5) (fastgdr.render)."""
    A = crop_affine_matrix(sample["roi_center"], 32 / sample["resize_ratio"], 32)
    return (uv - 0.5) @ A[:, :2].T + A[:, 2]


def test_xyz_targets_project_back_to_their_pixels(plain_data):
    for k in range(6):
        sample = plain_data[k]
        mask = sample["xyz"].sum(0) > 0
        assert mask.sum() > 10
        ii, jj = np.nonzero(mask)
        xyz_m = (sample["xyz"][:, ii, jj].T - 0.5) * sample["extent"]
        cam = xyz_m @ sample["rot"].T + sample["trans"]
        uv = cam[:, :2] / cam[:, 2:] * np.diag(sample["K"])[:2] + sample["K"][:2, 2]
        assert np.abs(crop_pixel_of(uv, sample) - np.stack([jj, ii], 1)).max() < 0.02


def test_canonical_targets_are_a_pose_that_renders_the_same_pixels(tiny_dataset):
    cfg = tiny_cfg("data.canonical_symmetry=true", "data.augment.color_prob=0", "data.augment.background_prob=0")
    data = build_train_dataset(cfg, open_dataset(cfg, tiny_dataset), ["train_pbr"])
    data.augment = None
    changed = 0
    for k in range(24):
        sample = data[k]
        index = data.instance_for(k)
        inst = data.instances[index]
        gt = data._scene(inst.split, inst.scene_id).gt[inst.im_id][inst.gt_index]
        changed += not np.allclose(sample["rot"], gt.R, atol=1e-5)
        mask = sample["xyz"].sum(0) > 0
        ii, jj = np.nonzero(mask)
        xyz_m = (sample["xyz"][:, ii, jj].T - 0.5) * sample["extent"]
        cam = xyz_m @ sample["rot"].T + sample["trans"]
        uv = cam[:, :2] / cam[:, 2:] * np.diag(sample["K"])[:2] + sample["K"][:2, 2]
        assert np.abs(crop_pixel_of(uv, sample) - np.stack([jj, ii], 1)).max() < 0.02
        assets = data.assets[inst.obj_id]
        allo = egocentric_to_allocentric(torch.from_numpy(sample["rot"]).double(), torch.from_numpy(sample["trans"]).double()).numpy()
        traces = np.einsum("ij,kji->k", allo, assets.sym_rots)
        assert traces[0] >= traces.max() - 1e-4  # the canonical pose is its own nearest-identity equivalent
    assert changed > 0  # some symmetric instances were moved to another equivalent


def test_visible_mask_is_inside_the_rendered_object(plain_data):
    sample = plain_data[1]
    on_object = sample["xyz"].sum(0) > 0
    assert np.all(on_object[sample["mask_visible"] > 0])
    assert sample["region"][on_object].min() >= 1 and sample["region"][~on_object].max() == 0


def test_site_target_decodes_to_the_ground_truth_translation(plain_data):
    batch = CollateTargets(plain_data.assets)([plain_data[k] for k in range(4)])
    tg = batch["targets"]
    rot6d = matrix_to_rot6d(egocentric_to_allocentric(tg.rot, batch["trans"]))
    R, t = decode_pose(rot6d, tg.site, tg.roi_centers, tg.roi_whs, tg.resize_ratios, tg.K)
    assert torch.allclose(t, batch["trans"], atol=1e-5)
    assert torch.allclose(R, tg.rot, atol=1e-4)


def test_training_steps_lower_the_loss_on_a_fixed_batch(plain_data):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = GDRNPoseNet.from_config(load_config(None, [*TINY_TRAIN_OVERRIDES, "model.num_classes=3"]).model)
    batch = CollateTargets(plain_data.assets)([plain_data[k] for k in range(4)])
    inputs = (batch["images"], batch["roi_classes"], batch["roi_coord_2d"], batch["roi_extents"])
    optimizer = build_optimizer("adamw", [{"params": model.parameters()}], 1e-3, 0.0)
    history = []
    for _ in range(5):
        loss = total_loss(gdrn_losses(model(*inputs), batch["targets"], cfg.train.loss_weights))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0]


def run_train(data, out, *extra, wait=True):
    cmd = [sys.executable, str(REPO / "tools/train.py"), "--config", str(REPO / "configs/p.yaml"),
           "--data", str(data), "--out", str(out), "--no-progress", *TINY_TRAIN_OVERRIDES, *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_dataset, tmp_path):
    args = ["train.iterations=8", "train.checkpoint_period=2"]
    full = run_train(tiny_dataset, tmp_path / "full", *args)
    assert full.returncode == 0, full.stderr

    proc = run_train(tiny_dataset, tmp_path / "killed", *args, wait=False)
    killed_at = kill_after_checkpoint(proc, tmp_path / "killed" / "last_checkpoint.pth", 2)
    assert 2 <= killed_at < 8

    resumed = run_train(tiny_dataset, tmp_path / "killed", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = read_checkpoint(tmp_path / "full" / "model_final.pth")["model"]
    b = read_checkpoint(tmp_path / "killed" / "model_final.pth")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = (tmp_path / "killed" / "metrics.csv").read_text().splitlines()
    iters = [int(r.split(",")[0]) for r in rows[1:]]
    assert iters == list(range(1, 9))  # no iteration logged twice


def test_resume_refuses_a_changed_config_and_a_missing_checkpoint(tiny_dataset, tmp_path):
    missing = run_train(tiny_dataset, tmp_path / "none", "train.iterations=2", "--resume")
    assert missing.returncode == 2 and "cannot resume" in missing.stderr
    first = run_train(tiny_dataset, tmp_path / "run", "train.iterations=2")
    assert first.returncode == 0, first.stderr
    changed = run_train(tiny_dataset, tmp_path / "run", "train.iterations=3", "--resume")
    assert changed.returncode == 2 and "config differs" in changed.stderr


def test_outputs_of_a_run(tiny_dataset, tmp_path):
    result = run_train(tiny_dataset, tmp_path / "run", "train.iterations=2")
    assert result.returncode == 0, result.stderr
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "metrics.csv", "last_checkpoint.pth", "model_final.pth"} <= files
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    for term in ("loss_coor_x", "loss_mask", "loss_mask_full", "loss_region", "loss_PM_R", "loss_centroid", "loss_z", "lr"):
        assert term in header
    final = read_checkpoint(tmp_path / "run" / "model_final.pth")
    assert final["config"]["model"]["num_classes"] == 3  # set from the dataset


def test_ddp_with_two_gloo_processes(tiny_dataset, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(REPO / "tools/train.py"),
           "--config", str(REPO / "configs/p.yaml"), "--data", str(tiny_dataset), "--out", str(tmp_path / "ddp"),
           "--no-progress", *TINY_TRAIN_OVERRIDES, "train.iterations=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_checkpoint(tmp_path / "ddp" / "model_final.pth")["iteration"] == 2


def test_zero_iterations_writes_the_initialised_model(tiny_dataset, tmp_path):
    result = run_train(tiny_dataset, tmp_path / "init", "train.iterations=0")
    assert result.returncode == 0, result.stderr
    final = read_checkpoint(tmp_path / "init" / "model_final.pth")
    assert final["iteration"] == 0
    torch.manual_seed(0)  # the trainer seeds with train.seed (0) before building the model
    cfg = tiny_cfg("model.num_classes=3")
    model = GDRNPoseNet.from_config(cfg.model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, final["model"][key]), key
