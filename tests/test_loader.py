"""Clip datasets and samplers over the shards, and the per-clip augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vididi.data.augment import IDENTITY_COLOUR, LUMA, ClipAugment, apply_colour, colour_jitter_map, random_resized_crop_box
from vididi.data.clips import clip_frame_numbers, window_starts
from vididi.data.loader import EvalClips, StepBatches, TrainClips, WindowClips, loader
from vididi.data.shards import FrameReader
from vididi.utils import VididiError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DS = "synthetic"
NO_AUGMENT = {
    "crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip": 0.0, "grayscale": 0.0,
    "color_jitter": {"p": 0.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
}  # fmt: skip




def clips_of(tiny_data) -> dict:
    return tiny_data[0]["datasets"][DS]["clips"]


def all_frames(index, row: int) -> torch.Tensor:
    reader = FrameReader(index)
    frames = reader.read(row, np.arange(int(index.n_frames[row])))
    reader.close()
    return frames  # (F, 3, H, W)


# --------------------------------------------------------------------------------------------------
# TrainClips


def test_train_clips_shapes_and_labels(tiny_data):
    config, index = tiny_data
    clips = clips_of(tiny_data)
    data = TrainClips(index, clips, config["augment"])
    sampler = StepBatches(index.select("train"), batch_size=4, seed=0, start_step=0, total_steps=2)
    for item in sampler.batch(0) + sampler.batch(1):
        first, second, colour1, colour2, label = data[item]
        for view in (first, second):
            assert view.shape == (3, clips["frames"] + 2, clips["size"], clips["size"]) and view.dtype == torch.uint8
        for colour in (colour1, colour2):
            assert colour.shape == (3, 4) and colour.dtype == torch.float32
        assert label == index.label[item[0]] and 0 <= label < len(index.classes)
        assert not torch.equal(first, second)  # independent start times and augmentations


def test_train_clip_frames_are_consecutive_at_the_stride(tiny_data):
    """Without augmentation (full-frame crop at the frame size) a clip is frames s, s+k, ..., s+(T+1)k."""
    _, index = tiny_data
    clips = {**clips_of(tiny_data), "size": int(index.height[0])}
    data = TrainClips(index, clips, NO_AUGMENT)
    length, stride = clips["frames"] + 2, clips["stride"]
    sampler = StepBatches(index.select("train"), batch_size=8, seed=3, start_step=0, total_steps=1)
    starts_seen = set()
    for item in sampler.batch(0):
        video = item[0]
        frames = all_frames(index, video)
        for view in data[item][:2]:
            clip = view.permute(1, 0, 2, 3)  # (L, 3, H, W)
            matches = [s for s in range(len(frames) - (length - 1) * stride)
                       if torch.equal(clip, frames[s : s + (length - 1) * stride + 1 : stride])]  # fmt: skip
            assert matches, item
            starts_seen.update(matches)
    assert len(starts_seen) > 3  # random start times, not always the same


def test_train_clips_are_a_function_of_the_item(tiny_data):
    config, index = tiny_data
    sampler = StepBatches(index.select("train"), batch_size=4, seed=0, start_step=0, total_steps=10)
    item = sampler.batch(2)[1]
    first = TrainClips(index, clips_of(tiny_data), config["augment"])[item]
    again = TrainClips(index, clips_of(tiny_data), config["augment"])[item]  # a fresh dataset, fresh reader
    assert all(torch.equal(a, b) for a, b in zip(first[:4], again[:4]))
    other_step = (item[0], (0, 3, 1))  # the same video drawn at another step
    other = TrainClips(index, clips_of(tiny_data), config["augment"])[other_step]
    assert not torch.equal(first[0], other[0])


# --------------------------------------------------------------------------------------------------
# StepBatches


def positions(sampler: StepBatches, steps) -> list[tuple[int, tuple]]:
    return [item for step in steps for item in sampler.batch(step)]


def test_every_training_video_once_per_epoch():
    videos = np.array([3, 5, 8, 13, 21, 34, 55])  # index rows need not be 0..n-1
    sampler = StepBatches(videos, batch_size=3, seed=1, start_step=0, total_steps=100)
    stream = [v for v, _ in positions(sampler, range(7))]  # 21 items = 3 epochs of 7
    epochs = [stream[0:7], stream[7:14], stream[14:21]]
    for epoch in epochs:
        assert sorted(epoch) == sorted(videos.tolist())
    assert len({tuple(e) for e in epochs}) == 3  # a fresh order each epoch


def test_batches_are_a_pure_function_of_seed_and_step():
    videos = np.arange(11)
    whole = StepBatches(videos, batch_size=4, seed=7, start_step=0, total_steps=9)
    batches = list(whole)
    assert len(batches) == len(whole) == 9
    assert [len(b) for b in batches] == [4] * 9
    for step, batch in enumerate(batches):
        assert [key for _, key in batch] == [(7, step, j) for j in range(4)]
    # a resumed run sees exactly the rest of the stream
    resumed = StepBatches(videos, batch_size=4, seed=7, start_step=5, total_steps=9)
    assert list(resumed) == batches[5:] and len(resumed) == 4
    # queried in any order, a fresh sampler agrees
    fresh = StepBatches(videos, batch_size=4, seed=7, start_step=0, total_steps=9)
    assert [fresh.batch(s) for s in reversed(range(9))] == batches[::-1]
    other_seed = StepBatches(videos, batch_size=4, seed=8, start_step=0, total_steps=9)
    assert [v for b in other_seed for v, _ in b] != [v for b in batches for v, _ in b]


def test_ranks_split_each_global_batch_without_overlap():
    videos = np.arange(10)
    world = 3
    full = StepBatches(videos, batch_size=6, seed=2, start_step=0, total_steps=5)
    ranks = [StepBatches(videos, batch_size=6, seed=2, start_step=0, total_steps=5, rank=r, world=world) for r in range(world)]
    for step in range(5):
        global_batch = full.batch(step)
        parts = [r.batch(step) for r in ranks]
        assert all(len(p) == 2 for p in parts)
        keys = [key for p in parts for _, key in p]
        assert len(set(keys)) == 6 and sorted(keys) == sorted(key for _, key in global_batch)
        for r, part in enumerate(parts):
            assert part == [global_batch[j] for j in range(r, 6, world)]


def test_global_batch_must_split_evenly():
    with pytest.raises(VididiError, match="not divisible"):
        StepBatches(np.arange(10), batch_size=5, seed=0, start_step=0, total_steps=2, world=2)


def test_multi_worker_loading_gives_the_same_batches(tiny_data):
    config, index = tiny_data
    data = TrainClips(index, clips_of(tiny_data), config["augment"])

    def batches(num_workers: int, passes: int = 1) -> list:
        sampler = StepBatches(index.select("train"), batch_size=4, seed=5, start_step=1, total_steps=5)
        dl = loader(data, num_workers=num_workers, batch_sampler=sampler)
        assert dl.persistent_workers == (num_workers > 0)
        return [list(dl) for _ in range(passes)]

    (serial,) = batches(0)  # also leaves the shard files open in this process before workers fork
    parallel_first, parallel_again = batches(2, passes=2)  # persistent workers: a second pass too
    assert len(serial) == 4
    for reference in (parallel_first, parallel_again):
        assert len(reference) == len(serial)
        for a, b in zip(serial, reference):
            assert a[0].shape == (4, 3, clips_of(tiny_data)["frames"] + 2, 28, 28)
            assert all(torch.equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------------
# EvalClips and WindowClips


def test_eval_clips_are_uniformly_spaced_centre_crops(tiny_data):
    config, index = tiny_data
    clips = clips_of(tiny_data)
    test = index.select("test")
    data = EvalClips(index, test, clips)
    assert len(data) == len(test)
    stack, label, video = data[1]
    t, s, k = clips["frames"], clips["size"], clips["eval_clips"]
    assert stack.shape == (k, 3, t, s, s) and stack.dtype == torch.uint8
    assert video == test[1] and label == index.label[video]
    frames = all_frames(index, video)  # (24, 3, 32, 32); span of a clip = (4 - 1) * 2 + 1 = 7
    top = (frames.shape[-1] - s) // 2
    for clip, start in zip(stack, [0, 17]):  # first and last possible start, hand-computed for K = 2
        expected = frames[start : start + 7 : 2, :, top : top + s, top : top + s].permute(1, 0, 2, 3)
        assert torch.equal(clip, expected)
    five = EvalClips(index, test, clips, frames=2, k=5)[1][0]
    assert five.shape == (5, 3, 2, s, s)
    # starts spread evenly over 0..(24 - 3): 0, 5.25, 10.5, 15.75, 21 rounded
    for clip, start in zip(five, [0, 5, 10, 16, 21]):
        assert torch.equal(clip, frames[[start, start + 2], :, top : top + s, top : top + s].permute(1, 0, 2, 3))


def test_short_video_repeats_its_last_frame():
    assert clip_frame_numbers(5, 4, 2, start=0).tolist() == [0, 2, 4, 4]
    assert clip_frame_numbers(30, 4, 2, start=3).tolist() == [3, 5, 7, 9]


def test_windows_cover_each_untrimmed_video(tiny_data):
    config, index = tiny_data
    clips = clips_of(tiny_data)
    untrimmed = np.flatnonzero(index.untrimmed)
    assert len(untrimmed) == 4
    data = WindowClips(index, untrimmed, clips, step_fraction=0.5)
    span = (clips["frames"] - 1) * clips["stride"] + 1
    covered = {int(v): np.zeros(int(index.n_frames[v]), bool) for v in untrimmed}
    for i in range(len(data)):
        clip, video, start, end = data[i]
        assert clip.shape == (3, clips["frames"], clips["size"], clips["size"])
        assert end - start == span and 0 <= start and end <= index.n_frames[video]
        covered[video][start:end] = True
    assert all(c.all() for c in covered.values())  # every frame of every video is in some window
    clip, video, start, _ = data[3]
    frames = all_frames(index, video)
    top = (frames.shape[-1] - clips["size"]) // 2
    crop = frames[start : start + span : clips["stride"], :, top : top + clips["size"], top : top + clips["size"]]
    assert torch.equal(clip, crop.permute(1, 0, 2, 3))


def test_window_starts_by_hand():
    assert window_starts(20, 7, 4).tolist() == [0, 4, 8, 12, 13]  # the last window is flush with the end
    assert window_starts(19, 7, 4).tolist() == [0, 4, 8, 12]  # already flush
    assert window_starts(5, 7, 4).tolist() == [0]  # shorter than a window: one (padded) window


# --------------------------------------------------------------------------------------------------
# Augmentation


def augmented(augment: ClipAugment, clip: torch.Tensor, rng) -> torch.Tensor:
    """What training sees: the loader's uint8 crop with its colour map applied (as the training step
    does on the device), back in uint8 (3, L, S, S)."""
    out, colour = augment(clip, rng)
    x = apply_colour(out[None], torch.from_numpy(colour)[None])[0]
    return (x * 255).round().to(torch.uint8)


def random_clip(length: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (length, 3, size, size), np.uint8))


def test_no_augmentation_is_the_identity():
    clip = random_clip()
    out, colour = ClipAugment(NO_AUGMENT, 32)(clip, np.random.default_rng(0))
    assert torch.equal(out, clip.permute(1, 0, 2, 3)) and np.array_equal(colour, IDENTITY_COLOUR)


def test_flip_mirrors_every_frame():
    clip = random_clip()
    out, _ = ClipAugment({**NO_AUGMENT, "flip": 1.0}, 32)(clip, np.random.default_rng(0))
    assert torch.equal(out, clip.permute(1, 0, 2, 3).flip(-1))


def test_grayscale_gives_equal_channels():
    clip = random_clip()
    out = augmented(ClipAugment({**NO_AUGMENT, "grayscale": 1.0}, 32), clip, np.random.default_rng(0))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    expected = (clip.double() * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1).round()
    assert (out[0].double() - expected).abs().max() <= 1


def test_crop_and_flip_are_drawn_once_per_clip():
    """Augmenting a clip equals augmenting each frame alone with the same random draws."""
    spatial_only = {"crop_scale": [0.3, 1.0], "crop_ratio": [0.75, 1.333], "flip": 0.5, "grayscale": 0.0,
                    "color_jitter": {**NO_AUGMENT["color_jitter"], "p": 0.0}}  # fmt: skip
    augment = ClipAugment(spatial_only, 20)
    clip = random_clip(length=5, size=40)
    for seed in range(10):
        whole, _ = augment(clip, np.random.default_rng(seed))
        for t in range(5):
            alone, _ = augment(clip[t : t + 1], np.random.default_rng(seed))
            assert torch.equal(whole[:, t : t + 1], alone), (seed, t)


def test_full_augmentation_keeps_identical_frames_identical(tiny_data):
    """A static clip stays static: crop, flip, colour jitter and grayscale are one transform per clip."""
    config, _ = tiny_data
    augment = ClipAugment({**config["augment"], "color_jitter": {**config["augment"]["color_jitter"], "p": 1.0}}, 24)
    frame = random_clip(length=1, size=40, seed=1)
    clip = frame.repeat(6, 1, 1, 1)
    outputs = []
    for seed in range(20):
        out = augmented(augment, clip, np.random.default_rng(seed))
        assert out.shape == (3, 6, 24, 24) and out.dtype == torch.uint8
        assert all(torch.equal(out[:, t], out[:, 0]) for t in range(6)), seed
        outputs.append(out)
    assert len({o.float().mean().item() for o in outputs}) > 15  # the draws do differ between clips


def test_crop_box_stays_inside_and_respects_scale_and_ratio():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        top, left, h, w = random_resized_crop_box(48, 64, (0.3, 0.9), (0.75, 4 / 3), rng)
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64
        assert 0.3 * 48 * 64 * 0.9 <= h * w <= 0.9 * 48 * 64 * 1.1  # rounding to whole pixels
        assert 0.75 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_colour_jitter_with_zero_strength_is_the_identity():
    for seed in range(5):
        m, t = colour_jitter_map(np.array([0.2, 0.5, 0.7]), np.random.default_rng(seed), 0, 0, 0, 0)
        assert np.array_equal(m, np.eye(3)) and np.array_equal(t, np.zeros(3))
    clip = random_clip()
    cfg = {**NO_AUGMENT, "color_jitter": {"p": 1.0, "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}}
    assert torch.equal(augmented(ClipAugment(cfg, 32), clip, np.random.default_rng(0)), clip.permute(1, 0, 2, 3))


def test_colour_jitter_components_by_their_invariants():
    rng = np.random.default_rng(0)
    colours = rng.uniform(0, 1, (3, 20))
    for seed in range(20):
        m, t = colour_jitter_map(np.array([0.3, 0.4, 0.5]), np.random.default_rng(seed), 0.4, 0, 0, 0)
        f = m[0, 0]
        assert np.allclose(m, f * np.eye(3)) and not t.any() and 0.6 <= f <= 1.4  # brightness: a gain
        m, t = colour_jitter_map(np.array([0.3, 0.4, 0.5]), np.random.default_rng(seed), 0, 0, 0, 0.1)
        assert np.allclose(LUMA @ m, LUMA) and not t.any()  # hue: a rotation about the grey axis keeps luma
        assert np.allclose(m @ np.ones(3), np.ones(3))  # ... and greys
        m, t = colour_jitter_map(np.array([0.3, 0.4, 0.5]), np.random.default_rng(seed), 0, 0, 1.0, 0)
        assert np.allclose(LUMA @ (m @ colours), LUMA @ colours)  # saturation: keeps luma
        assert np.allclose(m @ np.full(3, 0.37), np.full(3, 0.37))  # ... and greys
        mean = np.array([0.3, 0.4, 0.5])
        m, t = colour_jitter_map(mean, np.random.default_rng(seed), 0, 0.4, 0, 0)
        grey = LUMA @ mean
        assert np.allclose(m @ np.full(3, grey) + t, np.full(3, grey))  # contrast: pivots on the clip's mean grey
        f = m[0, 0]
        assert np.allclose(m, f * np.eye(3)) and 0.6 <= f <= 1.4 and math.isclose(t[0], (1 - f) * grey)
