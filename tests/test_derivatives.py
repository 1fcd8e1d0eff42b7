import numpy as np
import pytest
import torch

from vididi.ssl.derivatives import derivative, derivative_view, measure_sigma, to_float
from vididi.utils import VididiError


def quadratic_clip(frames: int, seed: int = 0):
    """x[t] = a + b t + c t^2 per pixel, float64, shape (2, 3, frames, 4, 5)."""
    g = torch.Generator().manual_seed(seed)
    a, b, c = (torch.randn(2, 3, 1, 4, 5, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.arange(frames, dtype=torch.float64).view(1, 1, frames, 1, 1)
    return a + b * t + c * t**2, a, b, c


def test_quadratic_clip_gives_linear_d1_and_constant_d2():
    T = 6
    x, a, b, c = quadratic_clip(T + 2)
    t = torch.arange(T, dtype=torch.float64).view(1, 1, T, 1, 1)
    # (a + b(t+1) + c(t+1)^2) - (a + bt + ct^2) = b + c(2t + 1)
    torch.testing.assert_close(derivative(x, 1, T), (b + c * (2 * t + 1)).expand(2, 3, T, 4, 5))
    torch.testing.assert_close(derivative(x, 2, T), (2 * c).expand(2, 3, T, 4, 5))
    torch.testing.assert_close(derivative(x, 0, T), x[:, :, :T])


def test_derivatives_match_explicit_loops_and_ignore_extra_frames():
    x = torch.randn(2, 3, 9, 3, 3)
    T = 5
    for order in (0, 1, 2):
        ref = torch.empty(2, 3, T, 3, 3)
        for t in range(T):
            if order == 0:
                ref[:, :, t] = x[:, :, t]
            elif order == 1:
                ref[:, :, t] = x[:, :, t + 1] - x[:, :, t]
            else:
                ref[:, :, t] = x[:, :, t + 2] - 2 * x[:, :, t + 1] + x[:, :, t]
        out = derivative(x, order, T)
        assert out.shape == (2, 3, T, 3, 3)
        torch.testing.assert_close(out, ref)


def test_order0_is_a_copy_not_a_view():
    x = torch.zeros(1, 3, 4, 2, 2)
    d = derivative(x, 0, 4)
    d += 1
    assert x.abs().sum() == 0


def test_static_clip_has_zero_d1_and_d2():
    frame = torch.rand(2, 3, 1, 6, 6)
    x = frame.expand(2, 3, 10, 6, 6).contiguous()
    for order in (1, 2):
        d = derivative(x, order, 8)
        assert d.shape == (2, 3, 8, 6, 6)
        assert torch.count_nonzero(d) == 0
    # per-clip standardisation of an all-zero derivative must stay finite (eps)
    assert torch.count_nonzero(derivative_view(x, 1, 8, "per_clip")) == 0


def test_per_clip_standardises_each_sample_and_removes_speed():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 10, 5, 5, generator=g) * torch.tensor([0.1, 1.0, 7.0]).view(3, 1, 1, 1, 1) + 2.0
    for order in (0, 1, 2):
        v = derivative_view(x, order, 8, "per_clip").numpy().astype(np.float64)
        for i in range(3):
            sample = v[i].ravel()
            assert abs(sample.mean()) < 1e-5
            assert abs(sample.std() - 1.0) < 1e-3
    # doubling the motion amplitude (a "faster" clip) leaves the per-clip view unchanged ...
    v1 = derivative_view(x, 1, 8, "per_clip")
    torch.testing.assert_close(derivative_view(2 * x, 1, 8, "per_clip"), v1, atol=1e-3, rtol=1e-3)  # up to eps
    # ... while dataset scaling keeps the factor 2
    sigma = (0.5, 0.25, 0.125)
    torch.testing.assert_close(
        derivative_view(2 * x, 1, 8, "dataset", sigma), 2 * derivative_view(x, 1, 8, "dataset", sigma)
    )


def test_dataset_scaling_divides_each_order_by_its_sigma_and_none_leaves_it():
    x = torch.randn(2, 3, 6, 4, 4)
    sigma = [0.5, 0.25, 0.125]
    for order in (0, 1, 2):
        raw = derivative(x, order, 4)
        torch.testing.assert_close(derivative_view(x, order, 4, "dataset", sigma), raw / sigma[order])
        torch.testing.assert_close(derivative_view(x, order, 4, "dataset", torch.tensor(sigma)), raw / sigma[order])
        torch.testing.assert_close(derivative_view(x, order, 4, "none"), raw)


def test_to_float_centres_with_the_channel_mean():
    clips = torch.zeros(1, 3, 2, 1, 1, dtype=torch.uint8)
    clips[0, 0] = 255
    clips[0, 1] = 51
    out = to_float(clips, [0.5, 0.4, 0.0])
    assert out.dtype == torch.float32
    expected = torch.tensor([0.5, 0.2 - 0.4, 0.0]).view(1, 3, 1, 1, 1).expand(1, 3, 2, 1, 1)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda x: derivative(x, 2, 7), VididiError),  # needs 9 frames, has 8
        (lambda x: derivative(x[0], 1, 4), ValueError),  # missing batch dim
        (lambda x: derivative((x * 100).to(torch.uint8), 1, 4), ValueError),  # wraps around
        (lambda x: derivative(x, 3, 4), VididiError),
        (lambda x: derivative(x, 1, 0), VididiError),
        (lambda x: derivative_view(x, 1, 4, "global"), VididiError),
        (lambda x: derivative_view(x, 1, 4, "dataset"), VididiError),  # sigma missing
        (lambda x: derivative_view(x, 1, 4, "dataset", [1.0, 0.0, 1.0]), VididiError),
        (lambda x: derivative_view(x, 1, 4, "dataset", [1.0, 1.0]), VididiError),
        (lambda x: to_float(x, [0, 0, 0]), ValueError),  # float input
        (lambda x: to_float((x * 0).to(torch.uint8), [0, 0]), VididiError),  # 3 channels, 2 means
    ],
)
def test_bad_inputs_raise_readable_errors(call, error):
    x = torch.rand(2, 3, 8, 4, 4)
    with pytest.raises(error):
        call(x)


def test_short_clip_error_names_the_lengths():
    with pytest.raises(VididiError, match="at least 9 frames, got 8"):
        derivative(torch.rand(1, 3, 8, 2, 2), 2, 7)


def test_measure_sigma_matches_numpy_over_all_clips():
    g = torch.Generator().manual_seed(2)
    clips = torch.randn(6, 3, 10, 4, 4, generator=g) * 0.3 + torch.linspace(0, 1, 10).view(1, 1, 10, 1, 1)
    T = 7
    arr = clips.numpy().astype(np.float64)
    ref = (
        arr[:, :, :T].std(),
        np.diff(arr, n=1, axis=2)[:, :, :T].std(),
        np.diff(arr, n=2, axis=2)[:, :, :T].std(),
    )
    whole = measure_sigma(clips, T)
    np.testing.assert_allclose(whole, ref, rtol=1e-10)
    # split into uneven batches and single clips: same numbers
    np.testing.assert_allclose(measure_sigma([clips[:1], clips[1:4], clips[4:]], T), ref, rtol=1e-10)
    np.testing.assert_allclose(measure_sigma(iter(list(clips)), T), ref, rtol=1e-10)


def test_measure_sigma_rejects_static_or_empty_samples():
    static = torch.rand(2, 3, 1, 4, 4).expand(2, 3, 10, 4, 4)
    with pytest.raises(VididiError, match="D1"):
        measure_sigma(static, 8)
    with pytest.raises(VididiError, match="no clips"):
        measure_sigma([], 8)
