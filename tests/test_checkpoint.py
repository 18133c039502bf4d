"""Official GDRNPP checkpoints load as they are; mismatches are reported by key name.

The YCB-V key/shape list in fixtures/ was written from the reference description of the
official checkpoint, independently of fastgdr's model code.
"""

import os
import subprocess
import sys

import pytest
import torch

from fastgdr.checkpoint import (
    compare_state_dict,
    extract_state_dict,
    fold_duplicate_group_norms,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)
from fastgdr.config import load_config
from fastgdr.errors import CheckpointError, OutputError
from fastgdr.models import GDRNPoseNet

from conftest import FIXTURES, REPO


def read_fixture() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (FIXTURES / "gdrnpp_ycbv_keys.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split()
            shapes[key] = tuple(int(s) for s in shape.split(","))
    return shapes


def official_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A state dict shaped like the official one; gn.* share the norm.* tensors."""
    state = {}
    for key, shape in shapes.items():
        twin = key.replace(".gn.", ".norm.")
        state[key] = state[twin] if twin in state else torch.zeros(shape)
    state["geo_head_net.out_layer.bias"] = torch.arange(1470, dtype=torch.float32)
    return state


@pytest.fixture(scope="module")
def ycbv_model():
    cfg = load_config(REPO / "configs/bm.yaml", ["model.num_classes=21"])
    return GDRNPoseNet.from_config(cfg.model, init_heads=False)


def test_fixture_is_the_documented_checkpoint():
    shapes = read_fixture()
    assert len(shapes) == 392
    assert shapes["geo_head_net.out_layer.weight"] == (1470, 256, 1, 1)
    unique = {k: v for k, v in shapes.items() if ".gn." not in k}
    total = sum(torch.Size(s).numel() for s in unique.values())
    assert abs(total - 102.87e6) < 0.01e6  # FAST GDRNPP Table 5: 102.87 M on YCB-V


def test_official_checkpoint_loads_strictly(ycbv_model):
    shapes = read_fixture()
    report = load_weights(ycbv_model, {"model": official_state_dict(shapes)}, strict=True)
    assert report.ok
    bias = ycbv_model.state_dict()["geo_head_net.out_layer.bias"]
    assert torch.equal(bias, torch.arange(1470, dtype=torch.float32))


def test_model_matches_fixture_keys_and_shapes(ycbv_model):
    shapes = read_fixture()
    folded = fold_duplicate_group_norms(official_state_dict(shapes))
    ours = {k: tuple(v.shape) for k, v in ycbv_model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in folded.items()}


def test_bare_dict_and_wrapper_prefix_load_from_file(tmp_path, tiny_model_config):
    model = GDRNPoseNet.from_config(tiny_model_config)
    prefixed = {f"_module.{k}": v + 1 for k, v in model.state_dict().items()}
    path = tmp_path / "bare.pth"
    torch.save(prefixed, path)
    other = GDRNPoseNet.from_config(tiny_model_config)
    assert load_weights(other, path).ok
    for key, value in other.state_dict().items():
        assert torch.equal(value, prefixed[f"_module.{key}"])


def test_mismatches_are_listed_by_name_and_partial_load_refused(ycbv_model):
    state = official_state_dict(read_fixture())
    del state["pnp_net.fc_t.bias"]
    state["pnp_net.extra.weight"] = torch.zeros(1)
    state["pnp_net.fc1.weight"] = torch.zeros(1024, 4096)
    with pytest.raises(CheckpointError) as err:
        load_weights(ycbv_model, state)
    message = str(err.value)
    assert "pnp_net.fc_t.bias" in message
    assert "pnp_net.extra.weight" in message
    assert "pnp_net.fc1.weight: [1024, 4096] vs [1024, 8192]" in message


def test_partial_load_when_asked(tiny_model_config):
    model = GDRNPoseNet.from_config(tiny_model_config)
    state = {k: torch.full_like(v, 7.0) for k, v in model.state_dict().items()}
    state["pnp_net.fc1.weight"] = torch.zeros(3, 3)
    del state["pnp_net.fc_r.bias"]
    report = load_weights(model, state, strict=False)
    assert report.missing == ["pnp_net.fc_r.bias"]
    assert [k for k, _, _ in report.mismatched] == ["pnp_net.fc1.weight"]
    assert torch.all(model.state_dict()["pnp_net.fc2.weight"] == 7.0)
    assert not torch.all(model.state_dict()["pnp_net.fc1.weight"] == 7.0)


def test_differing_duplicate_group_norms_are_refused():
    state = {"a.norm.weight": torch.ones(4), "a.gn.weight": torch.zeros(4)}
    with pytest.raises(CheckpointError, match="should be the same GroupNorm"):
        fold_duplicate_group_norms(state)
    assert set(fold_duplicate_group_norms({"a.gn.weight": torch.ones(4)})) == {"a.norm.weight"}


def test_unreadable_and_missing_files(tmp_path, tiny_model_config):
    model = GDRNPoseNet.from_config(tiny_model_config)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_weights(model, tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_weights(model, garbage)
    with pytest.raises(CheckpointError, match="no tensors"):
        extract_state_dict({"model": {"iteration": 3}})


def test_save_is_atomic_and_round_trips(tmp_path, tiny_model_config):
    model = GDRNPoseNet.from_config(tiny_model_config)
    path = save_checkpoint(tmp_path / "ckpt" / "model.pth", model, iteration=5)
    assert [p.name for p in path.parent.iterdir()] == ["model.pth"]  # no temp files left
    other = GDRNPoseNet.from_config(tiny_model_config)
    assert load_weights(other, path).ok
    assert compare_state_dict(other, model.state_dict()).ok
    assert torch.load(path, weights_only=True)["iteration"] == 5


def test_model_info_tool_exits_nonzero_on_mismatch(tmp_path, tiny_model_config):
    model = GDRNPoseNet.from_config(tiny_model_config)
    state = model.state_dict()
    del state["pnp_net.fc_t.weight"]
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    overrides = [
        "model.backbone.name=test_convnext", "model.num_classes=3", "model.num_regions=8",
        "model.geo_head.widths=[16,16,16,16,16,16,16]", "model.geo_head.gn_groups=[4,4,4,4,4,4,4]",
        "model.pnp.widths=[8,8,8]", "model.pnp.gn_groups=[2,2,2]", "model.pnp.fc_widths=[32,16]",
    ]
    cmd = [sys.executable, str(REPO / "tools/model_info.py"), "--config", str(REPO / "configs/p.yaml"), "--ckpt", str(path), *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 2
    assert "pnp_net.fc_t.weight" in result.stderr
    assert "Traceback" not in result.stderr
    torch.save({"model": model.state_dict()}, path)
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "all keys and shapes match" in result.stdout


class _Pickled:
    """A class instance in a checkpoint: unpickling it would run code."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_unreadable_files_get_a_reason_and_never_the_advice_to_run_code(tmp_path, capsys):
    # random bytes, not starting as a pickle (0x80) or a zip (PK) would: those are cases of their own
    cases = {"empty.pth": b"", "random.pth": b"\x07" + os.urandom(4095), "text.pth": b"not a checkpoint"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.ones(3)}}, good)
    (tmp_path / "truncated.pth").write_bytes(good.read_bytes()[:200])
    torch.save({"model": _Pickled()}, tmp_path / "code.pth")
    expected = {
        "empty.pth": "the file is empty (0 bytes",
        "random.pth": "not a PyTorch checkpoint (4096 bytes",
        "text.pth": "not a PyTorch checkpoint",
        "truncated.pth": "truncated or corrupt",
        "code.pth": "never runs code from a checkpoint",
    }
    for name, reason in expected.items():
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(tmp_path / name)
        message = str(err.value)
        assert reason in message, message
        assert "weights_only" not in message and "arbitrary code" not in message
        assert not message.rstrip().endswith(":")  # never a blank reason
    assert "this must never run" not in capsys.readouterr().out


