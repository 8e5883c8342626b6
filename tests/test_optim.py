"""Tests for atr_core.training.optim: Lookahead math, Ranger configuration, bit-identical resume."""

from __future__ import annotations

import io

import pytest
import torch

from atr_core.errors import InputError
from atr_core.training.optim import Lookahead, build_optimizer


def quadratic_loss(w: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((w - target) ** 2).sum() + 0.1 * (w**4).sum()


def test_lookahead_math_on_a_toy_problem():
    """Slow weights move alpha of the way to the fast weights every k steps; fast restarts from slow."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        k = int(torch.randint(1, 8, (1,), generator=gen))
        alpha = float(torch.rand(1, generator=gen))
        lr = float(torch.rand(1, generator=gen)) * 0.1
        steps = int(torch.randint(1, 25, (1,), generator=gen))
        w0 = torch.randn(4, generator=gen, dtype=torch.float64)
        target = torch.randn(4, generator=gen, dtype=torch.float64)

        w = w0.clone().requires_grad_(True)
        opt = Lookahead(torch.optim.SGD([w], lr=lr), k=k, alpha=alpha)
        for _ in range(steps):
            opt.zero_grad()
            quadratic_loss(w, target).backward()
            opt.step()

        fast, slow = w0.clone(), w0.clone()
        for t in range(1, steps + 1):
            f = fast.clone().requires_grad_(True)
            quadratic_loss(f, target).backward()
            fast = fast - lr * f.grad
            if t % k == 0:
                slow = slow + alpha * (fast - slow)
                fast = slow.clone()
        torch.testing.assert_close(w.detach(), fast, rtol=1e-12, atol=1e-12)


def test_lookahead_alpha_one_is_the_inner_optimiser():
    torch.manual_seed(1)
    w0 = torch.randn(5)
    a, b = w0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    opt_a = Lookahead(torch.optim.RAdam([a], lr=0.05), k=3, alpha=1.0)
    opt_b = torch.optim.RAdam([b], lr=0.05)
    target = torch.randn(5)
    for _ in range(10):
        for w, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            quadratic_loss(w, target).backward()
            opt.step()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ranger_is_radam_plus_lookahead():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer("ranger", model.parameters())
    assert isinstance(opt, Lookahead) and (opt.k, opt.alpha) == (6, 0.5)
    inner = opt.optimizer
    assert isinstance(inner, torch.optim.RAdam)
    g = inner.param_groups[0]
    assert g["lr"] == 0.01 and g["weight_decay"] == 1e-3 and g["betas"] == (0.95, 0.999) and g["eps"] == 1e-5
    assert g["decoupled_weight_decay"] is True
    assert opt.param_groups is inner.param_groups
    adam = build_optimizer("adam", model.parameters(), lr=0.1, weight_decay=0.0)
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["lr"] == 0.1
    with pytest.raises(InputError, match="unknown optimizer 'sgd'"):
        build_optimizer("sgd", model.parameters())


def test_ranger_weight_decay_is_decoupled_and_scaled_by_lr():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = build_optimizer("ranger", [w], lr=0.01, weight_decay=1e-3)
    for step in range(1, 6):  # zero gradients: only the decay moves the weights (no sync before step 6)
        w.grad = torch.zeros_like(w)
        opt.step()
        torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0, 3.0]) * (1 - 0.01 * 1e-3) ** step)


def test_step_lr_schedules_the_inner_optimiser():
    w = torch.nn.Parameter(torch.ones(2))
    opt = build_optimizer("ranger", [w])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.95)
    for epoch in range(1, 4):
        w.grad = torch.ones_like(w)
        opt.step()
        sched.step()
        assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.95**epoch)


def train_steps(model, opt, data, start, stop):
    for t in range(start, stop):
        x, y = data[t]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("stop_at", [1, 4, 6, 7, 12, 13])
def test_state_dict_round_trip_continues_bit_identically(stop_at):
    gen = torch.Generator().manual_seed(2)
    data = [(torch.randn(8, 4, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(20)]

    def fresh():
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        return model, build_optimizer("ranger", model.parameters(), lr=0.05)

    model_a, opt_a = fresh()
    train_steps(model_a, opt_a, data, 0, 20)

    model_b, opt_b = fresh()
    train_steps(model_b, opt_b, data, 0, stop_at)
    buf = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # the training checkpoint stays weights_only-loadable
    model_c, opt_c = fresh()
    train_steps(model_c, opt_c, data, 0, 2)  # state to be overwritten completely
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["opt"])
    train_steps(model_c, opt_c, data, stop_at, 20)
    for pa, pc in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(pa, pc)
    assert opt_c.step_count == 20
