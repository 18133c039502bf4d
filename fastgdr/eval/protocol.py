"""The constants of the BOP 2019 protocol (see :mod:`fastgdr.eval.bop19`): the error types,
their thresholds (one per column of the normalized errors), the default VSD tolerance δ and
the image width MSPD is normalized to."""

from __future__ import annotations

import numpy as np

ERROR_TYPES = ("vsd", "mssd", "mspd", "ad")
VSD_TAUS = np.arange(0.05, 0.51, 0.05)  # × diameter
VSD_THETAS = np.arange(0.05, 0.51, 0.05)
MSSD_THETAS = np.arange(0.05, 0.51, 0.05)  # × diameter
MSPD_THRESHOLDS_PX = np.arange(5, 51, 5).astype(np.float64)  # at a 640 px wide image
AD_THETAS = np.array([0.02, 0.05, 0.10])  # × diameter
AD_THETA_NAMES = ("0.02", "0.05", "0.10")
DEFAULT_VSD_DELTA_MM = 15.0
MSPD_REFERENCE_WIDTH = 640.0

# Matching thresholds per error type: one per column of the normalized error array.
THRESHOLDS: dict[str, np.ndarray] = {
    "vsd": np.tile(VSD_THETAS, len(VSD_TAUS)),  # column i·10 + j: τ_i, θ_j
    "mssd": MSSD_THETAS,
    "mspd": MSPD_THRESHOLDS_PX,
    "ad": AD_THETAS,
}
