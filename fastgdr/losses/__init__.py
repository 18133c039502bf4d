"""Training losses: GDRNPP's geometric, mask, region, point-matching and SITE terms, and a
direct allocentric rotation term."""

from fastgdr.losses.gdrn import (
    LossWeights,
    GDRNTargets,
    allocentric_rotation_loss,
    closest_symmetric_rotation,
    coordinate_losses,
    gdrn_losses,
    point_matching_rotation_loss,
    region_loss,
    region_loss_constant,
    total_loss,
)

__all__ = [
    "LossWeights",
    "GDRNTargets",
    "allocentric_rotation_loss",
    "closest_symmetric_rotation",
    "coordinate_losses",
    "gdrn_losses",
    "point_matching_rotation_loss",
    "region_loss",
    "region_loss_constant",
    "total_loss",
]
