"""The accuracy/speed report: joining runs to benchmark rows, the Pareto front, the plot, the tool."""

import json
import subprocess
import sys

import pytest
import torch

from fastgdr.bench import BenchResult, BenchRow, architecture_key, write_results
from fastgdr.config import load_config
from fastgdr.errors import FastGDRError
from fastgdr.report import (
    build_report,
    latency_candidates,
    markdown_table,
    match_latency,
    pareto_front,
    RunSummary,
    read_eval_dir,
    seed_spread_markdown,
)

from conftest import REPO

CONFIGS = REPO / "configs"


def make_eval_dir(root, name, ar, config_text, network_s=0.05, refine=None):
    """An eval folder of tools/test.py with the files the report reads (``refine``: method, s/image)."""
    run = root / name / "eval"
    run.mkdir(parents=True)
    (run / "scores_bop19.json").write_text(json.dumps({
        "bop19_average_recall": ar, "bop19_average_recall_vsd": ar, "bop19_average_recall_mssd": ar,
        "bop19_average_recall_mspd": ar, "add_s_recall_0.10": ar / 2,
        "add_s_mean_rotation_error_deg": 10.0, "add_s_mean_translation_error_mm": 20.0,
    }))
    inference = {"mean_network_seconds_per_image": network_s, "estimates": 5, "images": 2}
    if refine:
        inference.update({"refine": refine[0], "mean_refine_seconds_per_image": refine[1]})
    (run / "inference.json").write_text(json.dumps(inference))
    (run / "config.yaml").write_text(config_text)
    return run


def scored_eval_dir(tmp_path):
    """An eval folder whose scores were written for the results CSV beside it."""
    from fastgdr.eval.recall import EvalResult
    from fastgdr.eval.scores import write_scores

    run = make_eval_dir(tmp_path, "p", 0.3, (CONFIGS / "p.yaml").read_text())
    csv = run / "p_synth-test.csv"
    csv.write_text("scene_id,im_id,obj_id,score,R,t,time\n1,0,1,0.9,1 0 0 0 1 0 0 0 1,0 0 500,0.1\n")
    inference = json.loads((run / "inference.json").read_text())
    (run / "inference.json").write_text(json.dumps({**inference, "results_csv": csv.name}))
    result = EvalResult(scores={"bop19_average_recall": 0.3}, recalls={}, per_object={}, num_estimates_used=1,
                        num_targets=1, num_valid_gts=1)
    write_scores(result, run, results_file=csv)
    return run, csv


def test_scores_of_the_csv_beside_them_are_read(tmp_path):
    run, _ = scored_eval_dir(tmp_path)
    summary = read_eval_dir(run)
    assert summary.average_recall == 0.3 and set(summary.scores) == {"bop19_average_recall"}


def test_stale_scores_are_refused(tmp_path):
    run, csv = scored_eval_dir(tmp_path)
    csv.write_text(csv.read_text() + "1,1,1,0.8,1 0 0 0 1 0 0 0 1,0 0 500,0.1\n")  # a newer results file
    with pytest.raises(FastGDRError, match="p_synth-test.csv has changed .* since it was scored: the scores are stale"):
        read_eval_dir(run)
    scores = json.loads((run / "scores_bop19.json").read_text())
    (run / "scores_bop19.json").write_text(json.dumps({**scores, "results_file": "old_synth-test.csv"}))
    with pytest.raises(FastGDRError, match="the scores are those of old_synth-test.csv, not of .*p_synth-test.csv"):
        read_eval_dir(run)


def bench_row(config, median_ms, rois=1, module="network", runtime="torch"):
    return BenchRow(
        config=config, module=module, runtime=runtime, device="cpu", device_name="test cpu", dtype="fp32",
        channels_last=False, compile=False, fused=False, rois=rois, input_res=256, num_classes=1, threads=2,
        torch_version=torch.__version__, malloc_tuned=True, warmup=1, repeats=5, median_ms=median_ms,
        p90_ms=median_ms * 1.1, iqr_ms=0.1, std_ms=0.1, min_ms=median_ms, max_ms=median_ms * 1.2,
        params=20_000_000, gflops=5.0, gflop_per_s=5.0 / (median_ms / 1e3), matmul_gflop_per_s=100.0,
        matmul_ratio=0.5,
    )


