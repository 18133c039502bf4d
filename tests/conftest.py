import signal
import subprocess
import time
from pathlib import Path

import pytest

from fastgdr.config import ModelConfig, load_config

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def kill_after_checkpoint(proc: subprocess.Popen, checkpoint: Path, iteration: int, timeout: float = 300.0) -> int:
    """SIGKILL a training process once ``checkpoint`` holds at least ``iteration`` (or it
    ended, or ``timeout`` passed); the iteration the checkpoint holds afterwards."""
    from fastgdr.checkpoint import read_checkpoint

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists() and read_checkpoint(checkpoint)["iteration"] >= iteration:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return read_checkpoint(checkpoint)["iteration"]  # never corrupt, even when killed


# A fast network: timm's tiny ConvNeXt test model, narrow head and Patch-PnP (any crop size).
TINY_MODEL_OVERRIDES = [
    "model.backbone.name=test_convnext",
    "model.num_regions=8",
    "model.geo_head.widths=[16,16,16,16,16,16,16]",
    "model.geo_head.gn_groups=[4,4,4,4,4,4,4]",
    "model.pnp.widths=[8,8,8]",
    "model.pnp.gn_groups=[2,2,2]",
    "model.pnp.fc_widths=[32,16]",
]


@pytest.fixture
def tiny_model_config() -> ModelConfig:
    """The tiny network with 3 classes at the default crop size."""
    return load_config(None, [*TINY_MODEL_OVERRIDES, "model.num_classes=3"]).model


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A small synthetic BOP dataset (2 objects: one discrete, one continuous symmetry)."""
    from fastgdr.data.synthetic import SyntheticSpec, generate_dataset

    root = tmp_path_factory.mktemp("synth") / "synth"
    spec = SyntheticSpec(num_objects=3, train_images=12, test_images=4, width=320, height=240,
                         objects_per_image=(2, 4), depth_range=(250.0, 450.0), seed=3)
    generate_dataset(root, spec)
    return root


TINY_TRAIN_OVERRIDES = [
    *TINY_MODEL_OVERRIDES,
    "model.input_res=128",
    "data.num_workers=0",
    "data.num_model_points=200",
    "train.batch_size=4",
    "train.warmup_iters=2",
    "train.log_period=1",
]
