"""Faults a careful or hostile user meets, per tool: nothing lost, nothing silently wrong.

Every case here is listed in docs/faults.md (case → behaviour → test). Refusals exit with
status 2, one message and no traceback, before the long work and without writing.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fastgdr.checkpoint import read_checkpoint, save_checkpoint
from fastgdr.config import load_config, to_dict
from fastgdr.engine import trainer
from fastgdr.engine.divergence import check_loss, check_step
from fastgdr.errors import ResultsFormatError, TrainingError
from fastgdr.eval.results import PoseEstimate, ResultsWriter, load_results
from fastgdr.models import GDRNPoseNet
from fastgdr.pipeline import Stage

from conftest import REPO, TINY_TRAIN_OVERRIDES

DETECTIONS = "detections/synth_default_detections_test.json"
ONE_ESTIMATE = "scene_id,im_id,obj_id,score,R,t,time\n1,0,1,0.9,1 0 0 0 1 0 0 0 1,0 0 400,0.1\n"


def tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)], capture_output=True, text=True)


def refused(result: subprocess.CompletedProcess, *phrases: str) -> None:
    """Exit status 2, one line naming the problem, no traceback."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def tiny_cfg(*extra):
    return load_config(REPO / "configs/p.yaml", [*TINY_TRAIN_OVERRIDES, "model.num_classes=3", *extra])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model with its config: a finished run's model_final.pth."""
    torch.manual_seed(0)
    cfg = tiny_cfg()
    path = tmp_path_factory.mktemp("run") / "model_final.pth"
    return save_checkpoint(path, GDRNPoseNet.from_config(cfg.model), config=to_dict(cfg), iteration=5)


@pytest.fixture(scope="module")
def one_image_detections(tiny_dataset, tmp_path_factory) -> Path:
    """The default detections of the first test image (less network time per tool run)."""
    dets = json.loads((tiny_dataset / DETECTIONS).read_text())
    first = min((d["scene_id"], d["image_id"]) for d in dets)
    path = tmp_path_factory.mktemp("dets") / "one_image.json"
    path.write_text(json.dumps([d for d in dets if (d["scene_id"], d["image_id"]) == first]))
    return path


def train_args(data, out, *overrides, flags=()):
    return ["--config", REPO / "configs/p.yaml", "--data", data, "--out", out, "--no-progress", *flags,
            *TINY_TRAIN_OVERRIDES, *overrides]


# ----------------------------------------------------------------------------- 1. overwrites


def fake_run(folder: Path, finished: bool = True) -> dict[str, bytes]:
    """A run folder as an earlier run leaves it; file → bytes."""
    files = {"config.yaml": b"old: config\n", "metrics.csv": b"iter,loss\n1,9\n", "last_checkpoint.pth": b"old ckpt",
             "tensorboard/events.out.tfevents.old": b"old events"}
    if finished:
        files["model_final.pth"] = b"old weights"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def unchanged(folder: Path, files: dict[str, bytes]) -> bool:
    return all((folder / name).read_bytes() == data for name, data in files.items())


def test_train_refuses_a_finished_or_unfinished_run_and_overwrite_starts_clean(tiny_dataset, tmp_path):
    finished = tmp_path / "finished"
    files = fake_run(finished)
    refused(tool("train.py", *train_args(tiny_dataset, finished, "train.iterations=1")),
            "holds a finished run (model_final.pth)", "--overwrite")
    unfinished = tmp_path / "unfinished"
    fake_run(unfinished, finished=False)
    refused(tool("train.py", *train_args(tiny_dataset, unfinished, "train.iterations=1")),
            "holds an unfinished run (last_checkpoint.pth)", "--resume")
    refused(tool("train.py", *train_args(tiny_dataset, finished, flags=["--resume", "--overwrite"])), "pass one of them")
    assert unchanged(finished, files)

    stale = finished / ".last_checkpoint.pth.0badc0de.tmp"  # what a killed save leaves
    stale.write_bytes(b"half a checkpoint")
    kept = finished / "pruned.pth"  # not a run output: --overwrite leaves it
    kept.write_bytes(b"an --init beside the run")
    result = tool("train.py", *train_args(tiny_dataset, finished, "train.iterations=1", flags=["--overwrite"]))
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_checkpoint(finished / "model_final.pth")["iteration"] == 1
    assert not (finished / "tensorboard" / "events.out.tfevents.old").exists() and not stale.exists()
    assert [r.split(",")[0] for r in (finished / "metrics.csv").read_text().splitlines()[1:]] == ["1"]
    assert kept.read_bytes() == b"an --init beside the run"


