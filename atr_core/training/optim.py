"""Optimisers: Ranger (RAdam + Lookahead), the paper's choice (reference 7, project decision 4), or Adam."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from atr_core.errors import InputError

OPTIMIZERS = ("ranger", "adam")


class Lookahead(Optimizer):
    """Lookahead (Zhang et al. 2019) around any optimiser, as in Ranger 9.3.19.

    Slow weights start as the parameters at the first step. After every ``k``-th inner step:
    slow <- slow + alpha * (fast - slow); fast <- slow. ``param_groups`` are the inner
    optimiser's own list, so LR schedulers act on both. ``state_dict`` holds the inner state,
    the slow weights and the step counter, so a resumed run continues bit-identically.
    """

    def __init__(self, optimizer: Optimizer, k: int = 6, alpha: float = 0.5):
        if k < 1:
            raise ValueError(f"Lookahead k must be >= 1, got {k}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Lookahead alpha must be in [0, 1], got {alpha}")
        super().__init__([{"params": g["params"]} for g in optimizer.param_groups], optimizer.defaults)
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups
        self.defaults = optimizer.defaults
        self.k = k
        self.alpha = alpha
        self.step_count = 0

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One inner step; a slow-weight sync every ``k`` steps."""
        for p in self._params():
            if "slow" not in self.state[p]:
                self.state[p]["slow"] = p.detach().clone()
        with torch.enable_grad():
            loss = self.optimizer.step(closure)
        self.step_count += 1
        if self.step_count % self.k == 0:
            for p in self._params():
                slow = self.state[p]["slow"]
                slow.add_(p - slow, alpha=self.alpha)
                p.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "optimizer"):
            self.optimizer.add_param_group(param_group)
        else:  # called by Optimizer.__init__ before the inner optimiser is attached
            super().add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        params = self._params()
        slow = [self.state[p]["slow"].clone() if "slow" in self.state[p] else None for p in params]
        return {
            "inner": self.optimizer.state_dict(),
            "slow": slow,
            "step_count": self.step_count,
            "k": self.k,
            "alpha": self.alpha,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        params = self._params()
        if len(state_dict["slow"]) != len(params):
            raise ValueError(
                f"Lookahead state has {len(state_dict['slow'])} slow tensors; "
                f"the optimiser has {len(params)} params"
            )
        self.optimizer.load_state_dict(state_dict["inner"])
        self.param_groups = self.optimizer.param_groups
        for p, slow in zip(params, state_dict["slow"], strict=True):
            if slow is None:
                self.state[p].pop("slow", None)
            else:
                self.state[p]["slow"] = slow.to(device=p.device, dtype=p.dtype).clone()
        self.step_count = int(state_dict["step_count"])
        self.k = int(state_dict["k"])
        self.alpha = float(state_dict["alpha"])


def build_optimizer(
    name: str,
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float = 0.01,
    weight_decay: float = 1e-3,
) -> Optimizer:
    """``ranger``: RAdam(betas (0.95, 0.999), eps 1e-5, decoupled weight decay scaled by lr) +
    Lookahead(k=6, alpha=0.5), the paper's optimiser. ``adam``: torch Adam with L2 weight decay."""
    if name == "ranger":
        radam = torch.optim.RAdam(
            params,
            lr=lr,
            betas=(0.95, 0.999),
            eps=1e-5,
            weight_decay=weight_decay,
            decoupled_weight_decay=True,
        )
        return Lookahead(radam, k=6, alpha=0.5)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise InputError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
