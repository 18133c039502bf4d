from pathlib import Path

import pytest

from fastgdr.config import ModelConfig, load_config

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def tiny_model_config() -> ModelConfig:
    """A fast model: timm's tiny ConvNeXt test model, narrow head and Patch-PnP."""
    return load_config(
        None,
        [
            "model.backbone.name=test_convnext",
            "model.num_classes=3",
            "model.geo_head.widths=[16,16,16,16,16,16,16]",
            "model.geo_head.gn_groups=[4,4,4,4,4,4,4]",
            "model.pnp.widths=[8,8,8]",
            "model.pnp.gn_groups=[2,2,2]",
            "model.pnp.fc_widths=[32,16]",
            "model.num_regions=8",
        ],
    ).model
