"""Stopping a training run whose numbers stop being finite, before it saves them.

The trainer checks the loss before each backward pass (:func:`check_loss`) and the
gradients and weights after each optimizer step (:func:`check_step`). Both raise
:class:`~fastgdr.errors.TrainingError` naming the iteration and the non-finite loss terms
or parameters, so a diverged run stops with one message, and no checkpoint, snapshot or
final model is written after the last finite one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from fastgdr.errors import TrainingError

MAX_LISTED = 5


def non_finite_terms(losses: Mapping[str, Tensor]) -> dict[str, float]:
    """The loss terms whose value is NaN or ±inf, with that value."""
    values = {name: float(value.detach().float()) for name, value in losses.items()}
    return {name: value for name, value in values.items() if not math.isfinite(value)}


def check_loss(loss: Tensor, losses: Mapping[str, Tensor], iteration: int, checkpoint: str | Path) -> None:
    """Stop when the total loss of ``iteration`` (1-based) is not finite.

    Raises:
        TrainingError: naming the iteration, the non-finite terms (or the overflowing
            sum) and the checkpoint that is kept.
    """
    if bool(torch.isfinite(loss)):
        return
    bad = non_finite_terms(losses)
    if bad:
        what = "non-finite term(s) " + ", ".join(f"{name} = {value}" for name, value in bad.items())
    else:
        largest = sorted(losses, key=lambda k: -abs(float(losses[k].detach().float())))[:3]
        what = f"{float(loss)}: the sum overflowed; largest terms " + ", ".join(
            f"{name} = {float(losses[name].detach().float()):.3g}" for name in largest
        )
    raise TrainingError(
        f"training stopped at iteration {iteration}: the loss is not finite ({what}). {_kept(checkpoint)}"
    )


def _named_tensors(modules: Iterable[nn.Module | None], grads: bool) -> list[tuple[str, Tensor]]:
    out = []
    for module in modules:
        if module is None:
            continue
        for name, param in module.named_parameters():
            tensor = param.grad if grads else param
            if tensor is not None and tensor.is_floating_point():
                out.append((name, tensor.detach()))
    return out


def _non_finite_names(named: list[tuple[str, Tensor]]) -> list[str]:
    """Names of the tensors with a NaN or inf (one float64 sum per tensor; checked per
    tensor only when the total is not finite)."""
    if not named:
        return []
    total = torch.stack([t.sum(dtype=torch.float64) for _, t in named]).sum()
    if bool(torch.isfinite(total)):
        return []
    return [name for name, t in named if not bool(torch.isfinite(t).all())]


def check_step(
    modules: Iterable[nn.Module | None], losses: Mapping[str, Tensor], iteration: int, checkpoint: str | Path
) -> None:
    """Stop when the gradients or the weights of ``modules`` are not finite after the
    optimizer step of ``iteration`` (1-based), before anything saves them.

    Raises:
        TrainingError: naming the iteration, the parameters, the loss terms of that
            iteration and the checkpoint that is kept.
    """
    modules = list(modules)
    grads = _non_finite_names(_named_tensors(modules, grads=True))
    weights = [] if grads else _non_finite_names(_named_tensors(modules, grads=False))
    if not grads and not weights:
        return
    kind, names = ("gradients", grads) if grads else ("weights after the update", weights)
    listed = ", ".join(names[:MAX_LISTED]) + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")
    terms = ", ".join(f"{name} = {float(value.detach().float()):.4g}" for name, value in losses.items())
    raise TrainingError(
        f"training stopped at iteration {iteration}: non-finite {kind} of {len(names)} parameter(s) ({listed}); "
        f"the loss terms were finite ({terms}). {_kept(checkpoint)}"
    )


def _kept(checkpoint: str | Path) -> str:
    checkpoint = Path(checkpoint)
    advice = "lower train.lr or set train.clip_grad_norm and train again with --overwrite"
    if not checkpoint.is_file():
        return f"No checkpoint had been written yet: {advice}."
    from fastgdr.checkpoint import read_checkpoint

    try:
        saved = f" (iteration {int(read_checkpoint(checkpoint)['iteration'])})"
    except Exception:  # only for the message: the file is still the last one written
        saved = ""
    return (
        f"The last good checkpoint {checkpoint}{saved} is kept: {advice}, or start from its weights "
        "with --init into another --out."
    )
