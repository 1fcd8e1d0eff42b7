"""`vididi features` (vididi/stages/features.py) on the tiny synthetic dataset, on CPU.

What is checked, and against what:
- `FrameEncoder.inputs` is order 0: (clip / 255 - mean[c]) / sigma_0, written out by hand;
- `recalibrate_batchnorm` on a toy conv/BN encoder: running mean / var = the plain average over the
  batches of each batch's per-channel mean / unbiased variance, computed by hand in float64 (the second
  BN's input through the first BN in train mode); momenta restored and eval mode, also on error;
- `prepare_encoder` on a trained ViDiDi run: recalibrates on order-0 clips of TRAIN videos (the stem BN's
  statistics equal a hand computation from hand-cut clips), records the clip count; with
  `bn_recalibration: false` the as-trained statistics of the checkpoint stay bit for bit;
- `extract_features`: train/test features (N, D) with labels and video ids of the index's split, each
  the mean over K uniformly spaced centre crops encoded by hand; sliding windows of the untrimmed videos
  with their subset, covering each video from 0 to its duration, features of hand-cut windows;
- `read_features` returns exactly what the file holds; a missing file is a one-line VididiError.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from vididi.config import expand_runs
from vididi.data.shards import FrameReader
from vididi.layout import read_features, run_dir
from vididi.ssl.encoder import FrameEncoder, prepare_encoder, recalibrate_batchnorm
from vididi.stages.features import main as extract_features
from vididi.stages.pretrain import main as pretrain
from vididi.utils import VididiError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DS = "synthetic"




def make_config(workdir, tiny_data, **overrides) -> dict:
    """The tiny config training one ViDiDi run (BN sees orders 0/1/2) over the shared tiny data."""
    from conftest import tiny_config
    from vididi.config import deep_update

    base = {
        "data_dir": tiny_data[0]["data_dir"],
        "device": "cpu",
        "threads": 1,
        "runs": [{"dataset": DS, "framework": "vicreg", "variant": "vididi", "backbone": "small3d", "seed": 0}],
        "pretrain": {"steps": 3, "num_workers": 0},
    }
    return tiny_config(workdir, **deep_update(base, overrides))


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """(config, run, index, features path): one tiny ViDiDi run and its features on the tiny dataset."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = make_config(tmp_path_factory.mktemp("features"), tiny_data)
    (run,) = expand_runs(config)
    pretrain(config, run)
    path = extract_features(config, run, DS)
    torch.set_num_threads(threads)
    return config, run, tiny_data[1], path


# ------------------------------------------------------------------------------------------------
# hand-made references


def hand_inputs(clip: torch.Tensor, stats: dict) -> torch.Tensor:
    """(3, T, S, S) uint8 -> float (1, 3, T, S, S): centred by the dataset mean, divided by sigma_0."""
    mean = torch.tensor(stats["mean"], dtype=torch.float64).view(3, 1, 1, 1)
    return ((clip.double() / 255.0 - mean) / stats["sigma"][0]).float()[None]


def hand_clip(reader: FrameReader, index, video: int, start: int, clips_cfg: dict) -> torch.Tensor:
    """T frames at the clip stride from `start` (the last frame repeated past the end), centre crop."""
    n = int(index.n_frames[video])
    frames = [min(start + clips_cfg["stride"] * t, n - 1) for t in range(clips_cfg["frames"])]
    x = reader.read(video, np.array(frames))  # (T, 3, H, W)
    h, w = x.shape[-2:]
    size = clips_cfg["size"]
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, :, top : top + size, left : left + size].permute(1, 0, 2, 3)


def hand_uniform_starts(n: int, clips_cfg: dict) -> list[int]:
    """K starts spread evenly from 0 to the last start whose clip still fits."""
    span = (clips_cfg["frames"] - 1) * clips_cfg["stride"] + 1
    k = clips_cfg["eval_clips"]
    last = max(0, n - span)
    return [round(last * i / (k - 1)) for i in range(k)] if k > 1 else [0]


# ------------------------------------------------------------------------------------------------
# FrameEncoder and recalibrate_batchnorm on a toy encoder