def test_checkpoint_permissions_follow_the_umask(tmp_path, tiny_model_config):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "model.pth", GDRNPoseNet.from_config(tiny_model_config))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # tempfile would give 0600


def test_a_failing_save_keeps_the_previous_checkpoint_and_says_why(tmp_path, tiny_model_config, monkeypatch):
    model = GDRNPoseNet.from_config(tiny_model_config)
    path = save_checkpoint(tmp_path / "last_checkpoint.pth", model, iteration=1)
    before = path.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half an archive")
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OutputError, match=r"cannot write checkpoint .*last_checkpoint.pth: the write failed \(is the "
                                          r"disk full\?\); .*"
                                          r"MiB free on that disk; the previous last_checkpoint.pth is unchanged"):
        save_checkpoint(path, model, iteration=2)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last_checkpoint.pth"]


def test_non_finite_weights_are_refused(tmp_path, tiny_model_config):
    model = GDRNPoseNet.from_config(tiny_model_config)
    state = model.state_dict()
    state["pnp_net.fc_t.bias"] = torch.full_like(state["pnp_net.fc_t.bias"], float("nan"))
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) hold NaN or infinite values \(pnp_net.fc_t.bias\)"):
        load_weights(GDRNPoseNet.from_config(tiny_model_config), {"model": state})