@pytest.fixture
def bench(tmp_path):
    """A benchmark folder with configs p, p28 and bm (their real architectures)."""
    configs = {
        name: {"source": str(CONFIGS / f"{name}.yaml"),
               "architecture": architecture_key(load_config(CONFIGS / f"{name}.yaml").model)}
        for name in ("p", "p28", "bm")
    }
    rows = [bench_row("p", 40.0), bench_row("p28", 25.0), bench_row("bm", 300.0), bench_row("p", 200.0, rois=8),
            bench_row("p28", 1.5, module="geo_head"), bench_row("p28", 30.0, module="pipeline"),
            bench_row("p", 12.0, module="refine_fast")]
    result = BenchResult({"device": "cpu", "device_name": "test cpu", "threads": 2, "torch_version": "x"},
                         {"dtype": "fp32", "repeats": 5, "warmup": 1}, {"gflop_per_s": 100.0}, configs, rows)
    write_results(result, tmp_path / "bench")
    return tmp_path / "bench", result


@pytest.fixture
def runs(tmp_path):
    """P (named 'mine'), P28, a renamed test model 'bm', one without any latency, P refined
    with "fast" (benchmarked) and with "icp" (not benchmarked)."""
    p = "model:\n  backbone:\n    name: P\n"
    return [
        make_eval_dir(tmp_path / "runs", "mine", 0.60, p),
        make_eval_dir(tmp_path / "runs", "p28_ft", 0.58, (CONFIGS / "p28.yaml").read_text()),
        make_eval_dir(tmp_path / "runs", "bm", 0.70, "model:\n  backbone:\n    name: test_convnext\n"),
        make_eval_dir(tmp_path / "runs", "other", 0.65, "model:\n  backbone:\n    name: N\n"),
        make_eval_dir(tmp_path / "runs", "mine_r", 0.72, p, refine=("fast", 0.01)),
        make_eval_dir(tmp_path / "runs", "mine_icp", 0.74, p, refine=("icp", 0.2)),
    ]


def test_pareto_front_keeps_the_undominated_points():
    latency = [10.0, 20.0, 15.0, 30.0, 12.0, 20.0]
    accuracy = [0.5, 0.7, 0.4, 0.8, 0.6, 0.6]
    assert pareto_front(latency, accuracy) == [0, 4, 1, 3]
    assert pareto_front([5.0], [0.1]) == [0]
    assert pareto_front([1.0, 1.0], [0.2, 0.3]) == [1]


def test_runs_join_rows_by_architecture_then_name(bench, runs):
    path, result = bench
    candidates = latency_candidates([(str(path), result)], rois=1)
    assert set(candidates) == {"p", "p28", "bm"}
    summaries = [read_eval_dir(run) for run in runs]
    matches = [match_latency(s, candidates) for s in summaries]
    assert (matches[0].row.config, matches[0].rule) == ("p", "architecture")
    assert (matches[1].row.config, matches[1].rule) == ("p28", "architecture")
    assert (matches[2].row.config, matches[2].rule) == ("bm", "name")
    assert matches[3] is None
    assert matches[4].refine.module == "refine_fast" and matches[4].median_ms == pytest.approx(40.0 + 12.0)
    assert matches[5] is None  # refined with ICP, which the benchmark did not time
    at_8 = latency_candidates([(str(path), result)], rois=8)
    assert match_latency(summaries[0], at_8).row.median_ms == 200.0 and match_latency(summaries[1], at_8) is None


def test_table_gains_latency_columns_only_with_a_benchmark(bench, runs):
    path, result = bench
    summaries = [read_eval_dir(run) for run in runs]
    plain = markdown_table(summaries)
    assert "latency ms" not in plain and "| mine | P | patchpnp | 0.600 |" in plain
    matches = [match_latency(s, latency_candidates([(str(path), result)])) for s in summaries]
    table = markdown_table(summaries, matches)
    assert "| p (architecture) | 40.00 | 44.00 | 20.00 | 5.00 | 125.0 |" in table
    assert "| p (architecture) + refine_fast | 52.00 | 57.20 |" in table
    other = next(line for line in table.splitlines() if line.startswith("| other |"))
    assert other.endswith("| – | – | – | – | – | – |")


def test_report_writes_markdown_plot_and_targets(bench, runs, tmp_path):
    path, result = bench
    summaries = [read_eval_dir(run) for run in runs]
    report = build_report(summaries, [(str(path), result)], tmp_path / "report")
    assert report.plot == tmp_path / "report" / "speed_accuracy.png"
    assert report.plot.stat().st_size > 1000 and report.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.readme.read_text()
    assert "![AR vs latency](speed_accuracy.png)" in text and "| other |" in text
    assert "| P28 network / BM network latency | 1 | 0.083 | – | ≤ 0.10 | yes | 0.175 (A100, 7-dataset mean) |" in text
    assert "| P28 per-image pipeline / network (≤ 1.10: adds ≤ 10 %) | 1 | 1.200 | – | ≤ 1.10 | no | – |" in text
    assert "fastgdr's speed targets (the project's own limits" in text
    assert "not measured" in text  # N28/N: no rows

    own = build_report(summaries, [], tmp_path / "own")  # no benchmark: each run's own time per image
    assert own.plot.stat().st_size > 1000 and "latency ms" not in own.table
    with pytest.raises(FastGDRError, match="needs a benchmark"):
        build_report(summaries, [], tmp_path / "x", latency="bench")


