"""Numbers behind the analysis figures: top classes, silhouette, t-SNE, Grad-CAM (and its targets:
the embedding's squared norm, or a linear probe's class logit), attention share.

Everything here is model- and dataset-agnostic: the `figures` stage feeds it features, labels,
clips and masks, and `vididi.plots` draws the results.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vididi.utils import VididiError

# Working-memory budget (float64 entries) of one block of pairwise distances in `silhouette`:
# 2**23 entries = 64 MiB, small enough for any machine, large enough that BLAS stays efficient.
_SILHOUETTE_BLOCK_ENTRIES = 2**23


def top_classes(labels, k: int = 5) -> list[int]:
    """The `k` classes with the most samples, most frequent first.

    Ties are broken by class index: of two classes with equal counts the smaller index comes first,
    so the choice is deterministic and the same for every model evaluated on the same split.
    Raises VididiError when `labels` holds fewer than `k` distinct classes.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise VididiError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if k < 1:
        raise VididiError(f"k must be >= 1, got {k}")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < k:
        raise VididiError(f"asked for the top {k} classes but labels hold only {len(classes)} distinct classes")
    # np.unique returns classes in ascending order and lexsort is stable, so equal counts keep that order.
    order = np.lexsort((classes, -counts))
    return [int(c) for c in classes[order[:k]]]


def silhouette(
    features,
    labels,
    metric: Literal["cosine", "euclidean"] = "cosine",
    chunk_size: int | None = None,
) -> float:
    """Mean silhouette coefficient (Rousseeuw 1987), as `sklearn.metrics.silhouette_score`.

    Kept, not delegated: sklearn's cosine silhouette gives an all-zero vector a self-distance of 1 when
    its distances come in several blocks, so its value depends on the working memory; this one does not.

    For sample i of cluster C_i with n_{C_i} members and distance d:
        a_i = sum_{j in C_i, j != i} d(i, j) / (n_{C_i} - 1)
        b_i = min_{C != C_i} mean_{j in C} d(i, j)
        s_i = (b_i - a_i) / max(a_i, b_i),  and s_i = 0 when C_i is a singleton.
    Returns mean_i s_i. Cosine distance is 1 - cos(x_i, x_j) clipped to [0, 2]; an all-zero feature
    vector has cosine similarity 0 with everything (scikit-learn's convention). Distances are
    computed in float64, `chunk_size` rows at a time (default: blocks of about 64 MiB), so memory
    is O(chunk_size * N) instead of O(N^2). Needs 2 <= number of classes <= N - 1.
    """
    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2:
        raise VididiError(f"features must be 2-D (N, D), got shape {x.shape}")
    if labels.shape != (x.shape[0],):
        raise VididiError(f"labels must have shape ({x.shape[0]},) to match features, got {labels.shape}")
    if not np.isfinite(x).all():
        raise VididiError("features contain NaN or infinite values")
    n = x.shape[0]
    _, codes = np.unique(labels, return_inverse=True)
    counts = np.bincount(codes)
    n_classes = len(counts)
    if not 2 <= n_classes <= n - 1:
        raise VididiError(f"silhouette needs 2 <= number of classes <= N - 1, got {n_classes} classes for N={n}")
    if chunk_size is None:
        chunk_size = max(1, _SILHOUETTE_BLOCK_ENTRIES // n)
    if chunk_size < 1:
        raise VididiError(f"chunk_size must be >= 1, got {chunk_size}")

    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        unit = x / np.where(norms > 0, norms, 1.0)
    elif metric == "euclidean":
        sq_norms = np.einsum("ij,ij->i", x, x)
    else:
        raise VididiError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")

    one_hot = np.zeros((n, n_classes))
    one_hot[np.arange(n), codes] = 1.0
    intra = np.empty(n)
    inter = np.empty(n)
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n))
        if metric == "cosine":
            dist = np.clip(1.0 - unit[rows] @ unit.T, 0.0, 2.0)
        else:
            sq = sq_norms[rows, None] + sq_norms[None, :] - 2.0 * (x[rows] @ x.T)
            dist = np.sqrt(np.maximum(sq, 0.0))
        # d(i, i) is 0 by definition; rounding can leave ~1e-16 there.
        local = np.arange(rows.stop - rows.start)
        dist[local, local + start] = 0.0
        sums = dist @ one_hot  # (chunk, classes): total distance from each row to each class
        own = codes[rows]
        intra[rows] = sums[local, own]
        sums[local, own] = np.inf
        inter[rows] = (sums / counts).min(axis=1)

    own_sizes = counts[codes]
    a = np.divide(intra, own_sizes - 1, out=np.zeros(n), where=own_sizes > 1)
    denom = np.maximum(a, inter)
    s = np.divide(inter - a, denom, out=np.zeros(n), where=(own_sizes > 1) & (denom > 0))
    return float(s.mean())


