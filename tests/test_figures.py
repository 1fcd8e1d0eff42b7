"""The attention stage (vididi/stages/attention.py) and the figures (vididi/stages/figures.py) on two tiny trained runs.

One module fixture runs the stages in process on the shared tiny data: pretrain VICReg base and ViDiDi
(3 steps each), features, retrieval / probe / detection, analysis, summary. Then:
- `object_masks` line up with the frames: their boxes equal the `objects.h5` boxes shifted by the
  centre-crop offset, and the frame-to-frame change is concentrated inside them (the moving sprite);
- `analyse` writes the silhouette of the top classes' test features (classes and score recomputed
  here), an object-attention share in [0, 1], and the attention file holding the middle clips (cut by
  hand), maps and masks of the first test video of each class;
- every figure of `available_figures` is a non-blank PNG of the pixel size its docstring formula gives
  (plots.py: inches x 200 dpi) plus a PDF; a figure whose runs are not configured, or whose inputs
  are missing, is a one-line VididiError.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from vididi.config import available_figures, expand_runs
from vididi.data.shards import FrameReader
from vididi.evaluation.analysis import silhouette
from vididi.layout import raw_dir, run_dir, train_info
from vididi.names import FIGURES, LABEL_FIGURES
from vididi.stages import detection, probe, retrieval
from vididi.stages.attention import main as analyse
from vididi.stages.attention import object_masks
from vididi.stages.features import main as extract_features
from vididi.stages.figures import main as make_figure
from vididi.stages.pretrain import main as pretrain
from vididi.stages.summary import main as write_summary
from vididi.utils import VididiError

DS = "synthetic"
TSNE_CLASSES = 3  # of the 4 classes (2 test videos each): the top 3 are the first 3 by index
FIGURE_VIDEOS = 2  # videos in the attention and derivatives figures (fewer panels: faster)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for torch, BLAS and OpenMP. On 2 cores shared with other jobs, scikit-learn's
    OpenMP t-SNE with 2 spinning threads took 15-60 s instead of 0.1 s (Snakemake's rules run with
    OMP_NUM_THREADS = the rule's threads, 1 for figures)."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipeline(tiny_data, tmp_path_factory):
    """(config, index): both runs of the tiny config through every stage up to the summary."""
    from conftest import tiny_config

    config = tiny_config(tmp_path_factory.mktemp("figures"), data_dir=tiny_data[0]["data_dir"], device="cpu", threads=1,
                         pretrain={"steps": 3},
                         figures={"tsne_classes": TSNE_CLASSES, "attention_videos": FIGURE_VIDEOS, "derivative_videos": FIGURE_VIDEOS})  # fmt: skip
    for run in expand_runs(config):
        pretrain(config, run)
        extract_features(config, run, DS)
        for stage in (retrieval, probe, detection):
            stage.main(config, run, DS)
        analyse(config, run, DS)
    write_summary(config, DS)
    return config, tiny_data[1]


def middle_clip(index, video: int, clips_cfg: dict) -> tuple[np.ndarray, int]:
    """Frame numbers of the clip centred in the video, and the centre-crop offset (square frames)."""
    span = (clips_cfg["frames"] - 1) * clips_cfg["stride"] + 1
    start = (int(index.n_frames[video]) - span) // 2
    offset = (int(index.height[video]) - clips_cfg["size"]) // 2
    return start + clips_cfg["stride"] * np.arange(clips_cfg["frames"]), offset


def first_test_video_per_class(index) -> list[int]:
    chosen = {}
    for video in sorted(index.select("test"), key=lambda v: index.video_id[v]):
        chosen.setdefault(int(index.label[video]), int(video))
    return list(chosen.values())


# ------------------------------------------------------------------------------------------------
# analysis


def test_object_masks_are_aligned_with_the_frames(pipeline):
    config, index = pipeline
    clips_cfg = config["datasets"][DS]["clips"]
    size = clips_cfg["size"]
    reader = FrameReader(index)
    inside, outside = [], []
    with h5py.File(raw_dir(config, DS) / "objects.h5", "r") as objects:
        for video in index.select("test"):
            frames, offset = middle_clip(index, video, clips_cfg)
            assert list(frames) == [8, 10, 12, 14] and offset == 2  # 24 frames, span 7; 32 px cropped to 28
            masks = object_masks(config, DS, index, video, frames, size).numpy()
            assert masks.shape == (4, size, size) and masks.dtype == bool
            boxes = objects[index.video_id[video]]["boxes"][()][frames]
            for mask, (x0, y0, x1, y1) in zip(masks, boxes):
                ys, xs = np.nonzero(mask)
                crop = (max(x0 - offset, 0), max(y0 - offset, 0), min(x1 - offset, size), min(y1 - offset, size))
                if crop[0] >= crop[2] or crop[1] >= crop[3]:
                    assert not mask.any()  # the sprite is outside the crop
                else:
                    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == crop
            pixels = reader.read(video, frames).double().numpy()[:, :, offset : offset + size, offset : offset + size]
            change = np.abs(np.diff(pixels, axis=0)).mean(axis=1)  # (T-1, S, S)
            moving = masks[:-1] | masks[1:]
            inside.append(change[moving])
            outside.append(change[~moving])
    reader.close()
    # the sprite moves (or pulses) inside the masks; outside only sensor noise and compression remain
    assert np.concatenate(inside).mean() > 4 * np.concatenate(outside).mean()


def test_object_masks_are_none_without_synthetic_annotations(pipeline):
    from vididi.config import deep_update, resolve

    config, index = pipeline
    other = resolve(deep_update(config, {"datasets": {DS: {"root": str(raw_dir(config, DS) / "elsewhere")}}}))
    assert object_masks(other, DS, index, int(index.select("test")[0]), np.arange(4), 28) is None


def test_analysis_metrics_and_attention_file(pipeline):
    config, index = pipeline
    clips_cfg = config["datasets"][DS]["clips"]
    reader = FrameReader(index)
    expected_videos = first_test_video_per_class(index)[:FIGURE_VIDEOS]
    assert len(expected_videos) == 2
    for run in expand_runs(config):
        base = run_dir(config, run)
        data = json.loads((base / "metrics" / f"analysis-{DS}.json").read_text())
        with h5py.File(base / "features" / f"{DS}.h5", "r") as h5:
            feats, labels = h5["test"]["features"][()], h5["test"]["labels"][()]
        counts = {c: int((labels == c).sum()) for c in np.unique(labels)}
        top = sorted(counts, key=lambda c: (-counts[c], c))[:TSNE_CLASSES]
        assert top == [0, 1, 2]
        keep = np.isin(labels, top)
        assert data["metrics"]["silhouette"] == pytest.approx(silhouette(feats[keep], labels[keep], metric="cosine"), abs=1e-12)
        assert data["protocol"]["silhouette"]["n"] == 6
        assert data["protocol"]["silhouette"]["classes"] == [index.classes[c] for c in top]
        share = data["metrics"]["object_attention"]
        assert 0.0 <= share <= 1.0 and 0.0 < data["metrics"]["object_attention_uniform"] < 1.0
        # probe-logit maps: a test video without positive evidence for its class has no share
        assert 1 <= data["protocol"]["object_attention"]["n_videos"] <= 8
        assert data["protocol"]["bn_recalibrated"] is True

        with h5py.File(base / "analysis" / f"attention-{DS}.h5", "r") as h5:
            ids = list(h5["video_ids"][()].astype(str))
            clips, cams, masks = h5["clips"][()], h5["cams"][()], h5["masks"][()]
        assert ids == [index.video_id[v] for v in expected_videos]
        assert clips.shape == (2, 3, 4, 28, 28) and clips.dtype == np.uint8
        assert cams.shape == (2, 4, 28, 28) and masks.shape == (2, 4, 28, 28) and masks.dtype == bool
        assert cams.min() >= 0.0 and cams.max() <= 1.0 + 1e-6
        for clip, mask, video in zip(clips, masks, expected_videos):
            frames, offset = middle_clip(index, video, clips_cfg)
            hand = reader.read(video, frames)[:, :, offset : offset + 28, offset : offset + 28].permute(1, 0, 2, 3)
            np.testing.assert_array_equal(clip, hand.numpy())
            np.testing.assert_array_equal(mask, object_masks(config, DS, index, video, frames, 28).numpy())
    reader.close()


def test_analysis_without_test_videos_is_a_one_line_error(pipeline, tmp_path):
    import shutil

    from vididi.config import deep_update, resolve

    config, _ = pipeline
    run = expand_runs(config)[0]
    other = resolve(deep_update(config, {"results_dir": str(tmp_path / "results")}))
    target = run_dir(other, run) / "features" / f"{DS}.h5"
    target.parent.mkdir(parents=True)
    shutil.copy(run_dir(config, run) / "features" / f"{DS}.h5", target)
    with h5py.File(target, "a") as h5:
        del h5["test"]
    with pytest.raises(VididiError) as excinfo:
        analyse(other, run, DS)
    assert "\n" not in str(excinfo.value) and "test" in str(excinfo.value)


# ------------------------------------------------------------------------------------------------
# figures

# Pixel sizes from the size formulas in plots.py (inches, multiples of 1/8) x FIGURE_DPI = 200. The tiny config has
# T = 4 frames per clip (frames_to_show 8 -> 4 columns), FIGURE_VIDEOS = 2, one framework (VICReg), 2 variants.
EXPECTED_PIXELS = {
    "derivatives": (200 * (0.75 * 4 + 1.0), 200 * (0.75 * 3 * 2 + 0.5)),  # 2 videos x (frames, D1, D2)
    "tsne": (200 * (3.0 * 2 + 1.5), 200 * 3.25),  # 2 panels
    "attention": (200 * (0.75 * 4 + 1.0), 200 * (0.75 * 2 * (1 + 2) + 0.5)),  # 2 videos x (frames + 2 models)
    "curves": (200 * (3.0 * 1 + 1.5), 200 * 2.5),  # 1 framework
    "bars": (200 * 3 * 2.0, 200 * 2.75),  # R@1, probe, detection mAP; one framework: 2-inch panels
}


def test_every_figure_is_available_with_both_runs(pipeline):
    config, _ = pipeline
    # every figure but label efficiency, which needs label fractions (tests/test_finetune.py draws it)
    assert available_figures(config, DS) == [f for f in FIGURES if f not in LABEL_FIGURES] == list(EXPECTED_PIXELS)


@pytest.mark.parametrize("name", list(EXPECTED_PIXELS))
def test_figure_is_a_non_blank_png_of_the_documented_size_and_a_pdf(pipeline, name):
    config, _ = pipeline
    png, pdf = make_figure(config, DS, name)
    folder = config["results_dir"] + f"/{DS}/figures/"
    assert (str(png), str(pdf)) == (folder + f"{name}.png", folder + f"{name}.pdf")
    with Image.open(png) as image:
        assert image.size == tuple(round(v) for v in EXPECTED_PIXELS[name])
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10  # not a blank canvas
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, markers, images: many colours
    content = pdf.read_bytes()
    assert content.startswith(b"%PDF") and b"%%EOF" in content[-64:] and len(content) > 2000


def test_comparison_figures_need_both_runs(pipeline):
    from vididi.config import deep_update, resolve

    config, _ = pipeline
    base_only = resolve({**config, "runs": [{"dataset": DS, "framework": "vicreg", "variant": "base", "backbone": "small3d", "seed": 0}]})
    assert available_figures(base_only, DS) == ["derivatives", "curves", "bars"]
    for name in ("tsne", "attention"):
        with pytest.raises(VididiError) as excinfo:
            make_figure(base_only, DS, name)
        message = str(excinfo.value)
        assert "\n" not in message and "vicreg" in message and "'vididi'" in message
    # same runs with another framework for the figures: no comparison either
    simclr = resolve(deep_update(config, {"figures": {"framework": "simclr"}}))
    with pytest.raises(VididiError):
        make_figure(simclr, DS, "tsne")


@pytest.mark.parametrize("name", ["tsne", "attention", "curves", "bars"])  # derivatives: drawn from the data alone
def test_figure_with_missing_inputs_is_a_one_line_error(pipeline, tmp_path, name):
    """The runs are configured but nothing was computed yet in this results dir (data present)."""
    from vididi.config import deep_update, resolve

    config, _ = pipeline
    empty = resolve(deep_update(config, {"results_dir": str(tmp_path / "results")}))
    with pytest.raises(VididiError) as excinfo:
        make_figure(empty, DS, name)
    assert "\n" not in str(excinfo.value)
    assert not (tmp_path / "results" / DS / "figures" / f"{name}.png").exists()


def test_tsne_needs_the_analysis_metrics(pipeline, tmp_path):
    """Features present but the analysis stage not run: a one-line error naming the missing file."""
    import shutil

    from vididi.config import deep_update, resolve

    config, _ = pipeline
    other = resolve(deep_update(config, {"results_dir": str(tmp_path / "results")}))
    for run in expand_runs(config):
        target = run_dir(other, run) / "features" / f"{DS}.h5"
        target.parent.mkdir(parents=True)
        shutil.copy(run_dir(config, run) / "features" / f"{DS}.h5", target)
        shutil.copy(train_info(config, run), train_info(other, run))  # the model's record, which the stage checks
    with pytest.raises(VididiError) as excinfo:
        make_figure(other, DS, "tsne")
    assert "\n" not in str(excinfo.value) and f"analysis-{DS}.json" in str(excinfo.value)
