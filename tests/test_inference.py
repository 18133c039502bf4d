"""Inference from detections: crops, batched network, BOP results file, scores."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastgdr.checkpoint import save_checkpoint
from fastgdr.config import load_config, to_dict
from fastgdr.data.bop import BopDataset
from fastgdr.data.detections import Detection
from fastgdr.errors import CheckpointError
from fastgdr.eval.results import load_results
from fastgdr.geometry import crop_affine_matrix, test_time_crop
from fastgdr.inference import PosePredictor, load_model, mask_probability
from fastgdr.models import GDRNPoseNet

from conftest import REPO, TINY_TRAIN_OVERRIDES


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = load_config(REPO / "configs/p.yaml", [*TINY_TRAIN_OVERRIDES, "model.num_classes=3"])
    torch.manual_seed(0)
    model = GDRNPoseNet.from_config(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "model_final.pth"
    save_checkpoint(path, model, config=to_dict(cfg))
    return path


def test_load_model_uses_the_embedded_config(tiny_checkpoint, tmp_path):
    model, cfg = load_model(tiny_checkpoint)
    assert not model.training and cfg.model.input_res == 128
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(tiny_checkpoint, weights_only=True)["model"], bare)
    with pytest.raises(CheckpointError, match="carries no config"):
        load_model(bare)


def test_predictor_crops_like_gdrnpp(tiny_checkpoint):
    model, cfg = load_model(tiny_checkpoint)
    predictor = PosePredictor(model, {1: 0, 2: 1}, {1: np.ones(3) * 50, 2: np.ones(3) * 60}, input_res=128)
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    dets = [Detection(1, 0, 1, 0.9, (20.0, 30.0, 40.0, 20.0)), Detection(1, 0, 2, 0.8, (100.0, 10.0, 30.0, 50.0))]
    batch = predictor.prepare(image, dets)
    assert batch.images.shape == (2, 3, 128, 128) and batch.coord_2d.shape == (2, 2, 32, 32)
    center, size = test_time_crop(dets[0].bbox, (160, 120), 1.5)
    assert np.allclose(batch.centers[0].numpy(), center) and size == 60.0
    assert torch.isclose(batch.resize_ratios[0], torch.tensor(32 / 60.0))
    assert torch.equal(batch.whs[1], torch.tensor([30.0, 50.0]))
    # coordinate map: output pixel (0, 0) sits at the crop's top-left in the image
    inverse = crop_affine_matrix(center, size, 32, inverse=True)
    u, v = inverse @ np.array([0.0, 0.0, 1.0])
    assert np.allclose(batch.coord_2d[0, :, 0, 0].numpy(), [u / 160, v / 120], atol=1e-3)
    poses, out, _ = predictor.predict(image, np.array([[200.0, 0, 80], [0, 200.0, 60], [0, 0, 1]]), dets)
    assert len(poses) == 2 and poses[0].R.shape == (3, 3) and poses[0].t.shape == (3,)
    assert np.allclose(poses[0].R @ poses[0].R.T, np.eye(3), atol=1e-5)
    assert predictor.predict(image, np.eye(3), [])[0] == []


def test_mask_probability_is_min_max_per_roi():
    mask = torch.tensor([[[[0.0, 2.0], [1.0, 4.0]]], [[[3.0, 3.0], [3.0, 3.0]]]])
    prob = mask_probability(mask)
    assert torch.allclose(prob[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.all(prob[1] == 0)


def run_test_tool(*args):
    return subprocess.run([sys.executable, str(REPO / "tools/test.py"), *args], capture_output=True, text=True)


@pytest.mark.parametrize("decoder", ["patchpnp", "epnp", "epnp-rot"])
def test_tool_writes_a_valid_results_file_and_scores(tiny_dataset, tiny_checkpoint, tmp_path, decoder):
    out = tmp_path / "eval"
    result = run_test_tool("--ckpt", str(tiny_checkpoint), "--data", str(tiny_dataset), "--out", str(out),
                           "--decoder", decoder)
    assert result.returncode == 0, result.stderr[-2000:]
    csv = out / "fastgdr_synth-test.csv"
    estimates = load_results(csv)  # validates the BOP format, per-image times included
    dets = json.loads((tiny_dataset / "detections/synth_default_detections_test.json").read_text())
    targets = {(t.scene_id, t.im_id) for t in BopDataset(tiny_dataset).load_test_targets()}
    expected = [d for d in dets if (d["scene_id"], d["image_id"]) in targets]
    assert len(estimates) == len(expected)
    times = {}
    for e in estimates:
        times.setdefault((e.scene_id, e.im_id), set()).add(e.time)
        assert e.time > 0.012  # network time + the detector's 12 ms
    assert all(len(v) == 1 for v in times.values())
    scores = json.loads((out / "scores_bop19.json").read_text())
    for key in ("bop19_average_recall", "bop19_average_recall_vsd", "bop19_average_recall_mssd",
                "bop19_average_recall_mspd", "bop19_average_time_per_image"):
        assert key in scores
    assert scores["results_file"] == csv.name  # the scores name the file they are for
    assert scores["results_sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()


def test_tool_removes_the_scores_of_a_previous_run(tiny_dataset, tiny_checkpoint, tmp_path):
    """A new results file never sits beside the scores of an older one."""
    out = tmp_path / "eval"
    out.mkdir()
    for name in ("scores_bop19.json", "per_object.csv", "scores.md"):
        (out / name).write_text('{"bop19_average_recall": 0.99}' if name.endswith(".json") else "old\n")
    result = run_test_tool("--ckpt", str(tiny_checkpoint), "--data", str(tiny_dataset), "--out", str(out), "--no-eval")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "fastgdr_synth-test.csv").is_file()
    assert not any((out / name).exists() for name in ("scores_bop19.json", "per_object.csv", "scores.md"))
    assert "removed the previous run's" in result.stdout


def test_tool_bad_input(tiny_dataset, tiny_checkpoint, tmp_path):
    result = run_test_tool("--ckpt", str(tiny_checkpoint), "--data", str(tiny_dataset), "--out", str(tmp_path), "--method", "my_method")
    assert result.returncode == 2 and "must not contain '_'" in result.stderr
    result = run_test_tool("--ckpt", str(tmp_path / "none.pth"), "--data", str(tiny_dataset), "--out", str(tmp_path))
    assert result.returncode == 2 and "checkpoint not found" in result.stderr
    result = run_test_tool("--ckpt", str(tiny_checkpoint), "--data", str(tiny_dataset), "--out", str(tmp_path),
                           "--detections", str(tmp_path / "dets.json"))
    assert result.returncode == 2 and "detections file not found" in result.stderr
