"""Tests for vididi.evaluation.analysis: checked against scikit-learn, hand-worked numbers and a toy network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score
from torch import nn

from vididi.evaluation.analysis import attention_share, grad_cam, silhouette, top_classes, tsne_2d
from vididi.utils import VididiError

torch.set_num_threads(1)


# --- top_classes ---------------------------------------------------------------------------------


def test_top_classes_orders_by_count_then_index():
    # counts: class 2 -> 3, class 1 -> 2, class 3 -> 2, class 0 -> 1, class 7 -> 2
    labels = [3, 3, 1, 1, 2, 2, 2, 0, 7, 7]
    assert top_classes(labels, k=1) == [2]
    assert top_classes(labels, k=4) == [2, 1, 3, 7]
    assert top_classes(labels, k=5) == [2, 1, 3, 7, 0]


def test_top_classes_rejects_too_few_classes():
    with pytest.raises(VididiError, match="only 2 distinct"):
        top_classes([0, 1, 1], k=5)


# --- silhouette ----------------------------------------------------------------------------------


def test_silhouette_hand_worked_example():
    # 1-D points 0, 1 | 5, 6 (euclidean). Point 0: a=1, b=(5+6)/2; point 1: a=1, b=(4+5)/2; symmetric.
    x = np.array([[0.0], [1.0], [5.0], [6.0]])
    expected = ((5.5 - 1) / 5.5 + (4.5 - 1) / 4.5) / 2
    # 4 samples / 2 classes is allowed (classes <= N - 1)
    assert silhouette(x, [0, 0, 1, 1], metric="euclidean") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk_size", [None, 7, 1])
def test_silhouette_equals_sklearn(metric, chunk_size):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=61)
    labels[5] = 9  # a singleton class: its silhouette is 0 by definition
    x = rng.normal(size=(61, 12)) + labels[:, None] * 0.3
    x[3] = 0.0  # a zero vector: cosine similarity 0 with everything (sklearn's convention)
    ours = silhouette(x.astype(np.float32), labels, metric=metric, chunk_size=chunk_size)
    ref = silhouette_score(x.astype(np.float32).astype(np.float64), labels, metric=metric)
    assert ours == pytest.approx(ref, abs=1e-9)


def test_silhouette_explicit_loop_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 5))
    labels = np.array([0] * 7 + [1] * 8 + [2] * 5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    scores = []
    for i in range(20):
        d = [1 - float(unit[i] @ unit[j]) for j in range(20)]
        own = [d[j] for j in range(20) if labels[j] == labels[i] and j != i]
        a = sum(own) / len(own)
        b = min(
            sum(d[j] for j in range(20) if labels[j] == c) / np.sum(labels == c) for c in {0, 1, 2} - {labels[i]}
        )
        scores.append((b - a) / max(a, b))
    assert silhouette(x, labels, chunk_size=3) == pytest.approx(sum(scores) / 20, abs=1e-12)


def test_silhouette_rejects_one_class():
    with pytest.raises(VididiError, match="number of classes"):
        silhouette(np.ones((5, 3)), [0] * 5)


# --- t-SNE ---------------------------------------------------------------------------------------


def test_tsne_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    first = tsne_2d(x, seed=3, max_iter=250)
    assert first.shape == (40, 2)
    np.testing.assert_array_equal(first, tsne_2d(x, seed=3, max_iter=250))


def test_tsne_keeps_separated_clusters_apart():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    x = rng.normal(size=(40, 8)) * 0.1
    x[:, 0] += np.where(labels == 0, 1.0, -1.0)  # opposite directions: far apart in cosine distance
    xy = tsne_2d(x, seed=0, max_iter=250)
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert (labels[dist.argmin(axis=1)] == labels).all()


def test_tsne_clamps_perplexity_for_tiny_inputs():
    x = np.random.default_rng(0).normal(size=(6, 4))
    xy = tsne_2d(x, seed=0, perplexity=30.0, max_iter=250)  # sklearn alone rejects perplexity >= N
    assert xy.shape == (6, 2) and np.isfinite(xy).all()


# --- attention share -----------------------------------------------------------------------------


def _block_mask(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[..., rows, cols] = True
    return mask


def test_attention_share_map_inside_mask_is_one():
    mask = _block_mask((1, 2, 8, 8), slice(2, 5), slice(2, 5))
    cam = np.where(mask, np.random.default_rng(0).random(mask.shape) + 0.1, 0.0)
    for dilation in (0, 1, 2):
        assert attention_share(cam, mask, dilation=dilation)[0] == pytest.approx(1.0)


def test_attention_share_uniform_map_is_dilated_area_share():
    # 3x3 block at rows/cols 2..4 dilated by 1 px -> 5x5 = 25 of 64 pixels
    mask = _block_mask((1, 3, 8, 8), slice(2, 5), slice(2, 5))
    assert attention_share(np.ones(mask.shape), mask, dilation=1)[0] == pytest.approx(25 / 64)
    assert attention_share(np.ones(mask.shape), mask, dilation=0)[0] == pytest.approx(9 / 64)
    # 2x2 block in the corner dilated by 1 px is clipped by the border -> 3x3 = 9 of 64
    corner = _block_mask((1, 3, 8, 8), slice(0, 2), slice(0, 2))
    assert attention_share(np.ones(corner.shape), corner, dilation=1)[0] == pytest.approx(9 / 64)


def test_attention_share_outside_mask_is_zero_and_per_sample():
    mask = _block_mask((2, 2, 8, 8), slice(2, 5), slice(2, 5))
    cam = np.zeros(mask.shape)
    cam[0, :, 7, 7] = 1.0  # far from the (dilated) object
    cam[1, 0, 3, 3] = 3.0  # sample 1: 3 units inside, 1 unit outside
    cam[1, 1, 7, 0] = 1.0
    share = attention_share(torch.from_numpy(cam), torch.from_numpy(mask), dilation=1)
    assert share.shape == (2,)
    assert share[0] == 0.0
    assert share[1] == pytest.approx(0.75)


def test_attention_share_all_zero_map_is_nan():
    mask = _block_mask((1, 1, 4, 4), slice(0, 2), slice(0, 2))
    assert math.isnan(attention_share(np.zeros(mask.shape), mask)[0])


# --- Grad-CAM ------------------------------------------------------------------------------------


class ModeProbe(nn.Module):
    """Identity that records whether it ran in train mode."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


