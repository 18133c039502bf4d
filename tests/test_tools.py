"""Tools give one clear message and a non-zero exit on bad input, and work on good input."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

TINY = [
    "model.backbone.name=test_convnext", "model.geo_head.widths=[16,16,16,16,16,16,16]",
    "model.geo_head.gn_groups=[4,4,4,4,4,4,4]",
]


def model_info(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools/model_info.py"), *args], capture_output=True, text=True
    )


def test_help_has_examples():
    result = model_info("--help")
    assert result.returncode == 0
    assert "Examples:" in result.stdout and "--ckpt" in result.stdout


def test_report_and_resolved_config(tmp_path):
    result = model_info("--config", str(REPO / "configs/p.yaml"), "--out", str(tmp_path), *TINY)
    assert result.returncode == 0, result.stderr
    assert "geo_head_net" in result.stdout and "GFLOPs" in result.stdout
    info = json.loads((tmp_path / "model_info.json").read_text())
    assert info[0]["modules"]["total"]["params"] > 0
    assert (tmp_path / "config_p.yaml").read_text().count("test_convnext") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "configs/p.yaml", "model.backbone.name=convnext_bsae"], "unknown backbone 'convnext_bsae'"),
        (["--config", "configs/p.yaml", "model.num_clases=3"], "unknown key 'model.num_clases'"),
        (["--config", "configs/nope.yaml"], "config file not found"),
        (["--config", "configs/p.yaml", "model.backbone.pretrained=/no/such/file.pth"], "weights file not found"),
        (["--config", "configs/p.yaml", "--ckpt", "/no/such/ckpt.pth", *TINY], "checkpoint not found"),
    ],
)
def test_bad_input_is_one_clear_message(args, message):
    result = model_info(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_backbone_message_lists_presets():
    result = model_info("--config", "configs/p.yaml", "model.backbone.name=P28x")
    assert "Presets: BM, S, T, N, P, A, EB0, ES, R34, FViT0" in result.stderr


def test_model_info_prints_table5s_p28_at_21_classes():
    """FAST GDRNPP's P28 (Table 5) prunes the geometric head only: 17.83 M parameters on YCB-V."""
    result = model_info("--config", str(REPO / "configs/p28.yaml"), "--num-classes", "21")
    assert result.returncode == 0, result.stderr
    total = [line.split() for line in result.stdout.splitlines() if line.startswith("total")][0]
    assert total[1] == "17.833"
