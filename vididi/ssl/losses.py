"""The host frameworks' losses as pure functions of embeddings (N, D).

All of them compute in (at least) float32 with autocast disabled, whatever the input dtype
(bf16/fp16 embeddings are upcast), because the softmax / covariance sums lose too much in half
precision. Under DistributedDataParallel, SimCLR and VICReg expect the globally gathered
embeddings (see `vididi.ssl.frameworks`); BYOL is a per-sample loss and needs no gather.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """SimCLR's NT-Xent loss over the 2N embeddings of N positive pairs (z1[i], z2[i]).

    With u = normalise(cat(z1, z2)) (2N rows) and s_ij = u_i . u_j / temperature:

        loss = 1/(2N) sum_i -log( exp(s_{i,p(i)}) / sum_{j != i} exp(s_ij) )

    where p(i) = i + N for i < N and i - N otherwise: every row has 1 positive and 2N - 2 negatives.
    """
    z1, z2 = _check_pair(z1, z2, "nt_xent", min_rows=2)
    if not temperature > 0:
        raise ValueError(f"nt_xent temperature must be > 0, got {temperature}")
    with _full_precision(z1):
        n = z1.shape[0]
        u = F.normalize(torch.cat([z1, z2]), dim=1)
        logits = (u @ u.T) / temperature
        # a row must not count itself among the candidates
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=u.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(u.device)
        return F.cross_entropy(logits, positives)


def vicreg(
    z1: Tensor,
    z2: Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """VICReg loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance.

        invariance = mean_{n,d} (z1[n,d] - z2[n,d])^2                                    (MSE)
        v(z)       = 1/D sum_d relu(1 - sqrt(Var_n(z[:,d]) + eps))       Var unbiased (N - 1)
        variance   = (v(z1) + v(z2)) / 2
        c(z)       = 1/D sum_{i != j} Cov(z)_ij^2,   Cov(z) = (z - mean)^T (z - mean) / (N - 1)
        covariance = c(z1) + c(z2)

    This is the official implementation's form (facebookresearch/vicreg): the variance term is
    AVERAGED over the two branches while the covariance term is SUMMED over them.
    Returns (loss, terms) with terms 'invariance', 'variance', 'covariance' as detached 0-d tensors.
    """
    z1, z2 = _check_pair(z1, z2, "vicreg", min_rows=2)
    with _full_precision(z1):
        invariance = F.mse_loss(z1, z2)
        variance = (_std_hinge(z1, eps) + _std_hinge(z2, eps)) / 2
        covariance = _off_diagonal_cov(z1) + _off_diagonal_cov(z2)
        loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance
    terms = {
        "invariance": invariance.detach(),
        "variance": variance.detach(),
        "covariance": covariance.detach(),
    }
    return loss, terms


def byol(p: Tensor, z: Tensor) -> Tensor:
    """BYOL regression loss: mean_n (2 - 2 cos(p_n, z_n)) with z detached (stop-gradient on the target)."""
    p, z = _check_pair(p, z, "byol", min_rows=1)
    with _full_precision(p):
        cos = (F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(dim=1)
        return (2.0 - 2.0 * cos).mean()


def byol_tau(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """BYOL's target EMA rate: tau = final - (final - base) * (cos(pi * step / total_steps) + 1) / 2.

    tau(0) = base, tau(total_steps) = final; steps past the end stay at final.
    """
    if total_steps < 1:
        raise ValueError(f"byol_tau needs total_steps >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"byol_tau needs step >= 0, got {step}")
    progress = min(step, total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def _std_hinge(z: Tensor, eps: float) -> Tensor:
    std = torch.sqrt(z.var(dim=0, correction=1) + eps)
    return F.relu(1.0 - std).mean()


def _off_diagonal_cov(z: Tensor) -> Tensor:
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = (centred.T @ centred) / (n - 1)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    return off_diagonal.square().sum() / d


def _check_pair(a: Tensor, b: Tensor, loss: str, min_rows: int) -> tuple[Tensor, Tensor]:
    for name, t in (("first", a), ("second", b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{loss}: {name} input must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{loss}: {name} input must be floating point, got dtype {t.dtype}")
        if t.ndim != 2:
            raise ValueError(f"{loss}: inputs must be (N, D) embeddings, {name} has shape {tuple(t.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{loss}: the two inputs must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < min_rows:
        raise ValueError(f"{loss}: needs at least {min_rows} samples, got a batch of {a.shape[0]}")
    return _at_least_float32(a), _at_least_float32(b)


def _at_least_float32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _full_precision(t: Tensor) -> torch.autocast:
    """Disable autocast inside a loss: matmuls would otherwise run in half precision again."""
    return torch.autocast(device_type=t.device.type, enabled=False)
