"""Per-clip spatial augmentation: one random draw per clip, applied identically to all its frames.

Random resized crop, horizontal flip, colour jitter (p=0.8) and random grayscale (p=0.2), as in
docs/method.md. Colour jitter is ONE affine colour map per clip: brightness, contrast, saturation and hue
are each affine in RGB, so their random-order composition (and grayscale) is a 3x3 matrix plus an
offset. The loader draws it and crops / flips the uint8 frames; the training step applies the map on
the device (`apply_colour`), so the loader keeps up with training on 2 CPU cores.
Two documented differences from torchvision's ColorJitter: hue is a rotation about the grey axis in
YIQ space (not an HSV shift), and values are clamped to [0, 1] once at the end, not after every step.
Contrast blends towards the mean grey level of the whole clip, so every frame gets the same map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def draw_colour_jitter(rng: np.random.Generator, brightness: float, contrast: float, saturation: float,
                       hue: float) -> list[tuple[int, float]]:  # fmt: skip
    """The random part of the colour jitter, in the order it is applied: (op, value) pairs, op 0-3 =
    brightness, contrast, saturation, hue; value = the factor (hue: the rotation angle in radians).
    Factors are drawn like torchvision's ColorJitter (uniform in [1-s, 1+s], hue in [-h, h]); an op of
    strength 0 draws nothing and is left out."""
    strengths = (brightness, contrast, saturation, hue)
    steps = []
    for op in rng.permutation(4):
        s = strengths[op]
        if s <= 0:
            continue
        if op == 3:
            steps.append((3, 2 * math.pi * rng.uniform(-s, s)))
        else:
            steps.append((int(op), rng.uniform(max(0.0, 1 - s), 1 + s)))
    return steps


def _colour_step(op: int, value: float) -> tuple[np.ndarray, np.ndarray]:
    """(step_M, step_t) of one jitter op; contrast's offset is filled in by the caller (it needs the mean)."""
    if op == 0:
        return value * np.eye(3), np.zeros(3)
    if op == 1:
        return value * np.eye(3), np.zeros(3)
    if op == 2:
        return value * np.eye(3) + (1 - value) * np.outer(np.ones(3), LUMA), np.zeros(3)
    c, s = math.cos(value), math.sin(value)
    rotation = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ, np.zeros(3)


