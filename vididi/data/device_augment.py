"""The training augmentation on the device (`pretrain.augment_on: device`).

The loader workers only read the stored bytes of each clip (raw frames, or the JPEG files undecoded)
and draw the clip's augmentation (`augment.draw_clip`, the same draws in the same order as the
loader path). In the training process, on the training device, `DeviceAugment` then decodes JPEG
frames in one batched `torchvision.io.decode_jpeg` call, crops, resizes and flips every clip of the
batch at once, and turns the drawn colour jitter into the clip's colour map; the trainer applies the
map, centres, and takes the derivatives exactly as on the loader path.

Crop + resize + flip of a clip is separable: output = Wy @ frame @ Wx^T, where Wy (size x H) and Wx
(size x W) hold the interpolation weights of PyTorch's bilinear resize of the crop box (the triangle
filter widened by the scale factor when antialiasing, `F.interpolate(..., antialias=True)`; plain
bilinear otherwise), with zero weight outside the box, and flipping reverses the rows of Wx. So a
whole batch is two batched matmuls, whatever the crop boxes. The result is rounded to whole grey
levels, as the loader path's uint8 resize rounds: that one works axis by axis with fixed-point
weights and rounds after each axis, so it is within 1 grey level of the exact resize, and the two
paths' clips differ by at most 1 grey level (in ~10-30% of the pixels of a resized clip, measured on
textured test frames; never where no resize happens).

Equivalence (tests/test_device_augment.py, on the CPU with device="cpu"): with the same draws, the
clips agree to 1 grey level before the colour map, the colour maps to what that moves the clip's
mean colour, and where no resize is needed the views agree to float32 rounding. That is rounding,
like the loader's own uint8 arithmetic, so `augment_on` stays out of the weights' settings hash. On CUDA, JPEG frames are decoded by nvJPEG, not libjpeg-turbo (see
docs/benchmarks.md for what that means for the pixels).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import get_worker_info

from .augment import DRAW_SIZE
from .shards import decode_jpegs


class StoredFrames:
    """A batch of clips as stored: raw frames (B, L, H, W, 3) uint8, zero-padded to the largest frame
    of the batch, or JPEG files (`blob`: all of them back to back; `offsets`: (B, L + 1) byte offsets
    into it). Pins like a tensor (DataLoader `pin_memory`)."""

    def __init__(self, frames: torch.Tensor | None = None, blob: torch.Tensor | None = None, offsets: torch.Tensor | None = None):
        self.frames, self.blob, self.offsets = frames, blob, offsets

    def pin_memory(self) -> "StoredFrames":
        if self.frames is not None:
            return StoredFrames(frames=self.frames.pin_memory())
        return StoredFrames(blob=self.blob.pin_memory(), offsets=self.offsets)

    def __len__(self) -> int:
        return len(self.frames) if self.frames is not None else len(self.offsets)


def _batch_tensor(shape, dtype) -> torch.Tensor:
    """A zeroed tensor, in shared memory inside a loader worker (sent to the trainer without a copy)."""
    out = torch.zeros(shape, dtype=dtype)
    return out.share_memory_() if get_worker_info() is not None else out


def stack_stored(clips: list) -> StoredFrames:
    """Stored clips as `FrameReader.read_stored` returns them -> one `StoredFrames`."""
    if isinstance(clips[0], torch.Tensor):  # raw (L, H, W, 3), sizes may differ between videos
        length = clips[0].shape[0]
        height, width = max(c.shape[1] for c in clips), max(c.shape[2] for c in clips)
        frames = _batch_tensor((len(clips), length, height, width, 3), torch.uint8)
        for i, c in enumerate(clips):
            frames[i, :, : c.shape[1], : c.shape[2]] = c
        return StoredFrames(frames=frames)
    sizes = [int(blob.numel()) for blob, _ in clips]
    blob = _batch_tensor((sum(sizes),), torch.uint8)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for (piece, _), start, size in zip(clips, starts, sizes):
        blob[start : start + size] = piece
    offsets = torch.stack([off + int(start) for (_, off), start in zip(clips, starts)])
    return StoredFrames(blob=blob, offsets=offsets)


def collate_stored(items: list[tuple]) -> tuple:
    """`TrainClips` items of the device path -> (stored1, stored2, draws1 (B, DRAW_SIZE), draws2, labels)."""
    first, second, draws1, draws2, labels = zip(*items)
    return (stack_stored(list(first)), stack_stored(list(second)), torch.stack(draws1), torch.stack(draws2),
            torch.as_tensor(labels))  # fmt: skip


def resample_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                     antialias: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """(B, out_size, in_size) float32 weights of resizing the spans [start, start + length) of an axis
    of in_size pixels to out_size pixels, as `F.interpolate(mode="bilinear", align_corners=False)`
    does: the triangle filter centred at scale * (i + 0.5) - 0.5, widened to the scale factor when
    shrinking with `antialias`, restricted to the span and normalised to sum 1; rows reversed where
    `flip`. Computed in float64 (the weights are exact to float32 rounding)."""
    device = start.device
    scale = length.double() / out_size  # (B,)
    wide = antialias & (scale >= 1)
    invscale = torch.where(wide, 1 / scale, torch.ones_like(scale))
    centre = scale[:, None] * (torch.arange(out_size, device=device, dtype=torch.float64) + 0.5)  # (B, out)
    j = torch.arange(in_size, device=device, dtype=torch.float64)[None, :] - start[:, None].double()  # (B, in)
    w = (1 - ((j[:, None, :] - centre[:, :, None] + 0.5) * invscale[:, None, None]).abs()).clamp_(min=0)
    w *= ((j >= 0) & (j < length[:, None].double()))[:, None, :]
    w /= w.sum(dim=-1, keepdim=True)
    if flip is not None:
        w = torch.where(flip[:, None, None], w.flip(1), w)
    return w.float()


class DeviceAugment:
    """(stored clips, draws) -> (clips (B, 3, L, size, size) float32 holding whole grey levels, colour
    maps (B, 3, 4) float32): the loader path's crop, resize, flip and colour-map composition, batched
    on `device`. The trainer then applies the maps (`augment.apply_colour`) as on the loader path."""

    def __init__(self, size: int, device: torch.device | str):
        self.size, self.device = size, torch.device(device)

    def frames(self, stored: StoredFrames) -> torch.Tensor:
        """uint8 (B, L, 3, H, W) on the device (a view of (B, L, H, W, 3) memory)."""
        if stored.frames is not None:
            return stored.frames.to(self.device, non_blocking=True).permute(0, 1, 4, 2, 3)
        offsets = stored.offsets
        length = offsets.shape[1] - 1
        flat = torch.cat([offsets[:, :-1].reshape(-1), offsets[-1:, -1]])
        images = decode_jpegs_list(stored.blob, flat, self.device)
        clips = [torch.stack(images[b * length : (b + 1) * length]) for b in range(len(offsets))]  # (L, H, W, 3)
        height, width = max(c.shape[1] for c in clips), max(c.shape[2] for c in clips)
        if all(c.shape[1:3] == (height, width) for c in clips):
            out = torch.stack(clips)
        else:
            out = torch.zeros((len(clips), length, height, width, 3), dtype=torch.uint8, device=self.device)
            for b, c in enumerate(clips):
                out[b, :, : c.shape[1], : c.shape[2]] = c
        return out.permute(0, 1, 4, 2, 3)

    def __call__(self, stored: StoredFrames, draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.frames(stored)
        height, width = x.shape[-2:]
        draws = draws.to(self.device, torch.float64, non_blocking=True)
        if draws.shape[1] != DRAW_SIZE:
            raise ValueError(f"draws must be (B, {DRAW_SIZE}), got {tuple(draws.shape)}")
        top, left, ch, cw = (draws[:, i].long() for i in range(4))
        flip = draws[:, 4] > 0.5
        antialias = torch.minimum(ch, cw) > self.size  # one flag per clip for both axes, as the loader path
        with _full_fp32_matmul():
            wy = resample_weights(top, ch, height, self.size, antialias)  # (B, S, H)
            wx = resample_weights(left, cw, width, self.size, antialias, flip)  # (B, S, W)
            y = x.float() @ wx.transpose(1, 2)[:, None, None]  # (B, L, 3, H, S)
            y = wy[:, None, None] @ y  # (B, L, 3, S, S)
        y = y.round_().clamp_(0, 255).permute(0, 2, 1, 3, 4)  # (B, 3, L, S, S), whole grey levels
        # the clip's mean colour from every 4th pixel, as the loader path: an exact sum of integers,
        # then float32 division by the count and by 255
        sub = y[:, :, :, ::4, ::4]
        count = sub.shape[2] * sub.shape[3] * sub.shape[4]
        mean = sub.sum(dim=(2, 3, 4), dtype=torch.float64).float().div_(count).div_(255)
        M, A, c = draws[:, 5:14].view(-1, 3, 3), draws[:, 14:23].view(-1, 3, 3), draws[:, 23:26]
        t = (A @ mean.double()[:, :, None])[:, :, 0] + c
        colour = torch.cat([M, t[:, :, None]], dim=2).float()
        return y, colour


def decode_jpegs_list(blob: torch.Tensor, offsets, device) -> list[torch.Tensor]:
    """Like `shards.decode_jpegs` but a list of (H, W, 3) frames (their sizes may differ)."""
    return list(decode_jpegs(blob, offsets, device, stack=False))


class _full_fp32_matmul:
    """Full float32 matmuls inside (no TF32 on CUDA): the resize must stay within rounding of the
    loader path's, whatever the process set for the model."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.saved