def test_frame_encoder_inputs_are_centred_frames_scaled_by_sigma0():
    stats = {"mean": [0.4, 0.5, 0.6], "sigma": [0.2, 0.1, 0.05]}
    clips = torch.randint(0, 256, (2, 3, 5, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    frame_encoder = FrameEncoder(nn.Identity(), stats, "dataset", torch.device("cpu"))
    got = frame_encoder.inputs(clips)
    assert got.shape == (2, 3, 5, 6, 6)  # all frames, no derivative taken
    for c, mean in enumerate(stats["mean"]):
        expected = (clips[:, c].double() / 255 - mean) / 0.2
        torch.testing.assert_close(got[:, c].double(), expected, atol=1e-6, rtol=0)


class Toy(nn.Module):
    """conv 1x1x1 -> BN (momentum 0.3) -> ReLU -> conv 1x1x1 -> BN (default momentum) -> pool."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv3d(3, 4, 1)
        self.bn1 = nn.BatchNorm3d(4, momentum=0.3)
        self.conv2 = nn.Conv3d(4, 2, 1)
        self.bn2 = nn.BatchNorm3d(2)
        with torch.no_grad():
            self.bn1.weight.copy_(torch.tensor([0.5, 2.0, 1.0, 1.5]))
            self.bn1.bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0]))
            for bn in (self.bn1, self.bn2):  # stale statistics that must be forgotten
                bn.running_mean.fill_(7.0)
                bn.running_var.fill_(9.0)
                bn.num_batches_tracked.fill_(50)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))).mean(dim=(2, 3, 4))


def hand_bn_statistics(toy: Toy, batches: list[torch.Tensor], stats: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per BN: (mean over batches of the batch mean, mean over batches of the unbiased batch variance)."""

    def conv1x1(x: np.ndarray, conv: nn.Conv3d) -> np.ndarray:  # x (N, C, T, H, W)
        w = conv.weight.detach().double().numpy()[:, :, 0, 0, 0]
        return np.einsum("oc,nc...->no...", w, x) + conv.bias.detach().double().numpy()[None, :, None, None, None]

    def moments(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        per_channel = np.moveaxis(y, 1, 0).reshape(y.shape[1], -1)
        return per_channel.mean(axis=1), per_channel.var(axis=1, ddof=0), per_channel.var(axis=1, ddof=1)

    means1, vars1, means2, vars2 = [], [], [], []
    for clips in batches:
        x = hand_inputs_batch(clips, stats)
        y1 = conv1x1(x, toy.conv1)
        m1, biased1, unbiased1 = moments(y1)
        gamma, beta = toy.bn1.weight.detach().double().numpy(), toy.bn1.bias.detach().double().numpy()
        shape = (1, -1, 1, 1, 1)
        h = np.maximum(0, (y1 - m1.reshape(shape)) / np.sqrt(biased1.reshape(shape) + toy.bn1.eps) * gamma.reshape(shape) + beta.reshape(shape))
        m2, _, unbiased2 = moments(conv1x1(h, toy.conv2))
        means1.append(m1)
        vars1.append(unbiased1)
        means2.append(m2)
        vars2.append(unbiased2)
    return {"bn1": (np.mean(means1, 0), np.mean(vars1, 0)), "bn2": (np.mean(means2, 0), np.mean(vars2, 0))}


def hand_inputs_batch(clips: torch.Tensor, stats: dict) -> np.ndarray:
    mean = np.asarray(stats["mean"]).reshape(1, 3, 1, 1, 1)
    return (clips.double().numpy() / 255.0 - mean) / stats["sigma"][0]


def test_recalibrate_batchnorm_is_the_plain_average_over_batches():
    stats = {"mean": [0.45, 0.4, 0.35], "sigma": [0.2, 0.1, 0.15]}
    gen = torch.Generator().manual_seed(1)
    clips = [torch.randint(0, 256, (2, 3, 3, 4, 4), dtype=torch.uint8, generator=gen) for _ in range(3)]
    clips[1] = (clips[1].int() // 2 + 100).to(torch.uint8)  # batches with different statistics
    # the loader's shapes: (B, 3, T, S, S) windows and (B, K, 3, T, S, S) videos of K clips, plus labels etc.
    batches = [(clips[0], torch.zeros(2)), (clips[1].view(1, 2, 3, 3, 4, 4), torch.zeros(1), torch.zeros(1)), (clips[2],)]
    toy = Toy()
    expected = hand_bn_statistics(toy, clips, stats)
    toy.train()
    seen = recalibrate_batchnorm(FrameEncoder(toy, stats, "dataset", torch.device("cpu")), batches)
    assert seen == 6
    for name in ("bn1", "bn2"):
        bn = getattr(toy, name)
        np.testing.assert_allclose(bn.running_mean.double().numpy(), expected[name][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn.running_var.double().numpy(), expected[name][1], rtol=1e-5, atol=1e-6)
    assert (toy.bn1.momentum, toy.bn2.momentum) == (0.3, 0.1)
    assert not any(m.training for m in toy.modules())


def test_recalibrate_batchnorm_restores_momentum_and_eval_mode_on_error():
    toy = Toy()
    stats = {"mean": [0.5, 0.5, 0.5], "sigma": [0.2, 0.1, 0.1]}

    def failing_batches():
        yield (torch.zeros(2, 3, 3, 4, 4, dtype=torch.uint8),)
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError, match="reader died"):
        recalibrate_batchnorm(FrameEncoder(toy, stats, "dataset", torch.device("cpu")), failing_batches())
    assert (toy.bn1.momentum, toy.bn2.momentum) == (0.3, 0.1)
    assert not any(m.training for m in toy.modules())


# ------------------------------------------------------------------------------------------------
# prepare_encoder on a trained run


def checkpoint_buffers(config, run) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir(config, run) / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    return {k: v for k, v in state["encoder"].items() if k.endswith(("running_mean", "running_var"))}


def test_prepare_encoder_recalibrates_on_order0_train_clips(trained, monkeypatch):
    import vididi.ssl.encoder as features_module

    config, run, index, _ = trained
    chosen = []
    real_eval_clips = features_module.EvalClips

    def spy(index_, videos, clips_cfg, **kwargs):
        chosen.append((np.asarray(videos).copy(), kwargs.get("k")))
        return real_eval_clips(index_, videos, clips_cfg, **kwargs)

    monkeypatch.setattr(features_module, "EvalClips", spy)
    frame_encoder, note = prepare_encoder(config, run, torch.device("cpu"))
    clips_cfg = config["datasets"][DS]["clips"]
    k = clips_cfg["eval_clips"]
    # ceil(8 clips asked / K=2 clips per video) = 4 training videos, K clips each
    n_videos = math.ceil(config["evaluation"]["bn_recalibration_clips"] / k)
    assert note["bn_recalibrated"] is True
    assert note["bn_recalibration_clips"] == n_videos * k == 8
    assert note["scaling"] == "dataset"
    assert note["checkpoint"] == str(run_dir(config, run) / "checkpoints" / "final.pt")
    (videos, k_used), = chosen
    train = set(index.select("train").tolist())
    assert len(videos) == n_videos and set(videos.tolist()) <= train and k_used == k
    encoder = frame_encoder.encoder
    assert not any(m.training for m in encoder.modules())
    assert all(m.momentum == 0.1 for m in encoder.modules() if isinstance(m, nn.BatchNorm3d))

    # The stem BN's statistics, from hand-cut order-0 clips of those videos: the loader batches
    # max(1, batch_size // K) = 2 videos (4 clips) at a time, each batch weighing the same.
    reader = FrameReader(index)
    stem_conv = encoder.stem[0]
    batch_means, batch_vars = [], []
    per_batch = max(1, config["evaluation"]["batch_size"] // k)
    for first in range(0, len(videos), per_batch):
        clips = [hand_clip(reader, index, int(v), s, clips_cfg) for v in videos[first : first + per_batch]
                 for s in hand_uniform_starts(int(index.n_frames[v]), clips_cfg)]  # fmt: skip
        x = torch.cat([hand_inputs(c, index.stats) for c in clips])
        y = torch.nn.functional.conv3d(x.double(), stem_conv.weight.double(), stride=stem_conv.stride, padding=stem_conv.padding)
        per_channel = y.transpose(0, 1).flatten(1)
        batch_means.append(per_channel.mean(dim=1))
        batch_vars.append(per_channel.var(dim=1, correction=1))
    reader.close()
    stem_bn = encoder.stem[1]
    torch.testing.assert_close(stem_bn.running_mean.double(), torch.stack(batch_means).mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stem_bn.running_var.double(), torch.stack(batch_vars).mean(0), rtol=1e-4, atol=1e-5)
    # and they are not the as-trained statistics (accumulated over orders 0, 1, 2)
    trained_stats = checkpoint_buffers(config, run)
    assert not torch.allclose(stem_bn.running_var, trained_stats["stem.1.running_var"])


def test_prepare_encoder_without_recalibration_keeps_trained_statistics(trained):
    from vididi.config import deep_update, resolve

    config, run, _, _ = trained
    config = resolve(deep_update(config, {"evaluation": {"bn_recalibration": False}}))
    frame_encoder, note = prepare_encoder(config, run, torch.device("cpu"))
    assert note["bn_recalibrated"] is False and note["bn_recalibration_clips"] == 0
    state = frame_encoder.encoder.state_dict()
    buffers = checkpoint_buffers(config, run)
    assert len(buffers) == 2 * sum(isinstance(m, nn.BatchNorm3d) for m in frame_encoder.encoder.modules())
    for name, value in buffers.items():
        assert torch.equal(state[name], value), name
    assert not frame_encoder.encoder.training


# ------------------------------------------------------------------------------------------------
# extract_features


def test_video_features_are_the_mean_over_k_centre_crops(trained):
    config, run, index, path = trained
    clips_cfg = config["datasets"][DS]["clips"]
    with h5py.File(path, "r") as h5:
        groups = {s: {k: h5[s][k][()] for k in ("features", "labels", "video_ids")} for s in ("train", "test")}
        attrs = dict(h5.attrs)
    for subset, group in groups.items():
        videos = index.select(subset)
        assert group["features"].shape == (len(videos), 16) and group["features"].dtype == np.float32
        np.testing.assert_array_equal(group["labels"], index.label[videos])
        assert [v.decode() for v in group["video_ids"]] == list(index.video_id[videos])
    assert len(groups["train"]["labels"]) == 16 and len(groups["test"]["labels"]) == 8  # 4 classes x 2 groups x 2 clips; 1 group
    assert attrs["bn_recalibrated"] and attrs["eval_clips"] == 2 and attrs["feature_dim"] == 16

    frame_encoder, _ = prepare_encoder(config, run, torch.device("cpu"))  # same seeded recalibration
    reader = FrameReader(index)
    for subset, rows in (("train", [0, 7]), ("test", [0, 5])):
        videos = index.select(subset)
        for row in rows:
            video = int(videos[row])
            starts = hand_uniform_starts(int(index.n_frames[video]), clips_cfg)
            assert starts == [0, 17]  # 24 frames, a clip spans 7
            with torch.no_grad():
                encoded = [frame_encoder.encoder(hand_inputs(hand_clip(reader, index, video, s, clips_cfg), index.stats)) for s in starts]
            expected = torch.cat(encoded).mean(0).numpy()
            np.testing.assert_allclose(groups[subset]["features"][row], expected, rtol=1e-4, atol=1e-5)
    reader.close()


def test_windows_cover_each_untrimmed_video(trained):
    config, run, index, path = trained
    clips_cfg = config["datasets"][DS]["clips"]
    with h5py.File(path, "r") as h5:
        w = {k: h5["windows"][k][()] for k in h5["windows"]}
    ids = w["video_ids"].astype(str)
    subsets = w["subset"].astype(str)
    assert w["features"].shape == (len(ids), 16)
    span, step = 7, 4  # (4 - 1) * 2 + 1 frames; window_step 0.5 of 7 rounds to 4
    expected_subset = {index.video_id[v]: s for s in ("train", "test") for v in index.select(s, untrimmed=True)}
    assert set(ids) == set(expected_subset) and len(expected_subset) == 4
    for video_id, subset in expected_subset.items():
        video = int(np.flatnonzero(index.video_id == video_id)[0])
        n, fps = int(index.n_frames[video]), float(index.fps[video])
        rows = np.flatnonzero(ids == video_id)
        assert set(subsets[rows]) == {subset}
        starts, ends = w["start"][rows], w["end"][rows]
        order = np.argsort(starts)
        starts, ends = starts[order], ends[order]
        # windows 0, 4, ..., 56 and one flush with the end (57): 16 for a 64-frame video
        assert len(rows) == len(range(0, n - span + 1, step)) + ((n - span) % step != 0) == 16
        assert starts[0] == 0 and ends[-1] == pytest.approx(n / fps)
        np.testing.assert_allclose(ends - starts, span / fps)
        assert np.all(np.diff(starts) > 0) and np.all(np.diff(starts) <= step / fps + 1e-9)
        assert np.all(ends <= n / fps + 1e-9)

    # window features are order-0 features of hand-cut clips
    frame_encoder, _ = prepare_encoder(config, run, torch.device("cpu"))
    reader = FrameReader(index)
    for row in (0, len(ids) - 1):
        video = int(np.flatnonzero(index.video_id == ids[row])[0])
        start_frame = int(round(w["start"][row] * index.fps[video]))
        with torch.no_grad():
            expected = frame_encoder.encoder(hand_inputs(hand_clip(reader, index, video, start_frame, clips_cfg), index.stats))[0]
        np.testing.assert_allclose(w["features"][row], expected.numpy(), rtol=1e-4, atol=1e-5)
    reader.close()


def test_read_features_round_trip(trained, tmp_path):
    _, _, index, path = trained
    got = read_features(path)
    assert got["classes"] == index.classes
    with h5py.File(path, "r") as h5:
        assert set(got) == {"attrs", "classes", "train", "test", "windows"}
        assert got["attrs"].keys() == h5.attrs.keys()
        for name in ("train", "test", "windows"):
            assert got[name].keys() == h5[name].keys()
            for key, value in got[name].items():
                stored = h5[name][key][()]
                if key in ("video_ids", "subset"):
                    assert value.dtype.kind == "U" and list(value) == [s.decode() for s in stored]
                else:
                    np.testing.assert_array_equal(value, stored)
    missing = tmp_path / "nope.h5"
    with pytest.raises(VididiError) as err:
        read_features(missing)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