def compose_colour_jitter(steps: list[tuple[int, float]], mean_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, t) such that jittered = M @ rgb + t for the drawn `steps`; contrast blends towards the mean
    grey level of the clip as it is at that point (`mean_rgb`: the clip's mean colour in [0, 1])."""
    M, t = np.eye(3), np.zeros(3)
    for op, value in steps:
        step_M, step_t = _colour_step(op, value)
        if op == 1:
            grey = LUMA @ (M @ mean_rgb + t)  # mean grey level of the clip as it is at this point
            step_t = np.full(3, (1 - value) * grey)
        M, t = step_M @ M, step_M @ t + step_t
    return M, t


def colour_jitter_affine(steps: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The jitter map as an affine function of the clip's mean colour m, for augmentation on the device
    (where m is only known there): M and t = A @ m + c, equal to `compose_colour_jitter(steps, m)` up
    to float64 rounding (the same products, summed in another order)."""
    M, A, c = np.eye(3), np.zeros((3, 3)), np.zeros(3)
    for op, value in steps:
        step_M, _ = _colour_step(op, value)
        if op == 1:  # step_t = (1 - f) * LUMA @ (M m + A m + c), the same on every channel
            A_new = step_M @ A + np.outer(np.ones(3), (1 - value) * (LUMA @ (M + A)))
            c = step_M @ c + np.full(3, (1 - value) * (LUMA @ c))
            A = A_new
        else:
            A, c = step_M @ A, step_M @ c
        M = step_M @ M
    return M, A, c


def colour_jitter_map(
    mean_rgb: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float, saturation: float, hue: float
) -> tuple[np.ndarray, np.ndarray]:
    """(M, t) such that jittered = M @ rgb + t, for factors drawn like torchvision's ColorJitter
    (each factor uniform in [1-s, 1+s], hue in [-h, h]) and applied in a random order."""
    return compose_colour_jitter(draw_colour_jitter(rng, brightness, contrast, saturation, hue), mean_rgb)


IDENTITY_COLOUR = np.hstack([np.eye(3), np.zeros((3, 1))]).astype(np.float32)


@dataclass(frozen=True)
class ClipDraw:
    """Every random choice of one clip's augmentation: crop box, flip, colour jitter steps (None = no
    jitter), grayscale. Drawn by `draw_clip` in one fixed order, so the loader path (`ClipAugment`)
    and the device path (`vididi.data.device_augment`) apply the same draws to the same clip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    jitter: list[tuple[int, float]] | None
    grayscale: bool

    def as_vector(self) -> np.ndarray:
        """(DRAW_SIZE,) float64 = [top, left, height, width, flip, M (9), A (9), c (3)]: the geometry and
        the colour map as an affine function of the clip's mean colour (`colour_jitter_affine`), with
        the grayscale folded in; what the device path needs (exact integers, float64 maps)."""
        M, A, c = colour_jitter_affine(self.jitter) if self.jitter is not None else (np.eye(3), np.zeros((3, 3)), np.zeros(3))
        if self.grayscale:
            grey = np.outer(np.ones(3), LUMA)
            M, A, c = grey @ M, grey @ A, grey @ c
        head = np.array([self.top, self.left, self.height, self.width, float(self.flip)])
        return np.concatenate([head, M.ravel(), A.ravel(), c])


DRAW_SIZE = 5 + 9 + 9 + 3


def draw_clip(cfg: dict, height: int, width: int, rng: np.random.Generator) -> ClipDraw:
    """The random draws of one clip's augmentation (`cfg` = the `augment` section), in the order the
    loader has always drawn them: crop box, flip, jitter yes/no, jitter steps, grayscale yes/no."""
    top, left, ch, cw = random_resized_crop_box(height, width, cfg["crop_scale"], cfg["crop_ratio"], rng)
    flip = bool(rng.uniform() < cfg["flip"])
    jitter = cfg["color_jitter"]
    steps = None
    if rng.uniform() < jitter["p"]:
        steps = draw_colour_jitter(rng, jitter["brightness"], jitter["contrast"], jitter["saturation"], jitter["hue"])
    grayscale = bool(rng.uniform() < cfg["grayscale"])
    return ClipDraw(top, left, ch, cw, flip, steps, grayscale)


class ClipAugment:
    """uint8 clip (L, 3, H, W) -> (augmented uint8 clip (3, L, size, size), colour map (3, 4)).

    The geometric part (random resized crop, flip) is applied here, on uint8 (cheap for the loader);
    the colour part (jitter, grayscale) is only DRAWN here and returned as an affine map [M | t] that
    the training step applies on the device (`apply_colour`) before the derivatives, on float values.
    The clip comes back as a (3, L, size, size) view of channels-last memory: collation copies it
    into the batch once (a contiguous copy here would be a second one).
    """

    def __init__(self, cfg: dict, size: int):
        self.cfg, self.size = cfg, size

    def __call__(self, clip: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
        d = draw_clip(self.cfg, clip.shape[2], clip.shape[3], rng)
        x = clip[:, :, d.top : d.top + d.height, d.left : d.left + d.width].contiguous(memory_format=torch.channels_last)
        # uint8 resize in channels-last layout: several times faster than on floats; antialiasing only
        # matters when shrinking
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                          antialias=min(d.height, d.width) > self.size)  # fmt: skip
        if d.flip:
            x = x.flip(-1)
        M, t = np.eye(3), np.zeros(3)
        if d.jitter is not None:
            # the clip's mean colour (contrast blends towards its grey level), from every 4th pixel
            mean_rgb = x[:, :, ::4, ::4].float().mean(dim=(0, 2, 3)).numpy() / 255
            M, t = compose_colour_jitter(d.jitter, mean_rgb)
        if d.grayscale:
            grey = np.outer(np.ones(3), LUMA)
            M, t = grey @ M, grey @ t
        colour = np.hstack([M, t[:, None]]).astype(np.float32)
        return x.permute(1, 0, 2, 3), colour


def apply_colour(clips: torch.Tensor, colour: torch.Tensor, mean=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """uint8 clips (B, 3, L, H, W) with per-clip colour maps (B, 3, 4) = [M | t] -> float
    clamp(M x + t, 0, 1) - mean, x = clips / 255, shaped (B, 3, L, H, W) in channels-last-3d layout.

    Each output channel is three fused multiply-adds over the input channels (a 3x3 matmul per pixel
    is slow on CPUs), with 1/255 folded into M, the mean into t and the clamp bounds; the channels are
    stacked last, the layout the encoder runs fastest in and that derivatives of the result keep.
    """
    x = clips.float()
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device)
    m = colour[:, :, :3].float().div(255)[..., None, None, None]  # (B, 3, 3, 1, 1, 1)
    t = (colour[:, :, 3].float() - mean)[..., None, None, None]  # (B, 3, 1, 1, 1)
    channels = []
    for i in range(3):
        y = x[:, 0] * m[:, i, 0]
        y.addcmul_(x[:, 1], m[:, i, 1]).addcmul_(x[:, 2], m[:, i, 2]).add_(t[:, i])
        channels.append(y.clamp_(-mean[i], 1 - mean[i]))
    return torch.stack(channels, dim=-1).permute(0, 4, 1, 2, 3)


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


# --------------------------------------------------------------------------------------------------
# Scene augmentations of the frames view (order 0), opt-in (`augment.background_erasing`, `augment.fame`).
# They act on a batch of colour-jittered, centred float clips (B, 3, L, H, W) on the training device;
# a convex mix commutes with the centring, so centred or not gives the same clip.


def background_erasing(x: torch.Tensor, apply: torch.Tensor, weight: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """Background Erasing (Wang et al., CVPR 2021): every frame of clip i becomes
    (1 - w_i) x_i[t] + w_i x_i[k_i], a static frame k_i of the same clip mixed in with weight w_i, where
    `apply[i]`. A static addition changes no temporal difference beyond the factor 1 - w_i."""
    static = x[torch.arange(len(x), device=x.device), :, frame]  # (B, 3, H, W)
    w = (weight * apply).to(x.dtype)[:, None, None, None, None]
    return x * (1 - w) + static[:, :, None] * w


def motion_foreground(x: torch.Tensor, share: float, smooth: int = 5) -> torch.Tensor:
    """A foreground estimate that needs no annotation: the `share` of pixels of each clip with the most
    frame-difference energy (sum over time and colour of |x[t+1] - x[t]|, box-smoothed over `smooth`
    pixels). At most `share` of the pixels unless energies tie. Returns a (B, 1, 1, H, W) 0/1 mask."""
    energy = (x[:, :, 1:] - x[:, :, :-1]).abs().sum(dim=(1, 2))  # (B, H, W)
    energy = F.avg_pool2d(energy[:, None], smooth, stride=1, padding=smooth // 2, count_include_pad=False)[:, 0]
    flat = energy.flatten(1)
    threshold = torch.quantile(flat.float(), 1 - share, dim=1, keepdim=True).to(flat.dtype)
    # strictly above: a static background (energy 0 everywhere) is never foreground; a clip without
    # any motion is all foreground, i.e. left as it is
    mask = (flat > threshold) | (flat == flat.max(dim=1, keepdim=True).values)
    return mask.reshape(energy.shape)[:, None, None].to(x.dtype)


def fame_merge(x: torch.Tensor, apply: torch.Tensor, partner: torch.Tensor, share: float) -> torch.Tensor:
    """Foreground-background merging after FAME (Ding et al., 2022): where `apply[i]`, clip i's moving
    foreground (`motion_foreground`) over clip partner[i] of the same batch, which shows through
    everywhere else."""
    drawn = apply.to(x.dtype)[:, None, None, None, None]
    keep = 1 - drawn * (1 - motion_foreground(x, share))  # 1 on the foreground and on clips not drawn
    return x * keep + x[partner] * (1 - keep)


class FramesViewAugment:
    """Draws and applies the opt-in scene augmentations of an order-0 view. The draws of step k and
    stream s come from the seeded stream [seed, k, s, 8101], one per position of the global batch
    (this process takes positions rank, rank + world, ... as the loader does), so training stays a
    pure function of (settings, step). A FAME partner is another clip of this process's share."""

    def __init__(self, augment: dict, seed: int, rank: int = 0, world: int = 1):
        self.be, self.fame = augment["background_erasing"], augment["fame"]
        self.seed, self.rank, self.world = seed, rank, world

    @property
    def active(self) -> bool:
        return self.be["p"] > 0 or self.fame["p"] > 0

    def __call__(self, x: torch.Tensor, step: int, stream: int) -> torch.Tensor:
        b, length = x.shape[0], x.shape[2]
        rng = np.random.default_rng([self.seed, step, stream, 8101])
        draws = rng.uniform(size=(4, b * self.world))[:, self.rank :: self.world]

        def tensor(values, dtype=torch.float32):
            return torch.as_tensor(np.asarray(values), dtype=dtype, device=x.device)

        if self.be["p"] > 0:
            apply = tensor(draws[0] < self.be["p"])
            frame = tensor(np.minimum((draws[1] * length).astype(np.int64), length - 1), torch.long)
            x = background_erasing(x, apply, tensor(draws[2] * self.be["max_weight"]), frame)
        if self.fame["p"] > 0 and b > 1:
            shift = 1 + int(rng.integers(b - 1))  # every clip gets another clip's background
            partner = torch.roll(torch.arange(b, device=x.device), -shift)
            x = fame_merge(x, tensor(draws[3] < self.fame["p"]), partner, self.fame["foreground"])
        return x
