"""Per-clip spatial augmentation: one random draw per clip, applied identically to all its frames.

Random resized crop, horizontal flip, colour jitter (p=0.8) and random grayscale (p=0.2), as in
METHOD.md. Colour jitter is done as ONE affine colour map per clip: brightness, contrast, saturation
and hue are each affine in RGB, so their random-order composition is a 3x3 matrix plus an offset,
applied with a single einsum (cheap enough for the loader to keep up with training on 2 cores).
Two documented differences from torchvision's ColorJitter: hue is a rotation about the grey axis in
YIQ space (not an HSV shift), and values are clamped to [0, 1] once at the end, not after every step.
Contrast blends towards the mean grey level of the whole clip, so every frame gets the same map.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

LUMA = np.array([0.299, 0.587, 0.114])
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def random_resized_crop_box(h: int, w: int, scale, ratio, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop covering a random share `scale` of the area with a random
    aspect ratio in `ratio` (log-uniform); torchvision's algorithm, falling back to a centre crop."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def colour_jitter_map(
    mean_rgb: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float, saturation: float, hue: float
) -> tuple[np.ndarray, np.ndarray]:
    """(M, t) such that jittered = M @ rgb + t, for factors drawn like torchvision's ColorJitter
    (each factor uniform in [1-s, 1+s], hue in [-h, h]) and applied in a random order."""
    M, t = np.eye(3), np.zeros(3)
    for op in rng.permutation(4):
        if op == 0 and brightness > 0:
            f = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
            step_M, step_t = f * np.eye(3), np.zeros(3)
        elif op == 1 and contrast > 0:
            f = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
            grey = LUMA @ (M @ mean_rgb + t)  # mean grey level of the clip as it is at this point
            step_M, step_t = f * np.eye(3), np.full(3, (1 - f) * grey)
        elif op == 2 and saturation > 0:
            f = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
            step_M, step_t = f * np.eye(3) + (1 - f) * np.outer(np.ones(3), LUMA), np.zeros(3)
        elif op == 3 and hue > 0:
            angle = 2 * math.pi * rng.uniform(-hue, hue)
            c, s = math.cos(angle), math.sin(angle)
            rotation = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
            step_M, step_t = _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ, np.zeros(3)
        else:
            continue
        M, t = step_M @ M, step_M @ t + step_t
    return M, t


class ClipAugment:
    """uint8 clip (L, 3, H, W) -> augmented uint8 tensor (3, L, size, size)."""

    def __init__(self, cfg: dict, size: int):
        self.cfg, self.size = cfg, size

    def __call__(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.cfg
        top, left, ch, cw = random_resized_crop_box(clip.shape[2], clip.shape[3], cfg["crop_scale"], cfg["crop_ratio"], rng)
        x = clip[:, :, top : top + ch, left : left + cw].float()
        # antialiasing only matters when shrinking
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                          antialias=min(ch, cw) > self.size)  # fmt: skip
        if rng.uniform() < cfg["flip"]:
            x = x.flip(-1)
        M, t = np.eye(3), np.zeros(3)
        jitter = cfg["color_jitter"]
        if rng.uniform() < jitter["p"]:
            mean_rgb = x.mean(dim=(0, 2, 3)).numpy() / 255
            M, t = colour_jitter_map(mean_rgb, rng, jitter["brightness"], jitter["contrast"], jitter["saturation"], jitter["hue"])
        if rng.uniform() < cfg["grayscale"]:
            grey = np.outer(np.ones(3), LUMA)
            M, t = grey @ M, grey @ t
        if not np.array_equal(M, np.eye(3)) or t.any():
            x = torch.einsum("ij,ljhw->lihw", torch.from_numpy(M).float(), x) + torch.from_numpy(t * 255).float()[None, :, None, None]
        return x.clamp_(0, 255).round_().to(torch.uint8).permute(1, 0, 2, 3).contiguous()


def centre_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 clip (L, 3, H, W) -> centre crop (3, L, size, size); frames smaller than `size` are
    first resized so their short side is `size`."""
    x = clip
    h, w = x.shape[-2:]
    if min(h, w) < size:
        scale = size / min(h, w)
        x = F.interpolate(x.float(), size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bilinear",
                          align_corners=False, antialias=True).round_().clamp_(0, 255).to(torch.uint8)  # fmt: skip
        h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, :, top : top + size, left : left + size].permute(1, 0, 2, 3).contiguous()
