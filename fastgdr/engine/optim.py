"""Optimizers and the learning-rate schedule GDRNPP trains with.

- :class:`Ranger`: RAdam + Lookahead + gradient centralization, with decoupled weight
  decay (GDRNPP's ``lib/torch_utils/solver/ranger.py`` behaviour, written from its
  description).
- :func:`flat_and_anneal_lambda`: linear warm-up, flat, cosine anneal to 0; a factor for
  :class:`torch.optim.lr_scheduler.LambdaLR` stepped every iteration
  (:func:`flat_and_anneal_factor` is the same schedule over the fraction of a run done,
  which also serves runs with a time budget).
- :func:`build_optimizer`: optimizer by name from the :data:`OPTIMIZERS` registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from fastgdr.registry import Registry


def centralize_gradient(grad: Tensor) -> Tensor:
    """Gradient centralization: subtract the mean over every dim but the first.

    Args:
        grad: [C_out, ...] gradient of a weight with ``dim > 1``.

    Returns:
        A new tensor of the same shape whose slices ``grad[i]`` have zero mean.
    """
    return grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True)


def _radam_step_size(step: int, beta1: float, beta2: float, threshold: float) -> tuple[float, bool]:
    """RAdam's step-size factor (without lr) and whether the adaptive term is used.

    With ``ρ∞ = 2 / (1 − β2) − 1`` and ``ρ_t = ρ∞ − 2 t β2^t / (1 − β2^t)``: if
    ``ρ_t > threshold`` the step is ``r_t √(1 − β2^t) / (1 − β1^t)`` with the rectification
    ``r_t = √((ρ_t − 4)(ρ_t − 2) ρ∞ / ((ρ∞ − 4)(ρ∞ − 2) ρ_t))``
    and the update divides by ``√v + eps``; otherwise it is ``1 / (1 − β1^t)`` applied to
    the momentum alone (SGD with momentum during the first steps).
    """
    bias1 = 1.0 - beta1**step
    bias2 = 1.0 - beta2**step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / bias2
    if rho_t <= threshold:
        return 1.0 / bias1, False
    rect = math.sqrt(
        (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
    )
    return rect * math.sqrt(bias2) / bias1, True


class Ranger(torch.optim.Optimizer):
    """RAdam + Lookahead + gradient centralization, with decoupled weight decay.

    Per parameter ``p`` with gradient ``g``, at step ``t`` (counted per parameter):

    1. gradient centralization (``use_gc``, params with ``dim > 1`` only):
       ``g ← g − mean(g over all dims but the first)`` (``p.grad`` itself is untouched);
    2. moments ``m ← β1 m + (1 − β1) g``, ``v ← β2 v + (1 − β2) g²``;
    3. decoupled weight decay ``p ← p − wd · lr · p``;
    4. RAdam update ``p ← p − lr · s_t · m / (√v + eps)`` (or ``p − lr · s_t · m`` while
       the variance is not yet rectifiable, see :func:`_radam_step_size`);
    5. Lookahead every ``k`` steps: ``slow ← slow + α (p − slow)``, ``p ← slow``; the slow
       weights start as a copy of ``p`` before its first update.

    All hyper-parameters are per param group (groups with their own ``lr`` work). The
    state (``step``, ``exp_avg``, ``exp_avg_sq``, ``slow_buffer``) is in ``state_dict``,
    so a resumed run continues bit-identically.

    Args:
        params: parameters or param-group dicts.
        lr: learning rate.
        betas: (β1, β2) moment decay rates.
        eps: added to √v.
        weight_decay: decoupled weight-decay factor.
        alpha: Lookahead interpolation factor (1 disables Lookahead).
        k: Lookahead synchronization period in steps.
        rectify_threshold: ρ_t above which RAdam uses the adaptive update.
        use_gc: apply gradient centralization to params with ``dim > 1``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.999),
        eps: float = 1e-5,
        weight_decay: float = 0.0,
        alpha: float = 0.5,
        k: int = 6,
        rectify_threshold: float = 5.0,
        use_gc: bool = True,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Ranger: lr must be >= 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Ranger: betas must be two values in [0, 1), got {betas}")
        if eps < 0.0:
            raise ValueError(f"Ranger: eps must be >= 0, got {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"Ranger: weight_decay must be >= 0, got {weight_decay}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Ranger: alpha must be in (0, 1], got {alpha}")
        if k < 1:
            raise ValueError(f"Ranger: k must be >= 1, got {k}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            alpha=alpha,
            k=k,
            rectify_threshold=rectify_threshold,
            use_gc=use_gc,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Update every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError("Ranger does not support sparse gradients")
        if group["use_gc"] and grad.dim() > 1:
            grad = centralize_gradient(grad)
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["slow_buffer"] = p.detach().clone(memory_format=torch.preserve_format)
        state["step"] += 1
        step = state["step"]
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)

        if group["weight_decay"] != 0.0:
            p.add_(p, alpha=-group["weight_decay"] * lr)
        step_size, adaptive = _radam_step_size(step, beta1, beta2, group["rectify_threshold"])
        if adaptive:
            denom = exp_avg_sq.sqrt().add_(group["eps"])
            p.addcdiv_(exp_avg, denom, value=-step_size * lr)
        else:
            p.add_(exp_avg, alpha=-step_size * lr)

        if step % group["k"] == 0:
            slow = state["slow_buffer"]
            slow.lerp_(p, group["alpha"])
            p.copy_(slow)


def flat_and_anneal_lambda(
    total_iters: int,
    warmup_iters: int = 1000,
    warmup_factor: float = 0.001,
    anneal_point: float = 0.72,
) -> Callable[[int], float]:
    """GDRNPP's ``flat_and_anneal`` learning-rate factor of the iteration.

    ``f(it) = warm(it) · anneal(it)`` with ``warm(it) = warmup_factor + (1 − warmup_factor)
    · it / warmup_iters`` for ``it < warmup_iters`` (1 after) and ``anneal(it) = 1`` until
    ``a = anneal_point · total_iters``, then ``½ (1 + cos(π (it − a) / (total_iters − a)))``,
    0 from ``total_iters`` on. When the warm-up ends before ``a`` (the normal case) this is
    warm-up, then flat, then cosine; the product keeps it continuous for short runs too.
    Use with :class:`torch.optim.lr_scheduler.LambdaLR`, stepped once per iteration.

    Args:
        total_iters: number of training iterations (> 0).
        warmup_iters: linear warm-up length (0 = none).
        warmup_factor: factor at iteration 0, in [0, 1].
        anneal_point: fraction of ``total_iters`` where the cosine starts, in [0, 1].

    Returns:
        ``f(iteration) -> factor`` in [0, 1].

    Raises:
        ValueError: on out-of-range arguments.
    """
    if total_iters < 1:
        raise ValueError(f"flat_and_anneal: total_iters must be >= 1, got {total_iters}")
    if warmup_iters < 0:
        raise ValueError(f"flat_and_anneal: warmup_iters must be >= 0, got {warmup_iters}")
    if not 0.0 <= warmup_factor <= 1.0:
        raise ValueError(f"flat_and_anneal: warmup_factor must be in [0, 1], got {warmup_factor}")
    if not 0.0 <= anneal_point <= 1.0:
        raise ValueError(f"flat_and_anneal: anneal_point must be in [0, 1], got {anneal_point}")

    def factor(it: int) -> float:
        return flat_and_anneal_factor(it, it / total_iters, warmup_iters, warmup_factor, anneal_point)

    return factor


def flat_and_anneal_factor(
    it: int, progress: float, warmup_iters: int, warmup_factor: float, anneal_point: float
) -> float:
    """The flat-and-anneal factor at iteration ``it`` and training progress ``progress``.

    The warm-up counts iterations; the cosine runs over progress, the fraction of the run
    done (``it / total_iters`` for a run of fixed length, the fraction of the time budget
    used for a timed run): ``warm(it) · anneal(progress)`` with ``anneal = 1`` before
    ``anneal_point``, ``½ (1 + cos(π (progress − a) / (1 − a)))`` after, 0 from progress 1.
    """
    warm = 1.0
    if it < warmup_iters:
        warm = warmup_factor + (1.0 - warmup_factor) * it / warmup_iters
    if progress >= 1.0:
        return 0.0
    if progress < anneal_point:
        return warm
    done = (progress - anneal_point) / (1.0 - anneal_point)
    return warm * 0.5 * (1.0 + math.cos(math.pi * done))


OptimizerFactory = Callable[[ParamsT, float, float], torch.optim.Optimizer]
"""``(param_groups, lr, weight_decay) -> optimizer``."""

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


def _ranger(params: ParamsT, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return Ranger(params, lr=lr, weight_decay=weight_decay)


def _adamw(params: ParamsT, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _sgd(params: ParamsT, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


OPTIMIZERS.register("ranger", _ranger)
OPTIMIZERS.register("adamw", _adamw)
OPTIMIZERS.register("sgd", _sgd)


def build_optimizer(
    name: str, param_groups: ParamsT, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Build a registered optimizer: ``"ranger"`` (GDRNPP's), ``"adamw"`` or ``"sgd"``
    (momentum 0.9).

    Args:
        name: registry name.
        param_groups: parameters or param-group dicts; a group's own ``lr`` (or
            ``weight_decay``) overrides the defaults given here.
        lr: default learning rate.
        weight_decay: default weight decay (decoupled for Ranger and AdamW, L2 for SGD).

    Raises:
        UnknownNameError: if ``name`` is not registered (the message lists valid names).
    """
    return OPTIMIZERS.get(name)(param_groups, lr, weight_decay)
