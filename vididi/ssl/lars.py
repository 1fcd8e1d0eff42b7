"""LARS: SGD with momentum and a layer-wise trust ratio (You, Gitman and Ginsburg 2017), the optimiser
BYOL (Grill et al. 2020) trains with.

For every parameter tensor w with gradient g, in a param group with `adapt=True`:

    u = g + weight_decay * w
    r = eta * |w| / |u|            (r = 1 when |w| = 0 or |u| = 0)
    v <- momentum * v + r * u      (v starts at 0, so the first v is r * u)
    w <- w - lr * v

A group with `adapt=False` (biases and normalisation parameters, as in BYOL) uses r = 1, which makes it
plain SGD with momentum; BYOL also gives it no weight decay (`trainer.make_optimizer` does).
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """See the module docstring. Per-group options: lr, momentum, weight_decay, eta, adapt."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001,
                 adapt: bool = True):  # fmt: skip
        if lr <= 0 or not 0 <= momentum <= 1 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr > 0, 0 <= momentum <= 1, weight_decay >= 0, eta > 0; got "
                             f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}")  # fmt: skip
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, adapt=adapt))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if group["weight_decay"]:
                    update = update.add(p, alpha=group["weight_decay"])
                if group["adapt"]:
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm, 1.0)
                    update = update * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss
