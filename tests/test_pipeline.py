"""The main job end to end (quick variant), its resume, and the report."""

import json
import subprocess
import sys

import pytest

from fastgdr.checkpoint import read_checkpoint
from fastgdr.errors import FastGDRError
from fastgdr.pipeline import Stage, run_pipeline
from fastgdr.report import markdown_table, read_eval_dir

from conftest import REPO


def test_quick_demo_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, str(REPO / "tools/demo.py"), "--quick", "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = (out / "report" / "README.md").read_text()
    runs = ("p_seed0", "p_seed1", "p_untrained", "p_R", "p28_seed0", "p28_seed1", "p28_R", "teacher", "p_kd_seed0",
            "p_kd_seed1")
    for run in runs:
        assert f"| {run} |" in report
        scores = json.loads((out / run / "eval" / "scores_bop19.json").read_text())
        assert 0.0 <= scores["bop19_average_recall"] <= 1.0
    assert "Demo budget:" in report and "## Across seeds" in report
    assert "| p | 0, 1 |" in report and "| p28 | 0, 1 |" in report and "| p_kd | 0, 1 |" in report
    assert (out / "report" / "speed_accuracy.png").stat().st_size > 0
    assert (out / "training" / "loss_curves.png").stat().st_size > 0
    copied = sorted(p.stem for p in (out / "training" / "metrics").glob("*.csv"))
    assert copied == ["p28_seed0", "p28_seed1", "p_kd_seed0", "p_kd_seed1", "p_seed0", "p_seed1", "teacher"]
    assert (out / "training" / "metrics" / "teacher.csv").read_text() == (out / "teacher" / "metrics.csv").read_text()
    csvs = sorted(p.name for p in (out / "report" / "bop_results").glob("*.csv"))
    assert csvs == sorted(f"{run.replace('_', '-')}_synth-test.csv" for run in runs)
    distilled = read_checkpoint(out / "p_kd_seed0" / "model_final.pth")["distillation"]
    assert distilled["teachers"] == [str(out / "teacher" / "model_final.pth")]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0
    assert second.stdout.count("already done, skipped") == 24  # all but the summary, which always runs


def test_a_failing_stage_stops_with_its_log(tmp_path):
    stage = Stage("broken", "train.py", ("--config", str(tmp_path / "missing.yaml"), "--data", "x", "--out", "y"),
                  (tmp_path / "never",))
    with pytest.raises(FastGDRError, match=r"(?s)stage 'broken' failed .*config file not found"):
        run_pipeline([stage], tmp_path / "logs", announce=lambda _: None)


def test_report_from_fixture_files(tmp_path):
    run = tmp_path / "p" / "eval"
    run.mkdir(parents=True)
    (run / "scores_bop19.json").write_text(json.dumps({
        "bop19_average_recall": 0.5, "bop19_average_recall_vsd": 0.4, "bop19_average_recall_mssd": 0.5,
        "bop19_average_recall_mspd": 0.6, "bop19_average_time_per_image": 0.1, "add_s_recall_0.10": 0.25,
        "add_s_mean_rotation_error_deg": 12.5, "add_s_mean_translation_error_mm": None,
    }))
    (run / "inference.json").write_text(json.dumps({"mean_network_seconds_per_image": 0.0425, "estimates": 7, "images": 3,
                                                          "decoder": "epnp-rot"}))
    (run / "config.yaml").write_text("model:\n  backbone:\n    name: P\n")
    summary = read_eval_dir(run)
    assert summary.name == "p" and summary.backbone == "P"
    table = markdown_table([summary])
    assert "| p | P | epnp-rot | 0.500 | 0.400 | 0.500 | 0.600 | 0.250 | 12.5 | – | 42.5 | 7 |" in table
    result = subprocess.run([sys.executable, str(REPO / "tools/report.py"), str(run), "--out", str(tmp_path / "rep")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rep" / "README.md").read_text().count("| p |") == 1
    missing = subprocess.run([sys.executable, str(REPO / "tools/report.py"), str(tmp_path), "--out", str(tmp_path / "r")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "scores_bop19.json is missing" in missing.stderr
