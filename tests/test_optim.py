"""Tests for fastgdr.engine.optim (Ranger, flat-and-anneal schedule, optimizer registry)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from fastgdr.engine.optim import (
    OPTIMIZERS,
    Ranger,
    build_optimizer,
    centralize_gradient,
    flat_and_anneal_factor,
    flat_and_anneal_lambda,
)
from fastgdr.errors import UnknownNameError

F64 = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ----------------------------------------------------------------------------- Ranger


def test_ranger_minimizes_quadratic(gen):
    a = torch.randn(10, generator=gen, dtype=F64)
    target = torch.randn(4, 3, generator=gen, dtype=F64)
    x = torch.zeros(10, dtype=F64, requires_grad=True)
    w = torch.zeros(4, 3, dtype=F64, requires_grad=True)
    opt = Ranger([x, w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, flat_and_anneal_lambda(500, warmup_iters=10))
    for _ in range(500):
        opt.zero_grad()
        (((x - a) ** 2).sum() + ((w - target) ** 2).sum()).backward()
        opt.step()
        sched.step()
    assert ((x - a) ** 2).sum() < 1e-5 * (a**2).sum()
    # Gradient centralization only lets the row-centred part of a matrix follow its
    # gradient: that part converges, the row means do not (they drift a little).
    def centred(m: torch.Tensor) -> torch.Tensor:
        return m - m.mean(dim=1, keepdim=True)

    assert ((centred(w) - centred(target)) ** 2).sum() < 1e-5 * (centred(target) ** 2).sum()


def test_ranger_matches_torch_radam_without_lookahead_and_gc(gen):
    """alpha = 1 (slow weights follow the fast ones) and no GC leave plain RAdam."""
    p_ours = torch.randn(5, 4, generator=gen, dtype=F64)
    p_ref = p_ours.clone()
    ours = Ranger([p_ours], lr=0.01, weight_decay=0.1, alpha=1.0, use_gc=False)
    ref = torch.optim.RAdam(
        [p_ref],
        lr=0.01,
        betas=(0.95, 0.999),
        eps=1e-5,
        weight_decay=0.1,
        decoupled_weight_decay=True,
    )
    for _ in range(30):  # crosses the rectification threshold (step 6 for β2 = 0.999)
        grad = torch.randn(5, 4, generator=gen, dtype=F64)
        p_ours.grad, p_ref.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(p_ours, p_ref, rtol=1e-12, atol=1e-12)


def test_ranger_lookahead_and_gc_match_reference(gen):
    """RAdam on centralized gradients; every k steps slow ← slow + α (p − slow), p ← slow."""
    k, alpha = 3, 0.5
    p_ours = torch.randn(5, 4, generator=gen, dtype=F64)
    p_ref = p_ours.clone()
    slow = p_ref.clone()
    ours = Ranger([p_ours], lr=0.01, alpha=alpha, k=k)
    ref = torch.optim.RAdam([p_ref], lr=0.01, betas=(0.95, 0.999), eps=1e-5)
    for step in range(1, 14):
        grad = torch.randn(5, 4, generator=gen, dtype=F64)
        p_ours.grad = grad.clone()
        p_ref.grad = grad - grad.mean(dim=1, keepdim=True)
        ours.step()
        ref.step()
        if step % k == 0:
            slow += alpha * (p_ref - slow)
            p_ref.copy_(slow)
    torch.testing.assert_close(p_ours, p_ref, rtol=1e-12, atol=1e-12)


def test_ranger_does_not_modify_grad(gen):
    p = torch.randn(3, 4, generator=gen, requires_grad=True)
    grad = torch.randn(3, 4, generator=gen)
    p.grad = grad.clone()
    Ranger([p]).step()
    assert torch.equal(p.grad, grad)


def _make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))


def _make_optimizer(model: nn.Module) -> tuple[Ranger, torch.optim.lr_scheduler.LambdaLR]:
    groups = [
        {"params": model[0].parameters()},
        {"params": model[2].parameters(), "lr": 3e-3},  # e.g. a distillation adapter
    ]
    opt = Ranger(groups, lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, flat_and_anneal_lambda(20, warmup_iters=5))
    return opt, sched


def _train(model: nn.Module, opt: Ranger, sched, iters: range) -> None:
    data_gen = torch.Generator().manual_seed(123)
    inputs = torch.randn(20, 8, 4, generator=data_gen)
    labels = torch.randn(20, 8, 2, generator=data_gen)
    for it in iters:
        x, y = inputs[it], labels[it]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()


def test_ranger_state_dict_round_trip_is_bit_identical():
    model_a = _make_model(0)
    opt_a, sched_a = _make_optimizer(model_a)
    _train(model_a, opt_a, sched_a, range(20))

    model_b = _make_model(0)
    opt_b, sched_b = _make_optimizer(model_b)
    _train(model_b, opt_b, sched_b, range(9))  # stop between two Lookahead syncs (k = 6)
    buffer = io.BytesIO()
    state = {"model": model_b.state_dict(), "opt": opt_b.state_dict()}
    torch.save({**state, "sched": sched_b.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    assert {"step", "exp_avg", "exp_avg_sq", "slow_buffer"} <= set(ckpt["opt"]["state"][0])

    model_c = _make_model(1)  # different init: everything must come from the checkpoint
    opt_c, sched_c = _make_optimizer(model_c)
    model_c.load_state_dict(ckpt["model"])
    opt_c.load_state_dict(ckpt["opt"])
    sched_c.load_state_dict(ckpt["sched"])
    _train(model_c, opt_c, sched_c, range(9, 20))
    for pa, pc in zip(model_a.parameters(), model_c.parameters()):
        assert torch.equal(pa, pc)


def test_ranger_weight_decay_on_zero_gradient():
    lr, wd = 0.1, 0.01
    p = torch.ones(5, dtype=F64, requires_grad=True)
    opt = Ranger([p], lr=lr, weight_decay=wd)
    for step in range(1, 4):
        p.grad = torch.zeros_like(p)
        opt.step()
        torch.testing.assert_close(p.detach(), torch.full((5,), (1.0 - wd * lr) ** step, dtype=F64))


def test_gradient_centralization_only_for_matrices(gen):
    grad_1d = torch.randn(6, generator=gen, dtype=F64)
    grad_2d = torch.randn(3, 4, generator=gen, dtype=F64)
    runs = {}
    for use_gc in (True, False):
        p1, p2 = torch.zeros(6, dtype=F64), torch.zeros(3, 4, dtype=F64)
        opt = Ranger([p1, p2], lr=0.1, use_gc=use_gc)
        p1.grad, p2.grad = grad_1d.clone(), grad_2d.clone()
        opt.step()
        runs[use_gc] = (p1, p2)
    assert torch.equal(runs[True][0], runs[False][0])  # 1-D: untouched by GC
    assert not torch.allclose(runs[True][1], runs[False][1])
    # At step 1 the update is −lr · g (momentum bias-corrected): rows of a GC'd update sum to 0.
    torch.testing.assert_close(runs[True][1].sum(dim=1), torch.zeros(3, dtype=F64))


def test_centralize_gradient_conv_weight(gen):
    grad = torch.randn(4, 3, 2, 2, generator=gen)
    out = centralize_gradient(grad)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-7, rtol=0)
    torch.testing.assert_close(grad - out, grad.mean(dim=(1, 2, 3), keepdim=True).expand_as(grad))


def test_ranger_param_group_lr():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = Ranger([{"params": [a]}, {"params": [b], "lr": 0.0}], lr=0.1)
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    assert (a < 0).all() and torch.equal(b, torch.zeros(3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -1.0},
        {"betas": (0.95, 1.0)},
        {"eps": -1.0},
        {"weight_decay": -0.1},
        {"alpha": 0.0},
        {"k": 0},
    ],
)
def test_ranger_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError, match="Ranger"):
        Ranger([torch.zeros(1, requires_grad=True)], **kwargs)


# ----------------------------------------------------------------------------- schedule


def test_flat_and_anneal_shape():
    total, warmup, factor0, point = 1000, 100, 0.001, 0.72
    f = flat_and_anneal_lambda(total, warmup, factor0, point)
    assert f(0) == pytest.approx(factor0)
    assert f(50) == pytest.approx(factor0 + (1 - factor0) * 0.5)
    warm = [f(i) for i in range(warmup + 1)]
    assert all(x < y for x, y in zip(warm, warm[1:]))
    assert f(warmup) == 1.0
    assert all(f(i) == 1.0 for i in range(warmup, 720))
    assert f(720) == 1.0  # the cosine starts at 1
    anneal = [f(i) for i in range(720, total + 1)]
    assert all(x > y for x, y in zip(anneal, anneal[1:]))
    assert f(860) == pytest.approx(0.5)  # half-way through the cosine
    assert f(total) == 0.0 and f(total + 10) == 0.0


def test_flat_and_anneal_with_lambda_lr():
    param = torch.zeros(1, requires_grad=True)
    other = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [param]}, {"params": [other], "lr": 0.5}], lr=2.0)
    f = flat_and_anneal_lambda(50, warmup_iters=10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    for it in range(50):
        assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * f(it))
        assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * f(it))
        opt.step()
        sched.step()


def test_flat_and_anneal_short_run_is_continuous():
    # Warm-up longer than the flat part: factors multiply, no jump.
    f = flat_and_anneal_lambda(100, warmup_iters=1000)
    values = [f(i) for i in range(101)]
    assert max(abs(x - y) for x, y in zip(values, values[1:])) < 0.05
    assert values[0] == pytest.approx(0.001) and values[-1] == 0.0


def test_flat_and_anneal_no_warmup():
    f = flat_and_anneal_lambda(10, warmup_iters=0, anneal_point=0.0)
    assert f(0) == 1.0
    assert f(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total_iters": 0},
        {"total_iters": 10, "warmup_iters": -1},
        {"total_iters": 10, "warmup_factor": 2.0},
        {"total_iters": 10, "anneal_point": 1.5},
    ],
)
def test_flat_and_anneal_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError, match="flat_and_anneal"):
        flat_and_anneal_lambda(**kwargs)


# ----------------------------------------------------------------------------- registry


def test_build_optimizer():
    model = nn.Linear(3, 2)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": 1e-4}]
    assert set(OPTIMIZERS.names()) == {"ranger", "adamw", "sgd"}
    ranger = build_optimizer("ranger", groups, lr=8e-4, weight_decay=0.01)
    assert isinstance(ranger, Ranger)
    assert [g["lr"] for g in ranger.param_groups] == [8e-4, 1e-4]
    assert ranger.defaults["weight_decay"] == 0.01 and ranger.defaults["betas"] == (0.95, 0.999)
    assert isinstance(build_optimizer("adamw", model.parameters(), 1e-3, 0.05), torch.optim.AdamW)
    sgd = build_optimizer("sgd", model.parameters(), 0.1, 0.0)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9


def test_build_optimizer_unknown_name():
    with pytest.raises(UnknownNameError, match="ranger"):
        build_optimizer("rangr", nn.Linear(2, 2).parameters(), 1e-3, 0.0)


def test_flat_and_anneal_factor_follows_progress_not_iterations():
    # A timed run: the cosine follows the fraction of the budget used, the warm-up iterations.
    assert flat_and_anneal_factor(5, 0.0, 10, 0.1, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert flat_and_anneal_factor(1000, 0.25, 10, 0.1, 0.5) == 1.0
    assert flat_and_anneal_factor(1000, 0.75, 10, 0.1, 0.5) == pytest.approx(0.5)
    assert flat_and_anneal_factor(1000, 1.0, 10, 0.1, 0.5) == 0.0
    f = flat_and_anneal_lambda(200, warmup_iters=10, warmup_factor=0.1, anneal_point=0.5)
    for it in (0, 5, 99, 150, 199, 200):
        assert f(it) == flat_and_anneal_factor(it, it / 200, 10, 0.1, 0.5)
