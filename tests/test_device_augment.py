"""The device augmentation path (`pretrain.augment_on: device`, vididi/data/device_augment.py) against
the loader path, on the CPU through the device path's own code (device="cpu").

Tolerances, and why they hold on any CPU:
- resize weights: the matmul resize against float64 `F.interpolate` of the same crop. Both are the
  same weighted sums; the device path's weights and sums are float32, so the error is at most a few
  float32 roundings of sums of <= 2 * scale + 2 terms of values <= 255: < 1e-3 grey levels.
- clips before the colour map: the loader's uint8 resize works axis by axis with fixed-point weights
  and rounds after each axis, so it lies within 0.5 + 0.5 (+ the fixed-point error, far below 0.5)
  grey levels of the exact resize (checked below); the device path rounds the exact resize once
  (within 0.5). Both are whole numbers, so they differ by at most 1 grey level, never more.
- colour maps: M is computed from the same draws (equal to float32 rounding); t depends on the clip's
  mean colour, which moves by at most 1/255 per channel when pixels move by <= 1 grey level, so
  |t_dev - t_loader| <= sum_j |A_ij| / 255 (A: how t depends on the mean), plus float32 rounding.
- where no resize happens (crop = the whole frame = the output size) the clips are equal exactly and
  the training views agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vididi.data.augment import DRAW_SIZE, ClipAugment, apply_colour, draw_clip
from vididi.data.device_augment import DeviceAugment, collate_stored, resample_weights
from vididi.data.loader import StepBatches, TrainClips, loader
from vididi.data.shards import DatasetIndex, FrameReader, ShardWriter
from vididi.ssl.derivatives import derivative_view

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AUGMENT = {
    "crop_scale": [0.3, 1.0], "crop_ratio": [0.6, 1.6], "flip": 0.5, "grayscale": 0.2,
    "color_jitter": {"p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
}  # fmt: skip
CLIPS = {"frames": 4, "stride": 2, "size": 24}
F32 = float(torch.finfo(torch.float32).eps)


def textured_frames(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """Smooth colour gradients plus noise and a moving square: edges and detail at every scale."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    frames = []
    for t in range(n):
        frame = base + rng.normal(0, 20, base.shape)
        top, left = (3 * t) % (height - 8), (5 * t) % (width - 8)
        frame[top : top + 8, left : left + 8] = rng.uniform(0, 255, 3)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)


def make_index(root, encoding: str, sizes: list[tuple[int, int]], n_frames: int = 16) -> DatasetIndex:
    """One shard of videos of the given (height, width), written by the real ShardWriter."""
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with h5py.File(root / "shard-00000.h5", "w") as h5:
        writer = ShardWriter(h5, encoding, jpeg_quality=90)
        for i, (h, w) in enumerate(sizes):
            meta = {"video_id": f"v{i}", "path": f"v{i}", "splits": "1:train", "label": i % 2, "untrimmed": False}
            writer.add_video(meta, textured_frames(rng, n_frames, h, w), h, w, 8.0)
        writer.close()
    n = len(sizes)
    return DatasetIndex(
        root=root, classes=["a", "b"], video_id=np.array([f"v{i}" for i in range(n)], dtype=object),
        shard=np.zeros(n, np.int64), frame_start=np.arange(n, dtype=np.int64) * n_frames,
        n_frames=np.full(n, n_frames, np.int64), height=np.array([s[0] for s in sizes], np.int64),
        width=np.array([s[1] for s in sizes], np.int64), fps=np.full(n, 8.0), label=np.arange(n, dtype=np.int64) % 2,
        untrimmed=np.zeros(n, bool), splits=[{"1": "train"}] * n, info={}, split="1",
    )  # fmt: skip


