"""What the pose-error functions of the evaluation see, :class:`EvalModel` (an object from
``models_eval``) and :class:`PairBatch` (estimate, GT pose pairs), and what computes the raw
errors from them: the :class:`ErrorBackend` protocol and its default, :class:`BatchedErrors`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fastgdr.data.mesh import Mesh
from fastgdr.eval import batched_errors
from fastgdr.eval.protocol import VSD_TAUS


@dataclass
class EvalModel:
    """An object as the error functions see it (all from ``models_eval``).

    Attributes:
        obj_id: BOP object id.
        mesh: the evaluation mesh (mm), for rendering.
        points: (P, 3) float64 model vertices in mm.
        sym_R: (S, 3, 3) float64 symmetry rotations (index 0 the identity).
        sym_t: (S, 3) float64 symmetry translations in mm.
        diameter: diameter in mm from models_eval/models_info.json.
        symmetric: whether "ad" uses ADI (the object is in ``symmetric_obj_ids``).
    """

    obj_id: int
    mesh: Mesh
    points: torch.Tensor
    sym_R: torch.Tensor
    sym_t: torch.Tensor
    diameter: float
    symmetric: bool


@dataclass
class PairBatch:
    """N (estimate, GT) pose pairs of one object in one image.

    Attributes:
        model: the object.
        R_e, R_g: (N, 3, 3) float64 rotations, model → camera.
        t_e, t_g: (N, 3) float64 translations, model → camera, mm.
        K: (3, 3) float64 intrinsics of the image, px.
        depth: (H, W) float64 test depth in mm (0 = missing), or None without VSD.
    """

    model: EvalModel
    R_e: torch.Tensor
    t_e: torch.Tensor
    R_g: torch.Tensor
    t_g: torch.Tensor
    K: torch.Tensor
    depth: torch.Tensor | None

    def subset(self, index: torch.Tensor) -> PairBatch:
        """The pairs selected by a boolean mask or index tensor (N,)."""
        return PairBatch(
            self.model, self.R_e[index], self.t_e[index], self.R_g[index], self.t_g[index],
            self.K, self.depth,
        )

    def __len__(self) -> int:
        return len(self.R_e)


class ErrorBackend(Protocol):
    """Computes raw (ungated, unnormalized) pose errors for a batch of pairs.

    :class:`BatchedErrors` is the fast default; a per-pair loop over
    :mod:`fastgdr.eval.reference_errors` is the reference (see benchmarks/bench_eval.py).
    """

    def vsd(self, pairs: PairBatch) -> torch.Tensor:
        """(N, len(VSD_TAUS)) VSD errors in [0, 1]."""

    def mssd(self, pairs: PairBatch) -> torch.Tensor:
        """(N,) MSSD in mm."""

    def mspd(self, pairs: PairBatch) -> torch.Tensor:
        """(N,) MSPD in px."""

    def ad(self, pairs: PairBatch) -> torch.Tensor:
        """(N,) ADI in mm for symmetric objects (``pairs.model.symmetric``), else ADD."""


class BatchedErrors:
    """The default :class:`ErrorBackend`: :mod:`fastgdr.eval.batched_errors` on ``device``.

    Args:
        renderer: renderer holding the evaluation meshes, or None when VSD is not needed.
        width, height: image size in px (VSD renders at this size).
        vsd_delta: VSD visibility tolerance δ in mm.
        device: torch device of the computations.
    """

    def __init__(self, renderer, width: int, height: int, vsd_delta: float, device: str | torch.device) -> None:
        self._vsd = None
        if renderer is not None:
            self._vsd = batched_errors.VSDEvaluator(
                renderer, width, height, vsd_delta, VSD_TAUS.tolist(),
                normalized_by_diameter=True, device=device,
            )

    def vsd(self, pairs: PairBatch) -> torch.Tensor:
        if self._vsd is None:
            raise RuntimeError("BatchedErrors was built without a renderer: VSD is not available")
        return self._vsd.errors(
            pairs.model.obj_id, pairs.R_e, pairs.t_e, pairs.R_g, pairs.t_g, pairs.depth, pairs.K,
            pairs.model.diameter,
        )

    def mssd(self, pairs: PairBatch) -> torch.Tensor:
        m = pairs.model
        return batched_errors.mssd_errors(pairs.R_e, pairs.t_e, pairs.R_g, pairs.t_g, m.points, m.sym_R, m.sym_t)

    def mspd(self, pairs: PairBatch) -> torch.Tensor:
        m = pairs.model
        return batched_errors.mspd_errors(
            pairs.R_e, pairs.t_e, pairs.R_g, pairs.t_g, pairs.K, m.points, m.sym_R, m.sym_t
        )

    def ad(self, pairs: PairBatch) -> torch.Tensor:
        fn = batched_errors.adi_errors if pairs.model.symmetric else batched_errors.add_errors
        return fn(pairs.R_e, pairs.t_e, pairs.R_g, pairs.t_g, pairs.model.points)