def test_train_never_overwrites_its_init(tiny_dataset, checkpoint):
    refused(tool("train.py", *train_args(tiny_dataset, checkpoint.parent, flags=["--init", checkpoint, "--overwrite"])),
            "would overwrite the input --init")


def test_distill_never_replaces_its_teacher(tiny_dataset, checkpoint):
    before = checkpoint.read_bytes()
    for extra in ([], ["--overwrite"]):
        result = tool("distill.py", "--teacher", checkpoint,
                      *train_args(tiny_dataset, checkpoint.parent, "train.iterations=2", "kd.feature.weight=1",
                                  flags=extra))
        refused(result, "would overwrite the input --teacher")
    assert checkpoint.read_bytes() == before


def test_prune_and_export_never_destroy_their_input(checkpoint, tmp_path):
    before = checkpoint.read_bytes()
    refused(tool("prune.py", "--ckpt", checkpoint, "--geo-d", "1", "--out", checkpoint, "--overwrite"),
            "would overwrite the input --ckpt")
    refused(tool("export_onnx.py", "--ckpt", checkpoint, "--out", checkpoint, "--overwrite"),
            "would overwrite the input --ckpt")
    assert checkpoint.read_bytes() == before
    done = tmp_path / "model.onnx"
    done.write_bytes(b"an earlier export")
    refused(tool("export_onnx.py", "--ckpt", checkpoint, "--out", done), "already exists", "--overwrite")
    refused(tool("export_onnx.py", "--ckpt", checkpoint, "--out", tmp_path), "is a folder")
    assert done.read_bytes() == b"an earlier export"


def test_prune_refuses_existing_outputs_unless_told(checkpoint, tmp_path):
    out = tmp_path / "pruned.pth"
    args = ["--ckpt", checkpoint, "--geo-d", "1", "--out", out, "--repeats", "1", "--threads", "1"]
    assert tool("prune.py", *args).returncode == 0
    first = out.read_bytes()
    refused(tool("prune.py", *args), "pruned.pth", "already exist", "--overwrite")
    assert out.read_bytes() == first
    assert tool("prune.py", *args, "--overwrite").returncode == 0


