"""The opt-in scene augmentations of the frames view: Background Erasing and FAME-style merging."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vididi.data.augment import FramesViewAugment, background_erasing, fame_merge, motion_foreground
from vididi.ssl.derivatives import derivative

OFF = {"background_erasing": {"p": 0, "max_weight": 0.3}, "fame": {"p": 0, "foreground": 0.3}}


def moving_square_clips(b: int = 4, length: int = 6, size: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips (B, 3, L, H, W), trajectory masks (B, H, W)): a bright 4-pixel square moving right by 2
    pixels a frame over a static random background, one row per clip."""
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.uniform(0, 0.5, (b, 3, 1, size, size)), length, axis=2)
    path = np.zeros((b, size, size), bool)
    for i in range(b):
        row = 2 + 5 * i
        for t in range(length):
            x[i, :, t, row : row + 4, 2 + 2 * t : 6 + 2 * t] = 1.0
            path[i, row : row + 4, 2 + 2 * t : 6 + 2 * t] = True
    return torch.tensor(x, dtype=torch.float64), torch.tensor(path)


def test_background_erasing_mixes_a_static_frame_and_scales_the_derivatives():
    x, _ = moving_square_clips()
    apply, frame = torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([2, 4, 0, 1])
    weight = torch.tensor([0.3, 1.0, 0.5, 0.0], dtype=torch.float64)
    out = background_erasing(x, apply, weight, frame)
    expected = torch.stack([(1 - 0.3) * x[0] + 0.3 * x[0][:, 2:3], x[1][:, 4:5].expand_as(x[1]), x[2], x[3]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    for order in (1, 2):  # a static addition leaves the temporal differences as they were, times 1 - w
        torch.testing.assert_close(derivative(out, order, 3)[0], 0.7 * derivative(x, order, 3)[0], rtol=0, atol=1e-12)


def test_motion_foreground_finds_the_moving_square_without_masks():
    x, path = moving_square_clips()
    share = path[0].float().mean().item()  # as many pixels as the trajectory covers
    mask = motion_foreground(x, share, smooth=1)[:, 0, 0].bool()
    for i in range(len(x)):
        overlap = (mask[i] & path[i]).sum() / path[i].sum()
        assert overlap > 0.9, (i, overlap)
        assert not (mask[i] & ~path[i]).any()  # the static background has no energy at all


def test_fame_pastes_the_moving_foreground_onto_the_partners_clip():
    x, path = moving_square_clips()
    partner = torch.tensor([1, 2, 3, 0])
    out = fame_merge(x, torch.tensor([1.0, 1.0, 1.0, 0.0]), partner, share=0.3)
    mask = motion_foreground(x, 0.3)[:, 0, 0].bool()
    for i in range(3):
        assert torch.equal(out[i][:, :, mask[i]], x[i][:, :, mask[i]])  # own foreground
        assert torch.equal(out[i][:, :, ~mask[i]], x[partner[i]][:, :, ~mask[i]])  # the partner's background
        assert mask[i][path[i]].all() and mask[i].float().mean() <= 0.3  # the whole trajectory, at most 30%
    assert torch.equal(out[3], x[3])  # not drawn: unchanged
    still = x[:, :, :1].expand_as(x).clone()  # no motion at all: nothing to paste, the clip stays itself
    assert torch.equal(fame_merge(still, torch.ones(4), partner, share=0.3), still)


def test_draws_are_a_function_of_step_and_stream_and_split_like_the_batch():
    x, _ = moving_square_clips(b=4)
    settings = {**OFF, "background_erasing": {"p": 0.5, "max_weight": 0.5}}
    one = FramesViewAugment(settings, seed=3)
    assert one.active and not FramesViewAugment(OFF, seed=3).active
    a, b = one(x, step=7, stream=0), one(x, step=7, stream=0)
    assert torch.equal(a, b) and not torch.equal(a, one(x, step=7, stream=1)) and not torch.equal(a, one(x, 8, 0))
    changed = sum(not torch.equal(one(x, step, 0)[i], x[i]) for step in range(20) for i in range(4))
    assert 20 < changed < 60  # p = 0.5 per clip: about 40 of 80
    # two processes of a DDP run each hold positions rank, rank + 2 of the global batch: together, the
    # same clips as one process
    ranks = [FramesViewAugment(settings, seed=3, rank=r, world=2)(x[r::2], step=7, stream=0) for r in (0, 1)]
    together = torch.empty_like(a)
    together[0::2], together[1::2] = ranks
    torch.testing.assert_close(together, a, rtol=0, atol=0)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_only_the_frames_view_is_augmented(order):
    from vididi.ssl.trainer import StepInput, Trainer

    x, _ = moving_square_clips(b=4, length=6)
    clips = (x * 255).round().to(torch.uint8)
    colour = torch.tensor(np.hstack([np.eye(3), np.zeros((3, 1))]), dtype=torch.float32).expand(4, 3, 4)
    trainer = Trainer.__new__(Trainer)  # only what `view` reads
    vars(trainer).update(device=torch.device("cpu"), mean=torch.zeros(3), dtype=torch.float32,
                         memory_format=torch.contiguous_format,
                         inp=StepInput([0.0] * 3, [1.0] * 3, frames=4, scaling="none"))  # fmt: skip
    trainer.augment = trainer.frames_augment = None  # host-side augmentation, no scene augmentation
    plain = trainer.view(clips, colour, order, step=0, stream=0)
    trainer.frames_augment = FramesViewAugment({**OFF, "fame": {"p": 1.0, "foreground": 0.3}}, seed=0)
    augmented = trainer.view(clips, colour, order, step=0, stream=0)
    assert torch.equal(plain, augmented) == (order > 0)


def test_variant_augment_overrides_and_unchanged_hashes(tmp_path):
    from conftest import tiny_config
    from vididi import config as cfgmod

    config = tiny_config(tmp_path, variants={"base_be": {"schedule": "frames_only", "augment": {"background_erasing": {"p": 0.5}}}},
                         runs=[{"dataset": "synthetic", "framework": "vicreg", "variant": ["base", "base_be"]}])  # fmt: skip
    plain, be = (cfgmod.pretrain_settings(config, run)["augment"] for run in cfgmod.expand_runs(config))
    assert "background_erasing" not in plain and "fame" not in plain  # off: left out, older hashes hold
    assert be["background_erasing"] == {"p": 0.5, "max_weight": 0.3} and "fame" not in be
    assert SimpleNamespace(**be).crop_scale == plain["crop_scale"]


def test_pretraining_with_both_augmentations_runs_and_differs(tiny_data, tmp_path):
    """A ViDiDi run whose frames views get Background Erasing and FAME trains (finite losses) to
    other weights than the same run without them."""
    from conftest import tiny_config
    from vididi.config import expand_runs
    from vididi.ssl.trainer import pretrain

    both = {"background_erasing": {"p": 1.0}, "fame": {"p": 1.0}}
    weights = {}
    for name, variant in (("plain", {"schedule": "frames_only"}), ("scene", {"schedule": "frames_only", "augment": both})):
        config = tiny_config(tmp_path / name, data_dir=tiny_data[0]["data_dir"], device="cpu", threads=1,
                             variants={"v": variant}, runs=[{"dataset": "synthetic", "framework": "vicreg", "variant": "v"}],
                             pretrain={"steps": 3, "num_workers": 0})  # fmt: skip
        final = pretrain(config, expand_runs(config)[0])
        weights[name] = torch.load(final, map_location="cpu", weights_only=True)["encoder"]
        log = (final.parent.parent / "train_log.csv").read_text().splitlines()
        assert len(log) == 4 and "nan" not in "".join(log[1:])
    assert any(not torch.equal(weights["plain"][k], weights["scene"][k]) for k in weights["plain"])