class RedRegionNet(nn.Module):
    """Channel 0 detects red (R - G), channel 1 green (G - R), on a 2x-pooled grid (B, 2, T/2, H/2, W/2).

    The output reads only a fixed region (t' 1:3, h' 0:2, w' 4:8) of the ReLU'd map. The ReLU is
    in-place AFTER the target layer: Grad-CAM must differentiate w.r.t. the pre-ReLU activation.
    """

    def __init__(self):
        super().__init__()
        conv = nn.Conv3d(3, 2, kernel_size=1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]).view(2, 3, 1, 1, 1))
        self.body = nn.Sequential(conv, nn.BatchNorm3d(2), nn.AvgPool3d(2))
        self.probe = ModeProbe()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        a = self.act(self.probe(self.body(x)))
        return a[:, :, 1:3, 0:2, 4:8].sum(dim=(2, 3, 4))


def _green_clips_with_red_objects():
    """(2, 3, 8, 16, 16): green background; sample 0 has a red object filling the read region
    (input t 2:6, h 0:4, w 8:16), sample 1 a smaller one inside it (t 2:6, h 0:2, w 10:14)."""
    clips = torch.zeros(2, 3, 8, 16, 16)
    clips[:, 1] = 1.0
    for b, (h, w) in enumerate([(slice(0, 4), slice(8, 16)), (slice(0, 2), slice(10, 14))]):
        clips[b, 0, 2:6, h, w] = 1.0
        clips[b, 1, 2:6, h, w] = 0.0
    return clips