def test_test_tool_twice_into_one_out_needs_overwrite(tiny_dataset, checkpoint, one_image_detections, tmp_path):
    args = ["--ckpt", checkpoint, "--data", tiny_dataset, "--detections", one_image_detections, "--out", tmp_path,
            "--no-eval"]
    first = tool("test.py", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    csv = tmp_path / "fastgdr_synth-test.csv"
    before = csv.read_bytes()
    refused(tool("test.py", *args), "fastgdr_synth-test.csv", "already exist", "--overwrite")
    assert csv.read_bytes() == before
    again = tool("test.py", *args, "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    assert csv.is_file() and not csv.with_name(csv.name + ".partial").exists()


@pytest.mark.parametrize("option, value", [("--method", "../../x"), ("--method", "a/b"), ("--split", "../test")])
def test_names_never_write_outside_out(tiny_dataset, checkpoint, tmp_path, option, value):
    out = tmp_path / "a" / "b"
    refused(tool("test.py", "--ckpt", checkpoint, "--data", tiny_dataset, "--out", out, option, value),
            f"{option} '{value}' is not a plain name")
    assert not any(tmp_path.rglob("*.csv"))


def test_eval_bop_refuses_earlier_scores_and_a_file_as_out_before_evaluating(tiny_dataset, tmp_path):
    results = tmp_path / "mine_synth-test.csv"
    results.write_text(ONE_ESTIMATE)
    as_file = tmp_path / "file"
    as_file.write_text("x")
    refused(tool("eval_bop.py", "--results", results, "--data", tiny_dataset, "--out", as_file),
            "is a file; it must be a folder")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "scores_bop19.json").write_text("{}")
    refused(tool("eval_bop.py", "--results", results, "--data", tiny_dataset, "--out", tmp_path / "eval"),
            "scores_bop19.json already exists", "--overwrite")


def test_bench_model_info_and_report_refuse_earlier_results(tmp_path):
    (tmp_path / "latency.json").write_text("{}")
    refused(tool("bench_latency.py", "--configs", "p", "--out", tmp_path), "latency.json already exists")
    (tmp_path / "model_info.json").write_text("[]")
    refused(tool("model_info.py", "--config", REPO / "configs/p.yaml", "--out", tmp_path),
            "model_info.json already exists")
    (tmp_path / "README.md").write_text("# an earlier report")
    refused(tool("report.py", tmp_path, "--out", tmp_path), "README.md already exists")


def test_make_synthetic_refuses_a_file_as_out(tmp_path):
    as_file = tmp_path / "file"
    as_file.write_text("x")
    refused(tool("make_synthetic.py", "--out", as_file), "is a file; it must be a folder")


def test_demo_stages_resume_or_overwrite_an_interrupted_stage(tmp_path):
    checkpoint = tmp_path / "last_checkpoint.pth"
    stage = Stage("train p", "train.py", ("--out", str(tmp_path)), (tmp_path / "model_final.pth",),
                  resumable=checkpoint)
    assert stage.command()[-1] == "--overwrite"
    checkpoint.write_bytes(b"")
    assert stage.command()[-1] == "--resume"


# ----------------------------------------------------------------------------- 3. non-finite training


def test_lr_inf_and_nan_are_refused_before_training(tiny_dataset, tmp_path):
    for value in (".inf", ".nan"):
        refused(tool("train.py", *train_args(tiny_dataset, tmp_path / "run", f"train.lr={value}")),
                "'train.lr' must be a finite number")
    refused(tool("train.py", *train_args(tiny_dataset, tmp_path / "run", "train.lr=-1")), "lr must be a finite number > 0")
    assert not (tmp_path / "run").exists()


def test_a_loss_that_turns_nan_stops_with_iteration_and_term_and_keeps_the_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    calls = []
    real = trainer.gdrn_losses

    def nan_at_third_iteration(*args, **kwargs):
        losses = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            losses["loss_z"] = losses["loss_z"] * float("nan")
        return losses

    monkeypatch.setattr(trainer, "gdrn_losses", nan_at_third_iteration)
    cfg = tiny_cfg("train.iterations=4", "train.checkpoint_period=2", "train.amp=false")
    with pytest.raises(TrainingError) as err:
        trainer.train(cfg, tiny_dataset, tmp_path / "run", progress=False)
    message = str(err.value)
    assert "training stopped at iteration 3" in message and "loss_z = nan" in message
    assert "last good checkpoint" in message and "(iteration 2) is kept" in message
    kept = read_checkpoint(tmp_path / "run" / "last_checkpoint.pth")
    assert kept["iteration"] == 2 and all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_a_diverging_run_exits_2_and_saves_no_non_finite_weights(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    result = tool("train.py", *train_args(tiny_dataset, out, "train.lr=1e30", "train.iterations=6",
                                          "train.checkpoint_period=1", "train.warmup_iters=0"))
    refused(result, "training stopped at iteration", "not finite" if "loss" in result.stderr else "non-finite")
    assert not (out / "model_final.pth").exists()
    if (out / "last_checkpoint.pth").exists():
        kept = read_checkpoint(out / "last_checkpoint.pth")["model"]
        assert all(torch.isfinite(v).all() for v in kept.values() if v.is_floating_point())


def test_non_finite_gradients_or_weights_stop_before_anything_is_saved(tmp_path):
    model = torch.nn.Linear(3, 2)
    losses = {"loss_z": torch.tensor(0.5)}
    model.weight.grad = torch.zeros_like(model.weight)
    model.bias.grad = torch.tensor([0.0, float("inf")])
    with pytest.raises(TrainingError, match=r"iteration 7: non-finite gradients of 1 parameter\(s\) \(bias\); "
                                            r"the loss terms were finite \(loss_z = 0.5\)\. No checkpoint"):
        check_step([model, None], losses, 7, tmp_path / "last_checkpoint.pth")
    model.bias.grad = None
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"non-finite weights after the update of 1 parameter\(s\) \(weight\)"):
        check_step([model], losses, 7, tmp_path / "last_checkpoint.pth")
    huge = {"loss_a": torch.tensor(3e38), "loss_b": torch.tensor(3e38)}
    with pytest.raises(TrainingError, match="the sum overflowed; largest terms loss_a = 3e"):
        check_loss(huge["loss_a"] + huge["loss_b"], huge, 1, tmp_path / "none.pth")


# ----------------------------------------------------------------------------- 4./5. late failures, silent drops


def write_detections(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps(entries))
    return path


def test_a_nan_box_is_refused_before_inference(tiny_dataset, checkpoint, one_image_detections, tmp_path):
    entries = json.loads(one_image_detections.read_text())
    entries[1]["bbox"][2] = float("nan")
    dets = write_detections(tmp_path / "dets.json", entries)
    refused(tool("test.py", "--ckpt", checkpoint, "--data", tiny_dataset, "--detections", dets, "--out", tmp_path / "e"),
            "entry 1: 'bbox' must be a finite number")
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())


def test_detections_of_no_image_of_the_split_are_an_error(tiny_dataset, checkpoint, one_image_detections, tmp_path):
    entries = json.loads(one_image_detections.read_text())
    for entry in entries:
        entry["scene_id"] += 100
    dets = write_detections(tmp_path / "dets.json", entries)
    refused(tool("test.py", "--ckpt", checkpoint, "--data", tiny_dataset, "--detections", dets, "--out", tmp_path / "e"),
            "no detection can be used", f"{len(entries)} of images the run does not process")