def test_report_tool_joins_evals_and_a_benchmark(bench, runs, tmp_path):
    path, _ = bench
    tool = [sys.executable, str(REPO / "tools/report.py")]
    result = subprocess.run([*tool, *map(str, runs), str(path), "--out", str(tmp_path / "rep")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| p28_ft |" in result.stdout and (tmp_path / "rep" / "speed_accuracy.png").stat().st_size > 0
    assert (tmp_path / "rep" / "README.md").read_text().count("| mine |") == 1
    from_csv = subprocess.run([*tool, *map(str, runs), str(path / "latency.csv"), "--out", str(tmp_path / "csv")],
                              capture_output=True, text=True)
    assert from_csv.returncode == 0, from_csv.stderr
    assert "| bm (name) | 300.00 |" in from_csv.stdout  # a CSV has no architectures: names only
    assert (tmp_path / "csv" / "speed_accuracy.png").stat().st_size > 0
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    bad = subprocess.run([*tool, str(runs[0]), str(broken), "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr


def test_seed_spread_groups_runs_that_differ_only_in_their_seed():
    def run(name, ar, add):
        return RunSummary(name, "P", {"bop19_average_recall": ar, "add_s_recall_0.10": add}, 1.0, 1, 1)

    runs = [run("p_seed0", 0.1, 0.2), run("p_seed1", 0.3, 0.4), run("kd_seed0", 0.5, 0.5), run("teacher", 0.9, 0.9)]
    table = seed_spread_markdown(runs)
    assert "| p | 0, 1 | 0.200 (0.100–0.300) | 0.300 (0.200–0.400) |" in table
    assert "kd" not in table and "teacher" not in table  # one seed, or no seed: no spread
    assert seed_spread_markdown(runs[2:]) is None


def csv_eval_dir(root, name, method, rows="1,0,1,0.9,1 0 0 0 1 0 0 0 1,0 0 500,0.1\n"):
    """An eval folder of tools/test.py run with ``--method method``, its results CSV beside it."""
    run = make_eval_dir(root, name, 0.3, (CONFIGS / "p.yaml").read_text())
    csv = run / f"{method}_synth-test.csv"
    csv.write_text("scene_id,im_id,obj_id,score,R,t,time\n" + rows)
    inference = json.loads((run / "inference.json").read_text())
    (run / "inference.json").write_text(json.dumps({**inference, "results_csv": csv.name}))
    return run


def test_results_csvs_are_named_per_run_and_never_overwrite_each_other(tmp_path):
    """Three evaluations of one model with one --method (plain, refined, ICP) keep three files."""
    runs = [csv_eval_dir(tmp_path / "runs", name, "p-cpu", rows=f"1,0,1,0.9,1 0 0 0 1 0 0 0 1,0 0 {z},0.1\n")
            for name, z in (("P", 500), ("P-R", 510), ("p_icp", 520))]
    report = build_report([read_eval_dir(run) for run in runs], [], tmp_path / "report")
    folder = tmp_path / "report" / "bop_results"
    assert sorted(path.name for path in folder.iterdir()) == [
        "P-R_synth-test.csv", "P_synth-test.csv", "p-icp_synth-test.csv"]
    for run, name in zip(runs, ("P_synth-test.csv", "P-R_synth-test.csv", "p-icp_synth-test.csv")):
        assert (folder / name).read_text() == (run / "p-cpu_synth-test.csv").read_text()
    assert "`P_synth-test.csv`, `P-R_synth-test.csv`, `p-icp_synth-test.csv`" in report.readme.read_text()


@pytest.mark.parametrize("names", [("p_seed0", "p-seed0"), ("teacher", "Teacher")])
def test_runs_that_would_share_a_results_file_are_refused(tmp_path, names):
    runs = [csv_eval_dir(tmp_path / f"r{i}", name, "fastgdr") for i, name in enumerate(names)]
    with pytest.raises(FastGDRError, match=r"would both be saved as bop_results/.*_synth-test.csv: give their eval"):
        build_report([read_eval_dir(run) for run in runs], [], tmp_path / "report")
    assert not (tmp_path / "report").exists()  # refused before anything is written
    tool = subprocess.run([sys.executable, str(REPO / "tools/report.py"), *map(str, runs), "--out",
                           str(tmp_path / "rep")], capture_output=True, text=True)
    assert tool.returncode == 2 and "would both be saved as" in tool.stderr and "Traceback" not in tool.stderr