def red_logit(output):
    return output[:, 0]


def test_grad_cam_finds_the_region_the_output_reads():
    model = RedRegionNet()
    clips = _green_clips_with_red_objects()
    cam = grad_cam(model, model.body, clips, red_logit, upsample=False)
    assert cam.shape == (2, 4, 8, 8)
    expected = torch.zeros(2, 4, 8, 8)
    for t in range(1, 3):
        for h in range(0, 2):
            for w in range(4, 8):
                expected[0, t, h, w] = 1.0  # object covers every pooled cell of the region
    for t in range(1, 3):
        for w in (5, 6):
            expected[1, t, 0, w] = 1.0  # pooled cells fully covered by the small object
    torch.testing.assert_close(cam, expected, atol=1e-6, rtol=0)

    up = grad_cam(model, model.body, clips, red_logit, normalize="sum")
    assert up.shape == (2, 8, 16, 16)
    torch.testing.assert_close(up.sum(dim=(1, 2, 3)), torch.ones(2), atol=1e-5, rtol=0)
    # Trilinear upsampling (align_corners=False, factor 2) blurs each edge by exactly one input
    # pixel: all mass lies in the region grown by 1 px, and most of it in the region itself.
    grown = up[:, 1:7, 0:5, 7:16].sum(dim=(1, 2, 3))
    torch.testing.assert_close(grown, torch.ones(2), atol=1e-5, rtol=0)
    assert (up[0, 2:6, 0:4, 8:16].sum() > 0.75) and up[0].flatten().argmax().item() in _flat_indices(2, 6, 0, 4, 8, 16)


def _flat_indices(t0, t1, h0, h1, w0, w1, shape=(8, 16, 16)):
    """Flat indices of a box in a (T, H, W) grid, by explicit loops."""
    return {(t * shape[1] + h) * shape[2] + w for t in range(t0, t1) for h in range(h0, h1) for w in range(w0, w1)}


def test_grad_cam_uses_the_activation_before_later_in_place_ops():
    # Target = both channels. Before the in-place ReLU, the green channel is negative on the read
    # region (the red object fills it), so its gradient there is 0 and its weight 0: the CAM is the
    # region alone. Differentiating the ReLU'd tensor instead would give the green channel a positive
    # weight and light up the whole green background.
    model = RedRegionNet()
    clips = _green_clips_with_red_objects()[:1]
    cam = grad_cam(model, model.body, clips, lambda out: out.sum(dim=1), upsample=False)
    expected = torch.zeros(1, 4, 8, 8)
    expected[0, 1:3, 0:2, 4:8] = 1.0
    torch.testing.assert_close(cam, expected, atol=1e-6, rtol=0)


def test_grad_cam_restores_state_and_removes_hooks():
    model = RedRegionNet()
    model.train()
    model.body[1].weight.requires_grad_(False)  # a frozen parameter must stay frozen
    clips = _green_clips_with_red_objects()
    grad_cam(model, model.body, clips, red_logit)
    assert model.probe.seen == [False]  # the CAM pass ran in eval mode
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [True, False, True]
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(model.body[1].running_mean, torch.zeros(2))  # eval BN: stats untouched
    assert not model.body._forward_hooks
    assert not clips.requires_grad


def test_grad_cam_cleans_up_on_error():
    model = RedRegionNet()
    model.train()
    with pytest.raises(VididiError, match="one scalar per sample"):
        grad_cam(model, model.body, _green_clips_with_red_objects(), lambda out: out)
    assert not model.body._forward_hooks
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(VididiError, match="not a submodule"):
        grad_cam(model, nn.Conv3d(3, 2, 1), _green_clips_with_red_objects(), red_logit)