def test_dropped_detections_are_counted_and_reported(tiny_dataset, checkpoint, one_image_detections, tmp_path):
    entries = json.loads(one_image_detections.read_text())
    extra = [dict(entries[0], score=float("nan")), dict(entries[0], category_id=99),
             dict(entries[0], scene_id=entries[0]["scene_id"] + 100)]
    dets = write_detections(tmp_path / "dets.json", entries + extra)
    out = tmp_path / "e"
    result = tool("test.py", "--ckpt", checkpoint, "--data", tiny_dataset, "--detections", dets, "--out", out, "--no-eval")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (f"{len(entries)} of {len(entries) + 3} detections used; dropped: 1 of images the run does not process"
            in result.stdout)
    assert "1 of unknown objects (obj_id 99); 1 with a NaN or infinite score" in result.stdout
    summary = json.loads((out / "inference.json").read_text())
    assert summary["detections_used"] == len(entries) == summary["estimates"]
    assert summary["detections_dropped"] == {"of images the run does not process": 1, "of unknown objects": 1,
                                             "with a NaN or infinite score": 1}


def test_a_depth_image_of_the_wrong_size_is_refused_before_inference(tiny_dataset, checkpoint, tmp_path):
    data = tmp_path / "synth"
    shutil.copytree(tiny_dataset, data, ignore=shutil.ignore_patterns("train_pbr"))
    depth_path = sorted((data / "test").glob("*/depth/*.png"))[0]
    depth = cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(depth_path), depth[: depth.shape[0] // 2])
    out = tmp_path / "e"
    refused(tool("test.py", "--ckpt", checkpoint, "--data", data, "--out", out),
            f"{depth_path.name}: depth image is 320×120 px, expected 320×240")
    assert not out.exists() or not any(out.iterdir())  # no results file written before the failure
    results = tmp_path / "m_synth-test.csv"
    results.write_text(ONE_ESTIMATE)
    refused(tool("eval_bop.py", "--results", results, "--data", data, "--out", out), "depth image is 320×120 px")


def test_results_are_written_image_by_image_and_a_failure_keeps_them(tmp_path):
    path = tmp_path / "m_synth-test.csv"
    good = PoseEstimate(1, 0, 1, 0.9, np.eye(3), np.array([1.0, 2.0, 300.0]), 0.1)
    bad = PoseEstimate(1, 1, 2, 0.8, np.eye(3), np.array([np.nan, 2.0, 300.0]), 0.1)
    with pytest.raises(ResultsFormatError, match="non-finite t in the estimate of scene 1 image 1 object 2"):
        with ResultsWriter(path) as writer:
            writer.write([good])
            writer.write([bad])
    partial = path.with_name(path.name + ".partial")
    assert not path.exists() and len(load_results(partial)) == 1  # what was done is kept, under another name


# ----------------------------------------------------------------------------- 7. smaller


def test_model_info_uses_the_configs_input_res(tmp_path):
    tiny = ["model.backbone.name=test_convnext", "model.geo_head.widths=[16,16,16,16,16,16,16]",
            "model.geo_head.gn_groups=[4,4,4,4,4,4,4]"]
    result = tool("model_info.py", "--config", REPO / "configs/p.yaml", "--out", tmp_path, "model.input_res=128", *tiny)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "128x128 crop" in result.stdout
    assert json.loads((tmp_path / "model_info.json").read_text())[0]["input_res"] == 128


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_message(tiny_dataset, checkpoint, tmp_path):
    refused(tool("test.py", "--ckpt", checkpoint, "--data", tiny_dataset, "--out", tmp_path / "e", "--device", "cuda"),
            "--device cuda", "sees no CUDA device")
    results = tmp_path / "mine_synth-test.csv"
    results.write_text(ONE_ESTIMATE)
    refused(tool("eval_bop.py", "--results", results, "--data", tiny_dataset, "--out", tmp_path / "e", "--device",
                 "cuda"), "sees no CUDA device")
    assert not (tmp_path / "e").exists()


def test_out_pointing_at_a_file_is_one_message(tiny_dataset, checkpoint, tmp_path):
    as_file = tmp_path / "file"
    as_file.write_text("x")
    refused(tool("test.py", "--ckpt", checkpoint, "--data", tiny_dataset, "--out", as_file), "is a file")
    refused(tool("train.py", *train_args(tiny_dataset, as_file)), "is a file")
    assert as_file.read_text() == "x"