def both_paths(index: DatasetIndex, augment: dict, batches: int = 3, batch_size: int = 6):
    """The same StepBatches items through both paths: [(loader batch, (device clips, colour maps), draws)]."""
    sampler = StepBatches(np.arange(len(index)), batch_size, seed=0, start_step=0, total_steps=batches)
    on_loader = loader(TrainClips(index, CLIPS, augment), 0, batch_sampler=sampler)
    on_device = loader(TrainClips(index, CLIPS, augment, on="device"), 0, batch_sampler=sampler)
    device_augment = DeviceAugment(CLIPS["size"], "cpu")
    out = []
    for cpu_batch, dev_batch in zip(on_loader, on_device):
        assert dev_batch[2].shape == (batch_size, DRAW_SIZE) and dev_batch[2].dtype == torch.float64
        out.append((cpu_batch, [device_augment(dev_batch[i], dev_batch[i + 2]) for i in (0, 1)], dev_batch))
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Raw and JPEG shards of videos of different sizes (crops shrink and grow; the batch is padded)."""
    root = tmp_path_factory.mktemp("device-augment")
    sizes = [(40, 52), (36, 64), (48, 40), (30, 30)]
    return {enc: make_index(root / enc, enc, sizes) for enc in ("raw", "jpeg")}


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("antialias", [True, False])
def test_resize_weights_are_pytorch_bilinear_of_the_crop(antialias):
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(0, 255, (2, 3, 40, 52)))
    for top, left, ch, cw, size in [(0, 0, 40, 52, 24), (5, 7, 30, 20, 24), (3, 1, 12, 17, 24), (10, 4, 25, 30, 25), (0, 0, 40, 52, 40)]:
        expected = F.interpolate(x[:, :, top : top + ch, left : left + cw], size=(size, size), mode="bilinear",
                                 align_corners=False, antialias=antialias)  # fmt: skip
        aa = torch.tensor([antialias])
        wy = resample_weights(torch.tensor([top]), torch.tensor([ch]), 40, size, aa)[0]
        wx = resample_weights(torch.tensor([left]), torch.tensor([cw]), 52, size, aa)[0]
        got = wy @ x.float() @ wx.T
        assert (got.double() - expected).abs().max() < 1e-3, (top, left, ch, cw, antialias)
        flipped = resample_weights(torch.tensor([left]), torch.tensor([cw]), 52, size, aa, torch.tensor([True]))[0]
        assert torch.equal(wy @ x.float() @ flipped.T, got.flip(-1))


def test_loader_uint8_resize_is_the_rounded_exact_resize():
    """What the 1-grey-level bound rests on: the loader path's uint8 resize is within one grey level of
    the exact resize (two roundings of <= 0.5, through non-negative weights that sum to 1), with a
    margin for its fixed-point weights."""
    rng = np.random.default_rng(2)
    clip = torch.from_numpy(textured_frames(rng, 4, 48, 60)).permute(0, 3, 1, 2)
    for ch, cw in [(48, 60), (30, 40), (20, 18), (48, 20)]:
        crop = clip[:, :, :ch, :cw]
        aa = min(ch, cw) > 24
        got = F.interpolate(crop.contiguous(memory_format=torch.channels_last), size=(24, 24), mode="bilinear",
                            align_corners=False, antialias=aa)  # fmt: skip
        exact = F.interpolate(crop.double(), size=(24, 24), mode="bilinear", align_corners=False, antialias=aa)
        assert (got.double() - exact).abs().max() < 1 + 0.1


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_device_path_gives_the_loader_paths_clips(shards, encoding):
    index = shards[encoding]
    for cpu_batch, device_out, dev_batch in both_paths(index, AUGMENT):
        for i in (0, 1):
            loader_clips, loader_colour = cpu_batch[i], cpu_batch[i + 2]
            clips, colour = device_out[i]
            assert clips.shape == loader_clips.shape and clips.dtype == torch.float32
            difference = (clips - loader_clips.float()).abs()
            assert difference.max() <= 1  # whole grey levels, apart by one at most
            draws = dev_batch[i + 2]
            M, A = draws[:, 5:14].view(-1, 3, 3), draws[:, 14:23].view(-1, 3, 3)
            torch.testing.assert_close(colour[:, :, :3], loader_colour[:, :, :3], rtol=0, atol=4 * F32 * (1 + M.abs().max().item()))
            t_bound = A.abs().sum(dim=2) / 255 + 4 * F32 * (1 + colour[:, :, 3].abs())
            assert ((colour[:, :, 3] - loader_colour[:, :, 3]).abs() <= t_bound.float()).all()


def test_device_path_without_resize_gives_the_same_views(tmp_path):
    """Frames of the output size, crops of the whole frame: nothing to round, so the clips are equal and
    the training views (colour map, centring, every derivative order) agree to float32 rounding."""
    size = CLIPS["size"]
    augment = {**AUGMENT, "crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0]}
    for encoding in ("raw", "jpeg"):
        index = make_index(tmp_path / encoding, encoding, [(size, size)] * 3)
        mean, sigma = torch.tensor([0.4, 0.5, 0.45]), [0.3, 0.05, 0.02]
        for cpu_batch, device_out, _ in both_paths(index, augment, batch_size=4):
            for i in (0, 1):
                clips, colour = device_out[i]
                assert torch.equal(clips, cpu_batch[i].float())
                x_loader = apply_colour(cpu_batch[i], cpu_batch[i + 2], mean)
                x_device = apply_colour(clips, colour, mean)
                for order in (0, 1, 2):
                    a = derivative_view(x_loader, order, CLIPS["frames"], "dataset", sigma)
                    b = derivative_view(x_device, order, CLIPS["frames"], "dataset", sigma)
                    # |x| <= 1 after the map; a 1-ulp change of M or t moves x by <= 4 ulp of 1; an order-k
                    # derivative sums 2^k such differences, then divides by sigma_k
                    bound = 2**order * 4 * 4 * F32 * (1 + colour.abs().max().item()) / sigma[order]
                    assert (a - b).abs().max() <= bound, (encoding, order)


def test_draws_are_the_loader_paths_draws(shards):
    """The worker's draws come from the same random numbers as the loader path's augmentation."""
    index = shards["raw"]
    reader = FrameReader(index)
    clip = reader.read(0, np.arange(6))
    for seed in range(30):
        d = draw_clip(AUGMENT, clip.shape[2], clip.shape[3], np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        ClipAugment(AUGMENT, 24)(clip, rng)
        d_again = draw_clip(AUGMENT, clip.shape[2], clip.shape[3], np.random.default_rng(seed))
        assert d == d_again
        # the loader path consumed exactly the numbers draw_clip consumes
        rng_draw = np.random.default_rng(seed)
        draw_clip(AUGMENT, clip.shape[2], clip.shape[3], rng_draw)
        assert rng.uniform() == rng_draw.uniform()


def test_collate_pads_videos_of_different_sizes(shards):
    data = TrainClips(shards["raw"], CLIPS, AUGMENT, on="device")
    items = [data[(v, (0, 0, v))] for v in range(4)]
    stored, _, draws, _, labels = collate_stored(items)
    assert stored.frames.shape == (4, CLIPS["frames"] + 2, 48, 64, 3)
    assert torch.equal(stored.frames[3, :, :30, :30], items[3][0]) and stored.frames[3, :, 30:].eq(0).all()
    assert labels.tolist() == [0, 1, 0, 1] and draws.shape == (4, DRAW_SIZE)


def test_pretraining_with_device_augmentation_keeps_the_settings_hash(tmp_path, tiny_data):
    from test_train import make_config, only_run, read_log

    from vididi.config import pretrain_settings, settings_hash
    from vididi.ssl.trainer import pretrain

    on_loader = make_config(tmp_path / "a", tiny_data, "vicreg", "vididi", steps=3)
    on_device = make_config(tmp_path / "b", tiny_data, "vicreg", "vididi", steps=3, augment_on="device")
    run = only_run(on_device)
    assert settings_hash(pretrain_settings(on_loader, run)) == settings_hash(pretrain_settings(on_device, run))
    pretrain(on_device, run)
    pretrain(on_loader, run)
    device_loss = [float(r["loss"]) for r in read_log(on_device)]
    loader_loss = [float(r["loss"]) for r in read_log(on_loader)]
    assert len(device_loss) == 3 and all(np.isfinite(device_loss))
    # same data, same draws: the losses agree up to the rounding differences of the clips
    assert np.allclose(device_loss, loader_loss, rtol=0.05)
