"""Temporal-derivative views of clips (docs/method.md, "Derivative views").

Layout everywhere: (B, C, L, H, W), time on dim 2 (torchvision video layout). A clip of L = T + 2
frames yields exactly T frames for every order k in {0, 1, 2}:

    D0[t] = x[t]
    D1[t] = x[t+1] - x[t]
    D2[t] = x[t+2] - 2 x[t+1] + x[t]          t = 0 .. T-1

Typical use inside a training step (all on the training device, batched):

    x = to_float(clips_uint8.to(device), mean)                      # (B, 3, T+2, H, W), centred
    v = derivative_view(x, order=1, frames=T, scaling="dataset", sigma=sigma)   # (B, 3, T, H, W)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from vididi.utils import VididiError

ORDERS = (0, 1, 2)
SCALINGS = ("dataset", "none", "per_clip")


def to_float(clips: Tensor, mean: Sequence[float] | Tensor) -> Tensor:
    """uint8 clips (B, C, L, H, W) -> float32 `clips / 255 - mean[c]` (centring only, no division)."""
    if clips.dtype != torch.uint8:
        raise ValueError(f"to_float expects uint8 clips, got dtype {clips.dtype}")
    if clips.ndim != 5:
        raise ValueError(f"to_float expects clips shaped (B, C, L, H, W), got shape {tuple(clips.shape)}")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=clips.device).flatten()
    if mean_t.numel() != clips.shape[1]:
        raise VididiError(
            f"dataset mean has {mean_t.numel()} values but the clips have {clips.shape[1]} channels"
        )
    return clips.float().div_(255.0).sub_(mean_t[:, None, None, None])


def derivative(x: Tensor, order: int, frames: int) -> Tensor:
    """Forward finite difference of `order` along time: (B, C, L, H, W) -> (B, C, frames, H, W).

    Requires L >= frames + order. Always returns a new tensor (never a view of `x`).
    """
    _check_clip_batch(x, "x")
    _check_order(order)
    if not isinstance(frames, int) or frames < 1:
        raise VididiError(f"frames must be a positive integer, got {frames!r}")
    length = x.shape[2]
    if length < frames + order:
        raise VididiError(
            f"a derivative of order {order} over {frames} frames needs clips of at least "
            f"{frames + order} frames, got {length} (x shape {tuple(x.shape)})"
        )
    x0 = x[:, :, 0:frames]
    if order == 0:
        return x0.clone()
    x1 = x[:, :, 1 : frames + 1]
    if order == 1:
        return x1 - x0
    x2 = x[:, :, 2 : frames + 2]
    return x2 - 2.0 * x1 + x0


def derivative_view(
    x: Tensor,
    order: int,
    frames: int,
    scaling: str = "dataset",
    sigma: Sequence[float] | Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """The scaled derivative view the encoder sees: (B, C, L, H, W) -> (B, C, frames, H, W).

    scaling:
      - "dataset":  Dk / sigma[k], sigma = the 3 per-dataset stds of D0, D1, D2 (`measure_sigma`).
                    One constant per order for the whole dataset, so a fast video keeps larger
                    derivatives than a slow one: speed information is preserved.
      - "none":     Dk unchanged.
      - "per_clip": each sample standardised over (C, T, H, W): (Dk - mean) / sqrt(var + eps), biased
                    var. This REMOVES speed information: a clip and the same clip played at a different
                    speed (or with scaled contrast) give nearly the same view.
    """
    if scaling not in SCALINGS:
        raise VididiError(f"unknown derivative scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")
    d = derivative(x, order, frames)
    if scaling == "none":
        return d
    if scaling == "dataset":
        return d.div_(_checked_sigma(sigma)[order])
    var, mean = torch.var_mean(d, dim=(1, 2, 3, 4), correction=0, keepdim=True)
    return (d - mean).mul_(torch.rsqrt(var + eps))


def measure_sigma(clips: Tensor | Iterable[Tensor], frames: int) -> tuple[float, float, float]:
    """(sigma0, sigma1, sigma2): the std of D0, D1, D2 over a sample of centred float clips.

    `clips` is one tensor (B, C, L, H, W) or an iterable of such batches (or of single clips
    (C, L, H, W)), each with L >= frames + 2. The std is taken over every element of every clip
    (population std around the pooled mean). Batches are combined with Chan et al.'s parallel
    formula in float64, so the result does not depend on how the sample is split into batches
    and does not suffer from E[x^2] - E[x]^2 cancellation.
    """
    batches: Iterable[Tensor] = [clips] if isinstance(clips, Tensor) else clips
    count = 0
    means = [0.0, 0.0, 0.0]
    m2s = [0.0, 0.0, 0.0]  # sum of squared deviations from the running mean
    for batch in batches:
        if isinstance(batch, Tensor) and batch.ndim == 4:
            batch = batch.unsqueeze(0)
        _check_clip_batch(batch, "clips")
        batch = batch.double()  # differences of float32 values lose digits before any sum
        n_b = batch.shape[0] * batch.shape[1] * frames * batch.shape[3] * batch.shape[4]
        if n_b == 0:
            continue
        n = count + n_b
        for k in ORDERS:
            d = derivative(batch, k, frames)
            mean_b = d.mean().item()
            m2_b = (d - mean_b).square().sum().item()
            delta = mean_b - means[k]
            means[k] += delta * n_b / n
            m2s[k] += m2_b + delta * delta * count * n_b / n
        count = n
    if count == 0:
        raise VididiError("measure_sigma got no clips")
    sigma = tuple(math.sqrt(m2 / count) for m2 in m2s)
    for k, s in enumerate(sigma):
        if not s > 0.0 or not math.isfinite(s):
            raise VididiError(
                f"the std of D{k} over the sampled clips is {s}; cannot scale by it "
                "(are all sampled clips static or constant?)"
            )
    return sigma  # type: ignore[return-value]


def _check_clip_batch(x: object, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(f"{name} must be shaped (B, C, L, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        # uint8 differences would wrap around silently
        raise ValueError(f"{name} must be a float tensor (use to_float on uint8 clips), got dtype {x.dtype}")


def _check_order(order: object) -> None:
    if order not in ORDERS or isinstance(order, bool):
        raise VididiError(f"derivative order must be one of {ORDERS}, got {order!r}")


def _checked_sigma(sigma: Sequence[float] | Tensor | None) -> tuple[float, float, float]:
    if sigma is None:
        raise VididiError('scaling "dataset" needs sigma: the 3 per-dataset stds of D0, D1, D2')
    values = [float(s) for s in (sigma.tolist() if isinstance(sigma, Tensor) else sigma)]
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise VididiError(f"sigma must be 3 positive finite numbers (std of D0, D1, D2), got {values}")
    return values[0], values[1], values[2]
