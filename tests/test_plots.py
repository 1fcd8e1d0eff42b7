"""Tests for vididi.plots: every figure renders to a non-blank PNG of the documented pixel size."""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pytest
from PIL import Image

from vididi import plots
from vididi.utils import VididiError


def _check_png(paths, tmp_path, name, width_in, height_in):
    """PNG of exactly 200 px per documented inch, not blank; PDF next to it; no temp files left."""
    png, pdf = paths
    assert png == tmp_path / f"{name}.png" and pdf == tmp_path / f"{name}.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    image = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    assert image.shape[:2] == (round(height_in * 200), round(width_in * 200))
    assert image.std() > 0
    assert (image < 250).any(axis=-1).mean() > 0.01  # more than a few stray non-white pixels
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _moving_square_clips(n=2, t=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    clips = np.full((n, 3, t, size, size), 0.2) + rng.uniform(0, 0.05, (n, 3, t, size, size))
    for v in range(n):
        for k in range(t):
            clips[v, :, k, 4:9, k + v : k + v + 5] = [[[0.9]], [[0.6]], [[0.1]]]
    return clips


def test_style_is_scoped_and_save_figure_rejects_a_suffix(tmp_path):
    before = mpl.rcParams["font.size"]
    with plots.use_style():
        assert mpl.rcParams["font.size"] == plots.STYLE["font.size"]
        assert mpl.rcParams["axes.spines.top"] is False
    assert mpl.rcParams["font.size"] == before
    fig = plots.bars_figure([{"framework": "vicreg", "variant": "base", "m": 0.5}], ["m"])
    with pytest.raises(VididiError, match="without suffix"):
        plots.save_figure(fig, tmp_path / "bars.png")


def test_derivative_views_figure(tmp_path):
    clips = _moving_square_clips(n=2, t=6)  # T + 2 = 6 -> T = 4 time steps per order
    fig = plots.derivative_views_figure(clips, ["video a", "video b"], frames_to_show=8)
    # 4 columns (only 4 steps exist): 0.75 * 4 + 1.0 = 4.0 in wide; 0.75 * 3 * 2 + 0.5 = 5.0 in tall
    _check_png(plots.save_figure(fig, tmp_path / "deriv"), tmp_path, "deriv", 4.0, 5.0)
    # Axes are added video by video, row by row, column by column; then the colour bar.
    assert len(fig.axes) == 2 * 3 * 4 + 1
    d1_image = fig.axes[4 + 1].images[0]  # video 0, row 1 (1st derivative), column 1 (t = 1)
    expected = np.zeros((16, 16))
    for c in range(3):
        expected += (clips[0, c, 2] - clips[0, c, 1]) / 3
    np.testing.assert_allclose(d1_image.get_array(), expected, atol=1e-12)
    d2_image = fig.axes[8 + 2].images[0]  # video 0, row 2 (2nd derivative), column 2
    expected = sum(clips[0, c, 4] - 2 * clips[0, c, 3] + clips[0, c, 2] for c in range(3)) / 3
    np.testing.assert_allclose(d2_image.get_array(), expected, atol=1e-12)
    assert d1_image.norm.vmin == -d1_image.norm.vmax == d2_image.norm.vmin
    assert d1_image.get_cmap().name == "RdBu_r"


def test_derivative_views_figure_rejects_bad_input():
    with pytest.raises(VididiError, match=r"\[0, 1\]"):
        plots.derivative_views_figure(_moving_square_clips() * 255, ["a", "b"])
    with pytest.raises(VididiError, match="names"):
        plots.derivative_views_figure(_moving_square_clips(), ["a"])


def test_tsne_figure(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([4, 1, 7], 10)
    panels = [
        ("VICReg", rng.normal(size=(30, 2)), labels, 0.1234),
        ("ViDiDi-VIC", rng.normal(size=(30, 2)) + labels[:, None], labels, 0.5),
    ]
    names = {1: "Biking", 4: "Diving", 7: "Surfing"}
    fig = plots.tsne_figure(panels, names)
    _check_png(plots.save_figure(fig, tmp_path / "tsne"), tmp_path, "tsne", 3.0 * 2 + 1.5, 3.25)
    assert fig.axes[0].get_title() == "VICReg\nsilhouette = 0.123"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Biking", "Diving", "Surfing"]
    # the same class has the same colour in both panels
    left, right = (ax.collections for ax in fig.axes)
    for a, b in zip(left, right):
        np.testing.assert_array_equal(a.get_facecolor(), b.get_facecolor())
    with pytest.raises(VididiError, match=r"no entry for classes \[7\]"):
        plots.tsne_figure(panels, {1: "Biking", 4: "Diving"})


def test_attention_figure(tmp_path):
    frames = _moving_square_clips(n=2, t=5)
    cams = {
        "VICReg": np.random.default_rng(0).random((2, 5, 16, 16)) * 3,
        "ViDiDi-VIC": frames[:, 0] * 0.01,
    }
    fig = plots.attention_figure(frames, cams, frames_to_show=3, names=["a", "b"])
    # 3 columns: 0.75 * 3 + 1.0 = 3.25 in; rows 2 videos x (1 + 2 models): 0.75 * 6 + 0.5 = 5.0 in
    _check_png(plots.save_figure(fig, tmp_path / "attn"), tmp_path, "attn", 3.25, 5.0)
    # row 1 of video 0 = first model, column 0 (t = 0): grey frame + overlay scaled to the clip's max
    grey_image, overlay = fig.axes[3].images
    expected_grey = 0.299 * frames[0, 0, 0] + 0.587 * frames[0, 1, 0] + 0.114 * frames[0, 2, 0]
    np.testing.assert_allclose(grey_image.get_array(), expected_grey, atol=1e-12)
    np.testing.assert_allclose(overlay.get_array(), cams["VICReg"][0, 0] / cams["VICReg"][0].max(), atol=1e-12)
    assert fig.axes[3].get_ylabel() == "VICReg" and fig.axes[6].get_ylabel() == "ViDiDi-VIC"
    with pytest.raises(VididiError, match="upsampled"):
        plots.attention_figure(frames, {"VICReg": np.ones((2, 5, 4, 4))})


def test_curves_figure(tmp_path):
    steps = np.arange(0, 100, 5)
    decay = np.exp(-steps / 50)
    logs = {
        ("vicreg", "base"): {"step": steps, "loss": 20 * decay, "invariance": 5 * decay, "variance": 10 * decay},
        ("vicreg", "vididi"): {"step": steps, "loss": 22 * decay, "invariance": 6 * decay, "variance": 9 * decay},
        ("simclr", "base"): {"step": steps, "loss": 5 * decay},
        ("simclr", "vididi"): {"step": steps, "loss": 6 * decay},
    }
    fig = plots.curves_figure(logs, smooth_window=3)
    _check_png(plots.save_figure(fig, tmp_path / "curves"), tmp_path, "curves", 3.0 * 2 + 1.5, 2.5)
    simclr, vicreg = fig.axes  # panels in the canonical framework order
    assert simclr.get_title() == "SimCLR" and vicreg.get_title() == "VICReg"
    styles = [(line.get_linestyle(), mpl.colors.to_hex(line.get_color())) for line in vicreg.lines]
    blue, orange = (c.lower() for c in plots.PALETTE[:2])
    # base first (dashed), then vididi (solid); loss black, then terms in palette order
    assert styles == [
        ("--", "#000000"), ("--", blue), ("--", orange),
        ("-", "#000000"), ("-", blue), ("-", orange),
    ]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["loss", "invariance", "variance", "baseline", "ViDiDi"]
    # trailing mean over 3 points, aligned with the window's last step
    xs, ys = vicreg.lines[0].get_data()
    np.testing.assert_allclose(xs, steps[2:])
    np.testing.assert_allclose(ys, [(20 * decay[i - 2] + 20 * decay[i - 1] + 20 * decay[i]) / 3 for i in range(2, 20)])
    with pytest.raises(VididiError, match="tuples"):
        plots.curves_figure({"vicreg-base": logs[("vicreg", "base")]})


def test_curves_figure_draws_the_knn_monitor_in_a_second_row(tmp_path):
    steps = np.arange(0, 100, 5)
    logs = {("byol", "base"): {"step": steps, "loss": np.exp(-steps / 50)},
            ("byol", "vididi"): {"step": steps, "loss": np.exp(-steps / 40)}}  # fmt: skip
    monitor = {("byol", "vididi"): (np.array([24, 49, 99]), np.array([0.1, 0.3, 0.55]))}
    fig = plots.curves_figure(logs, smooth_window=3, monitor=monitor)
    _check_png(plots.save_figure(fig, tmp_path / "curves"), tmp_path, "curves", 3.0 + 1.5, 5.0)
    loss_panel, monitor_panel = fig.axes
    assert len(loss_panel.lines) == 2 and monitor_panel.get_ylabel() == "kNN monitor R@1 (%)"
    (line,) = monitor_panel.lines  # unsmoothed, in %, with the ViDiDi line style
    xs, ys = line.get_data()
    np.testing.assert_allclose(xs, [24, 49, 99])
    np.testing.assert_allclose(ys, [10, 30, 55])
    assert line.get_linestyle() == "-"
    # no monitor values: the one-row figure of before
    assert len(plots.curves_figure(logs, monitor={}).axes) == 1


def test_bars_figure(tmp_path):
    rows = [
        {"framework": "vicreg", "variant": "vididi", "seed": 0, "recall@1": 0.5, "map": None},
        {"framework": "vicreg", "variant": "vididi", "seed": 1, "recall@1": 0.7, "map": None},
        {"framework": "vicreg", "variant": "base", "seed": 0, "recall@1": 0.3, "map": 0.2},
        {"framework": "byol", "variant": "base", "seed": 0, "recall@1": 0.25, "map": 0.1},
        {"framework": "byol", "variant": "vididi", "seed": 0, "recall@1": 0.35, "map": 0.15},
    ]
    fig = plots.bars_figure(rows, ["recall@1", "map"], {"recall@1": "Recall@1"})
    # 2 metrics x (0.75 * 2 frameworks + 0.75) = 4.5 in wide, 2.75 in tall
    _check_png(plots.save_figure(fig, tmp_path / "bars"), tmp_path, "bars", 4.5, 2.75)
    recall, mean_ap = fig.axes
    assert recall.get_title() == "Recall@1" and mean_ap.get_title() == "map"
    # bars drawn variant by variant (base, vididi), framework by framework (byol, vicreg)
    heights = [round(p.get_height(), 9) for p in recall.patches]
    assert heights == [0.25, 0.3, 0.35, 0.6]
    # one error bar (two seeds): sample std of 0.5, 0.7 = 0.1414...
    (segments,) = [c.get_segments() for c in recall.collections if len(c.get_segments())]
    (low, high) = segments[0][:, 1]
    assert (high - low) / 2 == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert "n/a" in [t.get_text() for t in mean_ap.texts]
    broken = rows + [{"framework": "byol", "variant": "base", "seed": 1}]
    with pytest.raises(VididiError, match="1 of 2 runs lack 'recall@1'"):
        plots.bars_figure(broken, ["recall@1"])