def tsne_2d(
    features,
    seed: int,
    perplexity: float = 30.0,
    metric: Literal["cosine", "euclidean"] = "cosine",
    max_iter: int = 1000,
) -> np.ndarray:
    """2-D t-SNE embedding (N, 2) with fixed settings, so panels of different models are comparable.

    scikit-learn TSNE, Barnes-Hut, init='pca', learning_rate='auto', early exaggeration 12,
    `max_iter` iterations, random_state=`seed`: the same seed and input give the same output.
    (With PCA initialisation the optimisation itself is deterministic, so the seed barely matters;
    it is fixed anyway so no scikit-learn code path can make a panel irreproducible.)
    The default metric is cosine, the geometry used by the silhouette score and retrieval.
    For tiny inputs the perplexity is clamped to (N - 1) / 3, the largest value whose 3*perplexity
    nearest neighbours still exist (scikit-learn would reject perplexity >= N); needs N >= 4.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise VididiError(f"features must be 2-D (N, D), got shape {x.shape}")
    if x.shape[0] < 4:
        raise VididiError(f"t-SNE needs at least 4 samples, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise VididiError("features contain NaN or infinite values")
    if perplexity <= 0:
        raise VididiError(f"perplexity must be > 0, got {perplexity}")
    from sklearn.manifold import TSNE

    tsne = TSNE(
        n_components=2,
        perplexity=min(float(perplexity), (x.shape[0] - 1) / 3),
        early_exaggeration=12.0,
        learning_rate="auto",
        max_iter=max_iter,
        metric=metric,
        init="pca",
        method="barnes_hut",
        random_state=seed,
    )
    return np.asarray(tsne.fit_transform(x), dtype=np.float64)


def grad_cam(
    model: nn.Module,
    target_layer: nn.Module,
    clips: torch.Tensor,
    target_fn: Callable[[torch.Tensor], torch.Tensor],
    normalize: Literal["max", "sum"] = "max",
    upsample: bool = True,
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) for a video model with input (B, 3, T, H, W).

    With A (B, C, t, h, w) the output of `target_layer` and y_b = target_fn(model(clips))[b]:
        w_bc = mean_{t,h,w} dy_b / dA_bc,   cam_b = relu(sum_c w_bc A_bc)
    `target_fn` maps the model output to one scalar per sample (B,): e.g. the norm of the pooled
    embedding for an encoder without classifier, or one linear-probe class logit.
    The model runs in eval mode so samples do not interact (BatchNorm uses running statistics) and
    the gradient of sum_b y_b w.r.t. A_b is that of y_b alone. With `upsample` the map is resized
    trilinearly to (B, T, H, W); otherwise it stays (B, t, h, w). Then each sample is normalised:
    'max' -> maximum 1 (range [0, 1]), 'sum' -> total mass 1; an all-zero map stays all zero.
    Parameter gradients are never accumulated; every module's train/eval mode and every
    parameter's requires_grad flag are restored and the hook removed, also on error.
    Returns a detached float tensor on the device of `clips`.
    """
    if clips.ndim != 5 or clips.shape[1] != 3:
        raise VididiError(f"clips must have shape (B, 3, T, H, W), got {tuple(clips.shape)}")
    if normalize not in ("max", "sum"):
        raise VididiError(f"normalize must be 'max' or 'sum', got {normalize!r}")
    if not any(m is target_layer for m in model.modules()):
        raise VididiError("target_layer is not a submodule of model")

    captured: list[torch.Tensor] = []

    def keep_activation(_module, _inputs, output):
        captured.append(output)
        # Downstream layers get a copy, so an in-place op after target_layer (e.g. ReLU(inplace=True))
        # cannot overwrite the activation we differentiate against.
        return output.clone() if isinstance(output, torch.Tensor) else output

    modes = [(m, m.training) for m in model.modules()]
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    handle = target_layer.register_forward_hook(keep_activation)
    try:
        model.eval()
        for p, _ in grad_flags:
            p.requires_grad_(False)
        # The input carries the graph instead of the parameters, so frozen and trainable models
        # behave alike and no parameter .grad is touched.
        inputs = (clips.detach() if clips.is_floating_point() else clips.detach().float()).requires_grad_(True)
        with torch.enable_grad():
            output = model(inputs)
            if len(captured) != 1:
                raise VididiError(f"target_layer ran {len(captured)} times in one forward pass; it must run once")
            activation = captured[0]
            if not isinstance(activation, torch.Tensor) or activation.ndim != 5:
                shape = tuple(activation.shape) if isinstance(activation, torch.Tensor) else type(activation).__name__
                raise VididiError(f"target_layer output must be (B, C, t, h, w), got {shape}")
            scores = target_fn(output)
            if scores.shape != (clips.shape[0],):
                raise VididiError(
                    f"target_fn must return one scalar per sample, shape ({clips.shape[0]},), got {tuple(scores.shape)}"
                )
            (gradient,) = torch.autograd.grad(scores.sum(), activation, allow_unused=True)
        if gradient is None:
            raise VididiError("target_fn output does not depend on target_layer")
    finally:
        handle.remove()
        for module, was_training in modes:
            module.training = was_training
        for p, flag in grad_flags:
            p.requires_grad_(flag)

    activation = activation.detach()
    weights = gradient.mean(dim=(2, 3, 4), keepdim=True)
    cam = torch.relu((weights * activation).sum(dim=1))
    if upsample:
        cam = F.interpolate(cam[:, None], size=tuple(clips.shape[2:]), mode="trilinear", align_corners=False)[:, 0]
        cam = cam.clamp_min(0.0)  # trilinear weights are convex; clamp only guards rounding
    flat = cam.flatten(1)
    scale = flat.amax(dim=1) if normalize == "max" else flat.sum(dim=1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return cam / scale.view(-1, *([1] * (cam.ndim - 1)))


def feature_norm_target(z: torch.Tensor) -> torch.Tensor:
    """Squared norm of the pooled embedding: which pixels drive the representation (not a class)."""
    return z.float().square().sum(dim=1)


def probe_logit_targets(model):
    """label -> Grad-CAM target function: the logit of that class, for every sample of the batch, of
    a fitted linear probe (`evaluation.probe.ProbeModel`: `classes` and a differentiable `logits`)."""
    columns = {int(c): i for i, c in enumerate(model.classes)}

    def target_for(label: int):
        if int(label) not in columns:
            raise VididiError(f"class {label} has no training video: the probe has no logit for it")
        column = columns[int(label)]
        return lambda z: model.logits(z.double())[:, column]

    return target_for


def attention_share(cam, mask, dilation: int = 1) -> np.ndarray:
    """Share of attention mass on the object, one value per sample (float64 array of shape (B,)).

        share_b = sum(cam_b * dilate(mask_b)) / sum(cam_b)
    `cam` is a non-negative map (B, ..., H, W) (e.g. (B, T, H, W) from `grad_cam`) and `mask` a
    binary object mask of the same shape. The mask is first dilated per frame by `dilation` pixels
    (a (2d+1) x (2d+1) max-pool, i.e. a square neighbourhood) so CAMs upsampled from coarse feature
    maps are not penalised for blurring across the object's outline; the share is then computed
    against the dilated mask. So: 1.0 for a map that is non-zero only inside the dilated mask, the
    dilated mask's area share for a uniform map, 0.0 for a map outside it, NaN for an all-zero map.
    """
    cam_t = torch.as_tensor(np.asarray(cam) if not isinstance(cam, torch.Tensor) else cam).detach().cpu().double()
    mask_t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).detach().cpu().double()
    if cam_t.ndim < 3:
        raise VididiError(f"cam must have shape (B, ..., H, W), got {tuple(cam_t.shape)}")
    if mask_t.shape != cam_t.shape:
        raise VididiError(f"mask shape {tuple(mask_t.shape)} must equal cam shape {tuple(cam_t.shape)}")
    if dilation < 0:
        raise VididiError(f"dilation must be >= 0, got {dilation}")
    if (cam_t < 0).any():
        raise VididiError("cam must be non-negative (a ReLU'd Grad-CAM map)")
    if not ((mask_t == 0) | (mask_t == 1)).all():
        raise VididiError("mask must be binary (0/1 or bool)")
    h, w = cam_t.shape[-2:]
    if dilation > 0:
        frames = mask_t.reshape(-1, 1, h, w)
        frames = F.max_pool2d(frames, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
        mask_t = frames.reshape(cam_t.shape)
    batch = cam_t.shape[0]
    inside = (cam_t * mask_t).reshape(batch, -1).sum(dim=1)
    total = cam_t.reshape(batch, -1).sum(dim=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total.numpy() > 0, inside.numpy() / total.numpy(), np.nan)
