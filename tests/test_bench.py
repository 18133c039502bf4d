"""The latency protocol, the benchmark rows and files, the targets, and tools/bench_latency.py."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fastgdr.bench import (
    CSV_FIELDS,
    DEFAULT_MODULES,
    MALLOC_ENV,
    BenchmarkError,
    BenchResult,
    BenchRow,
    BenchSettings,
    LatencyStats,
    compile_frozen,
    evaluate_targets,
    format_targets,
    load_bench_configs,
    measure_latency,
    read_results,
    resolve_config,
    round_ratios,
    run_benchmark,
    time_round_robin,
    write_results,
)

from conftest import REPO, TINY_MODEL_OVERRIDES

CONFIGS = REPO / "configs"
# Tiny networks on 64 px crops.
TINY = [*TINY_MODEL_OVERRIDES, "model.input_res=64"]
SCHEMA = (
    "config", "module", "device", "dtype", "channels_last", "compile", "rois", "input_res", "threads",
    "torch_version", "median_ms", "p90_ms", "iqr_ms", "std_ms", "repeats", "params", "gflops",
)


def fake_clock(durations_ms):
    """A clock whose consecutive (start, end) readings are ``durations_ms`` apart."""
    readings, now = [], 0.0
    for d in durations_ms:
        readings += [now, now + d / 1e3]
        now += d / 1e3 + 1.0
    return iter(readings).__next__


# --------------------------------------------------------------------------- protocol


def test_stats_from_a_fake_clock():
    calls = []
    (stats,) = measure_latency([lambda: calls.append(1)], "cpu", warmup=2, repeats=10,
                               clock=fake_clock([7, 1, 10, 3, 5, 2, 9, 4, 8, 6]))
    assert len(calls) == 12  # warm-up rounds run but are not timed
    assert stats.repeats == 10
    assert stats.median_ms == pytest.approx(5.5)
    assert stats.p90_ms == pytest.approx(9.1)  # linear interpolation between 9 and 10
    assert stats.iqr_ms == pytest.approx(7.75 - 3.25)
    assert stats.std_ms == pytest.approx(np.std(np.arange(1, 11)))
    assert (stats.min_ms, stats.max_ms) == pytest.approx((1.0, 10.0))


def test_calls_are_timed_round_robin():
    # readings alternate between the two calls: a, b, a, b, ...
    a, b = measure_latency([lambda: None, lambda: None], "cpu", warmup=0, repeats=3,
                           clock=fake_clock([1, 10, 2, 20, 3, 30]))
    assert (a.median_ms, b.median_ms) == pytest.approx((2.0, 20.0))


def test_sleeping_calls_are_measured_in_ms():
    slow, fast = measure_latency([lambda: time.sleep(0.004), lambda: None], torch.device("cpu"), 1, 3)
    assert slow.median_ms >= 4.0 > fast.median_ms
    assert slow.min_ms <= slow.median_ms <= slow.p90_ms <= slow.max_ms


def test_stats_need_samples_and_sane_settings():
    assert LatencyStats.from_samples([2.0]).p90_ms == 2.0
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])
    with pytest.raises(BenchmarkError, match="repeats must be >= 1"):
        measure_latency([lambda: None], "cpu", repeats=0)


# --------------------------------------------------------------------------- inputs


def test_bad_names_give_clear_errors(tmp_path):
    with pytest.raises(BenchmarkError, match=r"unknown config 'q28'.*Valid names: .*p28"):
        resolve_config("q28", CONFIGS)
    with pytest.raises(BenchmarkError, match="config file not found"):
        resolve_config(str(tmp_path / "nope.yaml"), CONFIGS)
    with pytest.raises(BenchmarkError, match="unknown dtype 'fp64'. Valid: fp32, fp16, bf16"):
        BenchSettings(dtype="fp64")
    with pytest.raises(BenchmarkError, match="unknown module"):
        BenchSettings(modules=("network", "refine"))
    with pytest.raises(BenchmarkError, match="must contain 'network'"):
        BenchSettings(modules=("backbone",))
    assert BenchSettings(modules=("network", "refine_icp", "refine_fast")).refine_methods == ("icp", "fast")
    with pytest.raises(BenchmarkError, match="ROI counts"):
        BenchSettings(rois=(0,))


def test_configs_by_name_and_path_with_overrides(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("model:\n  backbone:\n    name: N\n")
    configs = load_bench_configs(["p28", str(own)], CONFIGS, num_classes=4, overrides=["model.input_res=128"])
    assert list(configs) == ["p28", "mine"]
    path, cfg = configs["p28"]
    assert path == CONFIGS / "p28.yaml" and cfg.num_classes == 4 and cfg.input_res == 128
    assert cfg.geo_head.widths == (32,) * 7
    with pytest.raises(BenchmarkError, match="listed twice"):
        load_bench_configs(["p", "p"], CONFIGS)


# --------------------------------------------------------------------------- benchmark run


@pytest.fixture
def one_thread():
    """One torch thread: two threads on a shared 2-core machine stall for up to a second."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_benchmark_writes_well_formed_csv_and_json(tmp_path, one_thread):
    configs = load_bench_configs(["p", "p28"], CONFIGS, num_classes=3, overrides=TINY)
    settings = BenchSettings(rois=(1, 2), warmup=0, repeats=2, onnx=True)
    announced = []
    result = run_benchmark(configs, settings, announce=announced.append)
    lines = [line for line in announced if not line.startswith("warning: load average")]  # a busy machine
    assert lines[0].startswith("built [1/2] p: ")
    assert lines[1].startswith("built [2/2] p28: ") and "exported to ONNX" in lines[1]
    assert lines[2].startswith("timed 14 modules and the 2048² fp32 matmul at 1 ROI round-robin")
    assert lines[3].startswith("timed 14 modules and the 2048² fp32 matmul at 2 ROIs") and "GFLOP/s" in lines[3]
    assert lines[4].startswith("[1/2] p (") and lines[5].startswith("[2/2] p28 (") and "ORT" in lines[5]
    csv_path, json_path = write_results(result, tmp_path / "bench")

    with csv_path.open() as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    assert tuple(header) == CSV_FIELDS and set(SCHEMA) <= set(header)
    assert len(rows) == 2 * 2 * len(DEFAULT_MODULES) + 2 * 2  # configs × ROI counts × modules + ONNX rows
    per_config = len(rows) // 2  # grouped by configuration, its ONNX Runtime rows last
    assert [r["config"] for r in rows] == ["p"] * per_config + ["p28"] * per_config
    assert [r["runtime"] for r in rows[:per_config]] == ["torch"] * (per_config - 2) + ["onnxruntime"] * 2
    torch_rows = [r for r in rows if r["runtime"] == "torch"]
    assert {(r["config"], r["module"], r["rois"]) for r in torch_rows} == {
        (c, m, str(n)) for c in ("p", "p28") for m in DEFAULT_MODULES for n in (1, 2)
    }
    assert "refine_fast" in DEFAULT_MODULES and "refine_icp" not in DEFAULT_MODULES
    for r in rows:
        assert float(r["median_ms"]) > 0 and float(r["p90_ms"]) >= float(r["median_ms"]) - 1e-9
        assert r["device"] == "cpu" and r["dtype"] == "fp32" and r["input_res"] == "64"
        assert r["torch_version"] == torch.__version__ and r["threads"] == "1" and r["repeats"] == "2"
    network = next(r for r in rows if (r["config"], r["module"], r["rois"]) == ("p", "network", "2"))
    backbone = next(r for r in rows if (r["config"], r["module"], r["rois"]) == ("p", "backbone", "2"))
    assert int(network["params"]) > int(backbone["params"]) > 0
    assert float(network["gflops"]) > float(backbone["gflops"]) > 0
    onnx = [r for r in rows if r["runtime"] == "onnxruntime"]
    assert {r["module"] for r in onnx} == {"network"} and len(onnx) == 4
    # eager networks run fused as tools/test.py runs them; the ONNX graph keeps timm's blocks
    assert {r["fused"] for r in torch_rows} == {"True"} and {r["fused"] for r in onnx} == {"False"}

    data = json.loads(json_path.read_text())
    assert data["environment"]["torch_version"] == torch.__version__ and data["environment"]["device_name"]
    assert data["environment"]["load_average_1min"] >= 0 and data["environment"]["cpu_count"] >= 1
    assert data["matmul"]["size"] == 2048 and data["matmul"]["gflop_per_s"] > 0
    # the matmul is timed inside each round-robin: one value per ROI count, in the rows of that measurement
    by_rois = data["matmul"]["by_rois"]
    assert set(by_rois) == {"1", "2"} and all(v["repeats"] == 2 and v["gflop_per_s"] > 0 for v in by_rois.values())
    for r in rows:
        assert float(r["matmul_gflop_per_s"]) == pytest.approx(by_rois[r["rois"]]["gflop_per_s"])
    assert len(data["samples_ms"]["matmul/2"]) == 2 and len(data["samples_ms"]["p28/network/torch/1"]) == 2
    assert "onnxruntime" not in "".join(data["samples_ms"])  # timed apart: no per-round pairing
    spread = [t for t in data["targets"] if t["key"] == "p28_matmul"]
    assert spread and all(t["rounds"] == 2 and t["round_q25"] <= t["round_q75"] for t in spread)
    assert set(data["configs"]) == {"p", "p28"} and data["configs"]["p28"]["model"]["input_res"] == 64
    assert {t["key"] for t in data["targets"]} >= {"p28_vs_bm", "p28_onnx", "p28_pipeline", "p28_matmul"}
    back = read_results(tmp_path / "bench")
    assert back.rows == result.rows and back.configs == result.configs and back.samples == result.samples
    assert read_results(csv_path).rows == result.rows  # the CSV reads back exactly, typed


