"""Training losses: GDRNPP's geometric, mask, region, point-matching and SITE terms."""

from fastgdr.losses.gdrn import (
    LossWeights,
    GDRNTargets,
    closest_symmetric_rotation,
    coordinate_losses,
    gdrn_losses,
    point_matching_rotation_loss,
    region_loss,
    total_loss,
)

__all__ = [
    "LossWeights",
    "GDRNTargets",
    "closest_symmetric_rotation",
    "coordinate_losses",
    "gdrn_losses",
    "point_matching_rotation_loss",
    "region_loss",
    "total_loss",
]
