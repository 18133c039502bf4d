"""The main job end to end (quick variant), its resume, and the report."""

import json
import os
import subprocess
import sys
import time

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


SLEEPER = """import os, sys, time
start = time.time()
open(sys.argv[1] + ".pid", "w").write(str(os.getpid()))
time.sleep(float(sys.argv[2]))
if sys.argv[3] != "0":
    sys.exit(int(sys.argv[3]))
open(sys.argv[1], "w").write(f"{start} {time.time()} {os.environ.get('OMP_NUM_THREADS')}")
"""


def sleeper_stages(tmp_path, codes=(0, 0), seconds=(1.0, 1.0)):
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    return [Stage(f"s{i}", str(script), (str(tmp_path / f"s{i}.txt"), str(wait), str(code)), (tmp_path / f"s{i}.txt",),
                  group="g") for i, (code, wait) in enumerate(zip(codes, seconds))]


def intervals(tmp_path, count=2):
    return [tuple(float(v) for v in (tmp_path / f"s{i}.txt").read_text().split()[:2]) for i in range(count)]


def test_a_group_runs_together_with_the_cores_split_between_its_stages(tmp_path):
    result = run_pipeline(sleeper_stages(tmp_path), tmp_path / "logs", announce=lambda _: None, cores=2)
    (a_start, a_end), (b_start, b_end) = intervals(tmp_path)
    assert a_start < b_end and b_start < a_end  # overlapping
    assert [(tmp_path / f"s{i}.txt").read_text().split()[2] for i in range(2)] == ["1", "1"]
    assert [(r.group, r.threads) for r in result.records] == [("g", 1), ("g", 1)]
    assert result.seconds < sum(r.seconds for r in result.records)
    recorded = json.loads((tmp_path / "pipeline.json").read_text())
    assert [(r["name"], r["threads"]) for r in recorded] == [("s0", 1), ("s1", 1)]


def test_a_group_runs_one_stage_after_the_other_on_too_few_cores(tmp_path):
    result = run_pipeline(sleeper_stages(tmp_path, seconds=(0.3, 0.3)), tmp_path / "logs", announce=lambda _: None,
                          cores=1)
    (_, a_end), (b_start, _) = intervals(tmp_path)
    assert b_start >= a_end
    assert [r.threads for r in result.records] == [None, None]


def test_a_failing_stage_of_a_group_lets_the_other_finish_then_stops(tmp_path):
    with pytest.raises(FastGDRError, match=r"stage 's0' failed \(exit 3\)") as err:
        run_pipeline(sleeper_stages(tmp_path, codes=(3, 0), seconds=(0.1, 1.0)), tmp_path / "logs",
                     announce=lambda _: None, cores=2)
    assert "'s1'" not in str(err.value)
    assert (tmp_path / "s1.txt").exists()  # the other stage's work is kept
    rerun = run_pipeline(sleeper_stages(tmp_path, codes=(0, 0), seconds=(0.1, 0.1)), tmp_path / "logs",
                         announce=lambda _: None, cores=2)
    assert [r.status for r in rerun.records] == ["ran", "skipped"]


def test_an_interrupted_group_stops_its_stages(tmp_path, monkeypatch):
    import fastgdr.pipeline as pipeline

    real_sleep = time.sleep

    def interrupt_once_both_started(seconds):
        if all((tmp_path / f"s{i}.txt.pid").exists() for i in range(2)):
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(pipeline.time, "sleep", interrupt_once_both_started)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(sleeper_stages(tmp_path, seconds=(60.0, 60.0)), tmp_path / "logs", announce=lambda _: None,
                     cores=2)
    for i in range(2):
        with pytest.raises(ProcessLookupError):  # terminated and reaped, not left running
            os.kill(int((tmp_path / f"s{i}.txt.pid").read_text()), 0)