def test_compilation_runs_each_call_once_with_frozen_weights():
    from torch._inductor import config as inductor_config

    seen = []
    record = lambda: seen.append((inductor_config.freezing, torch.is_inference_mode_enabled()))
    compile_frozen([record, record])
    assert seen == [(True, True), (True, True)] and inductor_config.freezing is False


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile's Inductor needs a C compiler on the CPU")
def test_compiled_benchmark_times_unfused_networks(one_thread):
    configs = load_bench_configs(["p28"], CONFIGS, num_classes=1, overrides=TINY)
    result = run_benchmark(configs, BenchSettings(rois=(1,), warmup=0, repeats=2, compile=True, modules=("network",)))
    (row,) = result.rows
    assert row.compile and not row.fused and row.median_ms > 0


# --------------------------------------------------------------------------- targets


def row(config, module="network", rois=1, median_ms=10.0, runtime="torch", gflops=1.0, device="cpu", dtype="fp32"):
    """A hand-made benchmark row (the fields targets read; the rest fixed)."""
    return BenchRow(
        config=config, module=module, runtime=runtime, device=device, device_name="test", dtype=dtype,
        channels_last=False, compile=False, fused=False, rois=rois, input_res=256, num_classes=1, threads=2,
        torch_version=torch.__version__, malloc_tuned=True, warmup=1, repeats=5, median_ms=median_ms,
        p90_ms=median_ms, iqr_ms=0.0, std_ms=0.0, min_ms=median_ms, max_ms=median_ms, params=1, gflops=gflops,
        gflop_per_s=gflops / (median_ms / 1e3), matmul_gflop_per_s=100.0, matmul_ratio=gflops / median_ms * 10,
    )


