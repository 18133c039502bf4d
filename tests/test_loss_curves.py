"""Per-term loss curves: reading metrics.csv, the plot, and tools/plot_losses.py's guards."""

import subprocess
import sys

import pytest

from fastgdr.errors import FastGDRError
from fastgdr.learning_curve import plot_loss_curves, read_loss_curves

from conftest import REPO

HEADER = "iter,loss,loss_coor_x,loss_region,kd_ot,lr,sec_per_iter,minutes\n"


def write_metrics(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.csv").write_text(HEADER + "".join(rows))
    return folder


def test_loss_terms_are_read_without_the_bookkeeping_columns(tmp_path):
    run = write_metrics(tmp_path / "p", ["10,5,0.3,4.0,0.2,1e-3,0.5,0.1\n", "20,4,0.2,3.5,,1e-3,0.5,0.2\n"])
    curves = read_loss_curves(run / "metrics.csv")
    assert list(curves) == ["coor_x", "region", "kd_ot"]
    assert curves["coor_x"] == [(10, 0.3), (20, 0.2)]
    assert curves["kd_ot"] == [(10, 0.2)]  # an empty cell is no point


def test_metrics_without_loss_columns_are_refused(tmp_path):
    (tmp_path / "metrics.csv").write_text("iter,lr\n10,0.1\n")
    with pytest.raises(FastGDRError, match="loss_"):
        read_loss_curves(tmp_path / "metrics.csv")
    with pytest.raises(FastGDRError, match="no training metrics"):
        read_loss_curves(tmp_path / "missing.csv")


def test_plot_has_one_panel_per_run(tmp_path):
    runs = {name: write_metrics(tmp_path / name, ["10,5,0.3,4.0,0.2,1e-3,0.5,0.1\n", "20,4,0.2,3.5,0.1,1e-3,0.5,0.2\n"])
            / "metrics.csv" for name in ("a", "b", "c")}
    path = plot_loss_curves(runs, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tool_copies_metrics_and_refuses_to_overwrite(tmp_path):
    runs = [write_metrics(tmp_path / name, ["10,5,0.3,4.0,0.2,1e-3,0.5,0.1\n"]) for name in ("teacher", "p")]
    cmd = [sys.executable, str(REPO / "tools/plot_losses.py"), *map(str, runs), "--out", str(tmp_path / "out")]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "out" / "metrics" / "teacher.csv").read_text() == (runs[0] / "metrics.csv").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True).returncode == 0


def curve(decoder: str, ars: list[float]) -> list:
    from fastgdr.learning_curve import CurvePoint

    return [CurvePoint(3.0 * i, 300 * i, decoder, ar, ar, ar, ar, ar / 2, f"model_{i}.pth") for i, ar in enumerate(ars)]


def test_curve_comparison_shares_a_colour_per_label_and_refuses_a_missing_decoder(tmp_path):
    from fastgdr.learning_curve import plot_curve_comparison

    runs = [("random", curve("patchpnp", [0.02, 0.1, 0.2])), ("random", curve("patchpnp", [0.03, 0.12, 0.23])),
            ("pretrained", curve("patchpnp", [0.02, 0.2, 0.33]))]
    path = plot_curve_comparison(runs, tmp_path / "compare.png", title="seeds")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FastGDRError, match=r"run 'random' has no point with decoder 'epnp-rot' \(it has \['patchpnp'\]\)"):
        plot_curve_comparison(runs, tmp_path / "epnp.png", decoder="epnp-rot")


def test_compare_curves_tool_reads_runs_and_names_a_bad_one(tmp_path):
    from fastgdr.learning_curve import write_curve_csv

    write_curve_csv(curve("patchpnp", [0.02, 0.1]) + curve("epnp-rot", [0.03, 0.08]), tmp_path / "run" / "curve.csv")
    tool = [sys.executable, str(REPO / "benchmarks/compare_curves.py")]
    done = subprocess.run([*tool, f"P={tmp_path / 'run'}", "--decoder", "epnp-rot", "--out", str(tmp_path / "c.png")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    again = subprocess.run([*tool, f"P={tmp_path / 'run'}", "--out", str(tmp_path / "c.png")], capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    missing = subprocess.run([*tool, f"P={tmp_path / 'none'}", "--out", str(tmp_path / "d.png")], capture_output=True, text=True)
    assert missing.returncode == 2 and f"{tmp_path / 'none' / 'curve.csv'} does not exist" in missing.stderr
    unlabeled = subprocess.run([*tool, str(tmp_path / "run"), "--out", str(tmp_path / "d.png")], capture_output=True, text=True)
    assert unlabeled.returncode == 2 and "expected LABEL=FOLDER" in unlabeled.stderr
