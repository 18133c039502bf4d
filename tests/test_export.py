"""ONNX export of the whole pose network: exported graph vs eager PyTorch, pruned and dynamic batch."""

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from fastgdr.checkpoint import save_checkpoint
from fastgdr.config import load_config, to_dict
from fastgdr.export import (
    BATCH_AXIS,
    INPUT_NAMES,
    OUTPUT_NAMES,
    ExportError,
    assert_onnx_close,
    check_onnx,
    export_onnx,
    onnx_differences,
    onnx_session,
    random_roi_batch,
    run_onnx,
)
from fastgdr.models import GDRNPoseNet, split_head_channels
from fastgdr.pruning import prune_pose_net

from conftest import REPO, TINY_TRAIN_OVERRIDES

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

RES = 128
TINY = [*TINY_TRAIN_OVERRIDES, "model.num_classes=3"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Eager PyTorch on 2 threads slows down 50x when other jobs load the CPU; stay on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(overrides=()):
    cfg = load_config(None, [*TINY, *overrides])
    torch.manual_seed(0)
    model = GDRNPoseNet.from_config(cfg.model, init_heads=False).eval()
    with torch.no_grad():
        # δz ≈ 5 → t_z ≈ 1 m: objects in front of the camera, as a trained network predicts.
        model.pnp_net.fc_t.bias[2] = 5.0
    return model, cfg


@pytest.fixture(scope="module")
def pruned():
    """(pruned model, its config): head 16 → 8 channels (geo_d 2 of 4 groups), PnP 8 → 4 (pnp_d 1 of 2)."""
    model, cfg = tiny_model()
    model, cfg_model = prune_pose_net(model, cfg.model, geo_d=2, pnp_d=1)
    cfg = replace(cfg, model=cfg_model)
    assert cfg.model.geo_head.widths == (8,) * 7 and cfg.model.pnp.widths == (4,) * 3
    return model.eval(), cfg


@pytest.fixture(scope="module")
def exported(pruned, tmp_path_factory):
    return export_onnx(pruned[0], tmp_path_factory.mktemp("onnx") / "pruned.onnx", RES, batch=2)


def test_graph_has_named_dynamic_inputs_and_outputs(exported):
    graph = onnx.load(str(exported)).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES)
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == BATCH_AXIS, value.name
    assert graph.input[0].type.tensor_type.shape.dim[-1].dim_value == RES


def test_pruned_export_matches_eager_at_batch_1_and_3(pruned, exported):
    diffs = onnx_differences(pruned[0], exported, batches=(1, 3))
    assert list(diffs) == list(OUTPUT_NAMES)
    assert all(d < 1e-4 for d in diffs.values()), diffs
    assert check_onnx(pruned[0], exported, batches=(1, 3)) == max(diffs.values())


def test_output_shapes_and_poses(pruned, exported):
    inputs = random_roi_batch(pruned[0], 3, RES, seed=5)
    out = run_onnx(onnx_session(exported), inputs)
    assert out["R"].shape == (3, 3, 3) and out["t"].shape == (3, 3)
    assert out["visible_mask"].shape == (3, 1, 32, 32) and out["xyz"].shape == (3, 3, 32, 32)
    assert out["region"].shape == (3, 9, 32, 32)
    np.testing.assert_allclose(out["R"] @ out["R"].transpose(0, 2, 1), np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-5)
    assert (out["t"][:, 2] > 0.5).all()  # t in m, in front of the camera


def test_class_aware_selection_in_graph(pruned, exported):
    """Three copies of one ROI with classes 2, 0, 1 get exactly their class's channels."""
    model = pruned[0]
    inputs = {k: v[:1].expand(3, *v.shape[1:]).clone() for k, v in random_roi_batch(model, 1, RES, seed=3).items()}
    inputs["roi_classes"] = torch.tensor([2, 0, 1])
    out = run_onnx(onnx_session(exported), inputs)
    head = model.geo_head_net
    with torch.no_grad():
        dense = split_head_channels(head.forward_raw(model.extract_features(inputs["images"])), 3, head.num_regions)
    for i, cls in enumerate([2, 0, 1]):
        np.testing.assert_allclose(out["visible_mask"][i, 0], dense.visible_mask[i, cls].numpy(), atol=1e-5)
        np.testing.assert_allclose(out["xyz"][i], dense.xyz[i, :, cls].numpy(), atol=1e-5)
        np.testing.assert_allclose(out["region"][i], dense.region[i, cls].numpy(), atol=1e-5)
    assert np.abs(out["xyz"][0] - out["xyz"][1]).max() > 1e-3
    assert np.abs(out["R"][0] - out["R"][1]).max() > 1e-6 or np.abs(out["t"][0] - out["t"][1]).max() > 1e-6


def test_class_agnostic_head_keeps_all_inputs(tmp_path):
    model, _ = tiny_model(["model.class_aware=false"])
    path = export_onnx(model, tmp_path / "agnostic.onnx", RES, batch=1)
    assert [i.name for i in onnx_session(path).get_inputs()] == list(INPUT_NAMES)
    assert check_onnx(model, path, batches=(2,)) < 1e-4


def test_tolerance_check_names_the_outputs(pruned):
    assert_onnx_close({"R": 1e-4, "t": 1e-5, "xyz": 5e-3}, atol=1e-3, dense_atol=1e-2)
    with pytest.raises(ExportError, match=r"R 0\.002 > 0\.001.*region nan"):
        assert_onnx_close({"R": 2e-3, "t": 1e-5, "region": float("nan")}, atol=1e-3, dense_atol=1e-2)
    with pytest.raises(ExportError, match="multiple of the backbone stride 32"):
        random_roi_batch(pruned[0], 1, 100)


def test_tool_end_to_end(pruned, tmp_path):
    model, cfg = pruned
    ckpt = save_checkpoint(tmp_path / "pruned.pth", model, config=to_dict(cfg))
    out = tmp_path / "model.onnx"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/export_onnx.py"), "--ckpt", str(ckpt), "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file() and "MiB" in result.stdout and result.stdout.rstrip().endswith("OK")
    for name in OUTPUT_NAMES:
        assert f"  {name} " in result.stdout