def test_targets_are_ratios_of_measured_rows():
    rows = [
        row("bm", median_ms=200.0), row("P28", median_ms=30.0, gflops=1.8), row("p", "geo_head", median_ms=10.0),
        row("p28", "geo_head", median_ms=0.5), row("p28", runtime="onnxruntime", median_ms=15.0),
        row("p28", "pipeline", median_ms=36.0), row("p28", rois=8, median_ms=100.0, gflops=14.4),
        row("bm", rois=8, median_ms=1000.0),
    ]
    results = {(r.key, r.rois): r for r in evaluate_targets(rows)}
    assert results["p28_vs_bm", 1].measured == pytest.approx(0.15) and results["p28_vs_bm", 1].met is False
    assert ("p28_vs_bm", 8) not in results  # stated at 1 ROI only
    assert results["geo_head_p28_vs_p", 1].measured == pytest.approx(0.05) and results["geo_head_p28_vs_p", 1].met
    assert results["p28_matmul", 1].measured == pytest.approx(0.6) and results["p28_matmul", 1].met  # ≥ 0.6
    assert results["p28_matmul", 8].measured == pytest.approx(1.44)
    assert results["p28_onnx", 1].measured == pytest.approx(0.5) and results["p28_onnx", 1].met
    assert results["p28_pipeline", 1].measured == pytest.approx(1.2) and results["p28_pipeline", 1].met is False
    missing = results["geo_head_n28_vs_n", None]
    assert missing.measured is None and missing.met is None and "not measured" in missing.note
    text = format_targets(list(results.values()))
    assert "≤ 0.10" in text and "≥ 0.60" in text and " no" in text and " yes" in text
    # fastgdr's limits, with FAST GDRNPP's own values beside them
    assert "0.175 (A100, 7-dataset mean)" in text and "1.89 / 3.8 ms ≈ 0.50" in text


def test_targets_pair_rows_of_one_device_and_dtype():
    rows = [row("p28", median_ms=20.0, device="cuda"), row("bm", median_ms=100.0, device="cpu")]
    (result,) = [r for r in evaluate_targets(rows) if r.key == "p28_vs_bm"]
    assert result.measured is None
    rows[0] = dataclasses.replace(rows[0], matmul_gflop_per_s=float("nan"))  # no matmul in that measurement
    assert all(r.measured is None for r in evaluate_targets(rows) if r.key == "p28_matmul")


def test_each_ratio_has_the_spread_of_its_per_round_ratios():
    """Round k of a round-robin times every call once: the ratios of round k are paired."""
    rows = [row("p28", median_ms=30.0, gflops=3.0), row("bm", median_ms=300.0), row("p28", runtime="onnxruntime")]
    samples = {
        "p28/network/torch/1": [20.0, 30.0, 30.0, 40.0, 30.0],
        "bm/network/torch/1": [200.0, 300.0, 250.0, 400.0, 300.0],  # the machine slows both in rounds 1 and 4
        "matmul/1": [10.0, 20.0, 20.0, 20.0, 40.0],
    }
    results = {r.key: r for r in evaluate_targets(rows, samples)}
    bm = results["p28_vs_bm"]
    assert bm.measured == pytest.approx(0.1) and bm.rounds == 5
    q25, q75 = np.percentile([0.1, 0.1, 0.12, 0.1, 0.1], [25, 75])
    assert (bm.round_q25, bm.round_q75) == pytest.approx((q25, q75))
    # GFLOP/s of P28 over the matmul's, round by round: (3 / t) / (2·2048³ / 1e9 / m)
    flops = 2 * 2048**3 / 1e9
    per_round = [(3.0 / (t / 1e3)) / (flops / (m / 1e3)) for t, m in zip(samples["p28/network/torch/1"], samples["matmul/1"])]
    matmul = results["p28_matmul"]
    assert (matmul.round_q25, matmul.round_q75) == pytest.approx(tuple(np.percentile(per_round, [25, 75])))
    assert results["p28_onnx"].rounds == 0 and results["p28_onnx"].round_q25 is None  # not paired with eager rounds
    assert "(IQR of 5 rounds)" in format_targets([bm])


def test_round_robin_samples_are_paired_by_round():
    a, b = time_round_robin([lambda: None, lambda: None], "cpu", warmup=1, repeats=3,
                            clock=fake_clock([1, 10, 2, 20, 4, 40]))
    assert (a, b) == (pytest.approx([1.0, 2.0, 4.0]), pytest.approx([10.0, 20.0, 40.0]))
    assert round_ratios(a, b) == pytest.approx([0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="paired samples"):
        round_ratios([1.0], [1.0, 2.0])


def test_results_file_errors(tmp_path):
    with pytest.raises(BenchmarkError, match="benchmark results not found"):
        read_results(tmp_path)
    (tmp_path / "latency.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(BenchmarkError, match="missing key"):
        read_results(tmp_path)
    bad = BenchResult({}, {}, {}, {}, [row("p")])
    write_results(bad, tmp_path)
    data = json.loads((tmp_path / "latency.json").read_text())
    del data["rows"][0]["median_ms"]
    (tmp_path / "latency.json").write_text(json.dumps(data))
    with pytest.raises(BenchmarkError, match=r"rows\[0\] lacks median_ms"):
        read_results(tmp_path)


def test_results_written_before_the_fused_column_read_as_unfused(tmp_path):
    write_results(BenchResult({}, {}, {}, {}, [row("p", median_ms=12.0)]), tmp_path)
    data = json.loads((tmp_path / "latency.json").read_text())
    del data["rows"][0]["fused"]
    (tmp_path / "latency.json").write_text(json.dumps(data))
    lines = (tmp_path / "latency.csv").read_text().splitlines()
    header = lines[0].split(",")
    drop = header.index("fused")
    (tmp_path / "latency.csv").write_text(
        "\n".join(",".join(v for j, v in enumerate(line.split(",")) if j != drop) for line in lines) + "\n")
    for source in (tmp_path / "latency.json", tmp_path / "latency.csv"):
        (back,) = read_results(source).rows
        assert back.fused is False and back.median_ms == 12.0


# --------------------------------------------------------------------------- tool


def run_tool(*args, env=None):
    return subprocess.run([sys.executable, str(REPO / "tools/bench_latency.py"), *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_tool_times_and_prints_targets(tmp_path):
    env = {**os.environ, **MALLOC_ENV}  # already tuned: no restart; ONNX Runtime runs in a fresh process
    result = run_tool("--configs", "p28", "--rois", "1", "--warmup", "0", "--repeats", "1", "--threads", "1",
                      "--modules", "network,pipeline,refine_icp", "--onnx", "--out", str(tmp_path), *TINY, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "[1/1] p28 (" in out and "fastgdr's speed targets (the project's own limits" in out
    assert "P28 per-image pipeline / network" in out and "P28 ONNX Runtime / eager latency" in out
    rows = list(csv.DictReader((tmp_path / "latency.csv").open()))
    assert [(r["module"], r["runtime"]) for r in rows] == [
        ("network", "torch"), ("pipeline", "torch"), ("refine_icp", "torch"), ("network", "onnxruntime")
    ]
    assert rows[0]["threads"] == "1" and rows[0]["malloc_tuned"] == "True" and rows[3]["malloc_tuned"] == "False"


def test_tool_bad_input_exits_2(tmp_path):
    unknown = run_tool("--configs", "p,q28", "--out", str(tmp_path))
    assert unknown.returncode == 2 and "unknown config 'q28'" in unknown.stderr and "Valid names" in unknown.stderr
    dtype = run_tool("--configs", "p", "--dtype", "fp64", "--out", str(tmp_path))
    assert dtype.returncode == 2 and "unknown dtype 'fp64'. Valid: fp32, fp16, bf16" in dtype.stderr
