"""The embedded synthetic dynamics dataset: the class IS the motion law, appearance is nuisance.

Every video shows one moving sprite over a static textured background. Its class is one of the
dynamics below; speed, direction, phase and position are random within a class, and the look of the
scene (background texture and colours, sprite shape / colour / size, static distractors, sensor noise)
is drawn independently of the class. Two cues still reach a single frame: only Pulsing's sprite is ever
semi-transparent, and the sprite's mean position depends on the class (paths are placed to stay in
view: Bouncing sweeps the frame, Pulsing stays put; docs/method.md gives the numbers). How much appearance varies across videos is set per factor
(`backgrounds`, `sprite_looks`: the size of the pool each video draws from, 0 = a fresh one per video),
because instance discrimination learns whatever tells one video from another.

Defaults (see the config schema): a fresh background per video, which a frames-only model can latch
onto, and 8 shared sprite looks, so that once a model stops looking at the static background (which
temporal derivatives remove) the motion is the best remaining cue for telling videos apart.

Scene bias (docs/science.md): with probability `scene_bias` a trimmed video's background is replaced
by one of its class's scenes, drawn from a stream of its own, so the video's motion is the same at
every p and p = 0 is exactly the dataset made before the knob. `scenes: exact` takes them from a pool
of `scene_pool` exact backgrounds per class, shared by train and test; `scenes: style` gives each
class a texture family and a palette and each (class, group) its own instance, so train and test share
no background (`scene_overlap` counts). `ooc_split` adds an out-of-context twin of every test video
(same motion, sprite and noise; another class's scene) and split 3 = split 1's training videos + the
twins as test.

Written as real H.264 files in the UCF101 layout (class folders, classInd.txt, trainlist01.txt,
testlist01.txt; whole groups go to train or test) so the extraction code for real datasets handles it,
plus THUMOS14-style untrimmed videos for detection (`untrimmed/`), and per-frame object boxes and masks
(`objects.h5`) for attention analysis. Deterministic: every video has its own RNG seeded from
(seed, class, group, clip), so the same settings give the same annotations and decoded frames.
"""

from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import SYNTHETIC_NEW_DEFAULTS, without_new_defaults
from ..layout import OBJECTS_FILE
from ..utils import VididiError, atomic_hdf5, progress, write_text
from .ffmpeg import encode_h264

# --------------------------------------------------------------------------------------------------
# Dynamics: each returns the sprite centre per frame (F, 2) relative to its start, and an opacity
# factor per frame (F,). Units: pixels and frames at a 64-pixel frame; `scale` stretches distances.

Trajectory = tuple[np.ndarray, np.ndarray]


def _direction(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    return np.array([np.cos(angle), np.sin(angle)])


def _steady(n: int) -> np.ndarray:
    return np.ones(n)


def linear_motion(rng, n, scale) -> Trajectory:
    """Constant velocity."""
    t = np.arange(n)[:, None]
    v = rng.uniform(0.7, 1.1) * scale * _direction(rng)
    return v * t, _steady(n)


def accelerating(rng, n, scale) -> Trajectory:
    """Starts slowly and speeds up at a constant rate along a straight line."""
    t = np.arange(n)[:, None]
    d = _direction(rng)
    v0, a = rng.uniform(0.0, 0.2) * scale, rng.uniform(0.028, 0.04) * scale * (48 / n) ** 2
    return d * (v0 * t + 0.5 * a * t**2), _steady(n)


def decelerating(rng, n, scale) -> Trajectory:
    """Starts fast, brakes at a constant rate and stops late in the video."""
    t = np.arange(n, dtype=float)
    d = _direction(rng)
    t_stop = rng.uniform(0.65, 0.85) * n
    v0 = rng.uniform(1.5, 2.1) * scale * (48 / n)
    tc = np.minimum(t, t_stop)
    return d * (v0 * tc - 0.5 * (v0 / t_stop) * tc**2)[:, None], _steady(n)


def projectile(rng, n, scale) -> Trajectory:
    """Thrown upwards and sideways, falls under a constant downward gravity (image y grows down)."""
    t = np.arange(n, dtype=float)
    g = rng.uniform(0.05, 0.08) * scale * (48 / n) ** 2
    t_apex = rng.uniform(0.3, 0.55) * n
    vx = rng.choice([-1, 1]) * rng.uniform(0.3, 0.8) * scale * (48 / n)
    vy = -g * t_apex
    return np.stack([vx * t, vy * t + 0.5 * g * t**2], axis=1), _steady(n)


def bouncing(rng, n, scale, box: float = 40.0) -> Trajectory:
    """Fast constant speed, reflecting off the walls of a box (the free area of the frame)."""
    speed = rng.uniform(1.9, 2.7) * scale
    angle = rng.uniform(0.25, 0.75) * np.pi / 2 + rng.integers(4) * np.pi / 2  # not axis-aligned
    v = speed * np.array([np.cos(angle), np.sin(angle)])
    start = rng.uniform(0, box, size=2)
    raw = start + v * np.arange(n)[:, None]
    folded = np.mod(raw, 2 * box)  # unfold the reflections: a triangle wave in each axis
    return np.where(folded > box, 2 * box - folded, folded), _steady(n)


def orbit(rng, n, scale) -> Trajectory:
    """Uniform circular motion."""
    t = np.arange(n)
    radius = rng.uniform(10, 15) * scale
    omega = rng.choice([-1, 1]) * 2 * np.pi / (rng.uniform(28, 44) * n / 48)
    phase = rng.uniform(0, 2 * np.pi)
    pos = radius * np.stack([np.cos(omega * t + phase), np.sin(omega * t + phase)], axis=1)
    return pos, _steady(n)


def oscillation(rng, n, scale) -> Trajectory:
    """Simple harmonic motion back and forth along a line."""
    t = np.arange(n)[:, None]
    amplitude = rng.uniform(9, 15) * scale
    omega = 2 * np.pi / (rng.uniform(16, 26) * n / 48)
    return amplitude * np.sin(omega * t + rng.uniform(0, 2 * np.pi)) * _direction(rng), _steady(n)


def pulsing(rng, n, scale) -> Trajectory:
    """No motion at all: the sprite only brightens and fades periodically."""
    t = np.arange(n)
    omega = 2 * np.pi / (rng.uniform(12, 22) * n / 48)
    return np.zeros((n, 2)), 0.55 + 0.45 * np.sin(omega * t + rng.uniform(0, 2 * np.pi))


DYNAMICS: dict[str, Callable[..., Trajectory]] = {
    "LinearMotion": linear_motion,
    "Accelerating": accelerating,
    "Decelerating": decelerating,
    "Projectile": projectile,
    "Bouncing": bouncing,
    "Orbit": orbit,
    "Oscillation": oscillation,
    "Pulsing": pulsing,
}

# --------------------------------------------------------------------------------------------------
# Appearance


def _random_colour(rng, saturation=(0.5, 1.0), value=(0.55, 1.0)) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value)))


TEXTURES = ("value noise", "stripes", "checkerboard", "gradient", "blobs")


def make_background(rng: np.random.Generator, size: int, style: "SceneStyle | None" = None) -> np.ndarray:
    """A random static texture (H, W, 3) in [0, 1]: value noise, stripes, checkers, gradient or blobs.

    With a `style`, the texture family and the palette are the style's and only the texture's own
    parameters (angle, frequency, noise, blobs) and the exact shades are random. Without one, the
    draws are exactly those made before styles existed.
    """
    if style is None:
        kind = rng.integers(5)
        c1 = _random_colour(rng, (0.1, 0.7), (0.2, 0.9))
        c2 = _random_colour(rng, (0.1, 0.7), (0.2, 0.9))
    else:
        kind, (c1, c2) = style.texture, style.colours(rng)
    field = _texture(rng, int(kind), size)
    return c1 * (1 - field) + c2 * field


def _texture(rng: np.random.Generator, kind: int, size: int) -> np.ndarray:
    """The mixing field (H, W, 1) in [0, 1] of texture family `kind` (an index into TEXTURES)."""
    y, x = np.mgrid[0:size, 0:size] / size
    if kind == 0:  # multi-octave value noise
        field = np.zeros((size, size))
        for octave in (4, 8, 16):
            grid = rng.uniform(size=(octave + 1, octave + 1))
            field += _upsample(grid, size) / octave * 4
        field = (field - field.min()) / (np.ptp(field) + 1e-8)
    elif kind == 1:  # stripes
        angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 9)
        field = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle))))
    elif kind == 2:  # rotated checkerboard
        angle, cells = rng.uniform(0, np.pi / 2), rng.uniform(3, 8)
        u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
        field = ((np.floor(u * cells) + np.floor(v * cells)) % 2).astype(float)
    elif kind == 3:  # gradient with grain
        angle = rng.uniform(0, 2 * np.pi)
        field = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle)
        field = (field - field.min()) / np.ptp(field) + rng.normal(0, 0.08, (size, size))
    else:  # soft blobs
        field = np.zeros((size, size))
        for _ in range(rng.integers(5, 12)):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
            field += rng.uniform(-1, 1) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        field = (field - field.min()) / (np.ptp(field) + 1e-8)
    return np.clip(field, 0, 1)[..., None]


@dataclass(frozen=True)
class SceneStyle:
    """A class's scene style (`scenes: style`): one texture family and a one-hue palette, a dark and a
    light shade of `hue`. Every instance draws its own texture parameters and shades, so two instances
    of a style look alike without being the same picture (as two swimming pools do)."""

    texture: int  # index into TEXTURES
    hue: float  # in [0, 1)

    HUE_JITTER = 0.04  # each shade's hue is within this of the style's (styles are 1 / n_classes apart)

    def colours(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        import colorsys

        def shade(value: tuple[float, float]) -> np.ndarray:
            hue = (self.hue + rng.uniform(-self.HUE_JITTER, self.HUE_JITTER)) % 1.0
            return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.35, 0.85), rng.uniform(*value)))

        return shade((0.15, 0.45)), shade((0.6, 0.95))


def class_styles(n_classes: int, seed: int) -> list[SceneStyle]:
    """One style per class, from the stream [seed, 7004]: hues evenly spaced around the colour circle
    (a random offset, shuffled over the classes) and the texture families dealt in a shuffled cycle,
    so no two classes share both their family and their hue."""
    rng = np.random.default_rng([seed, 7004])
    hues = (rng.uniform() + np.arange(n_classes) / n_classes) % 1.0
    hues = hues[rng.permutation(n_classes)]
    textures = np.resize(rng.permutation(len(TEXTURES)), n_classes)
    return [SceneStyle(int(t), float(h)) for t, h in zip(textures, hues)]


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small random grid to size x size."""
    n = grid.shape[0] - 1
    coords = np.linspace(0, n, size, endpoint=False)
    i = np.floor(coords).astype(int)
    f = coords - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


SHAPES = ("disc", "square", "triangle", "diamond", "ring", "cross")


@dataclass(frozen=True)
class SpriteLook:
    shape: str
    diameter: float
    angle: float
    fill: tuple[float, float, float]
    pattern: tuple[float, float, float] | None  # second colour of a two-tone stripe pattern

    @staticmethod
    def random(rng: np.random.Generator, diameter_range: tuple[float, float]) -> "SpriteLook":
        fill = _random_colour(rng)
        pattern = tuple(_random_colour(rng)) if rng.uniform() < 0.5 else None
        return SpriteLook(
            SHAPES[rng.integers(len(SHAPES))], float(rng.uniform(*diameter_range)),
            float(rng.uniform(0, np.pi)), tuple(fill), pattern,
        )

    def coverage(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Anti-aliased coverage in [0, 1] of pixels at offsets (dx, dy) from the sprite centre."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = c * dx + s * dy, -s * dx + c * dy
        r = self.diameter / 2
        if self.shape == "disc":
            sdf = np.hypot(u, v) - r
        elif self.shape == "square":
            sdf = np.maximum(np.abs(u), np.abs(v)) - 0.85 * r
        elif self.shape == "diamond":
            sdf = (np.abs(u) + np.abs(v) - 1.15 * r) / math.sqrt(2)
        elif self.shape == "ring":
            sdf = np.abs(np.hypot(u, v) - 0.7 * r) - 0.3 * r
        elif self.shape == "cross":
            arm = 0.38 * r
            sdf = np.minimum(np.maximum(np.abs(u) - r, np.abs(v) - arm), np.maximum(np.abs(u) - arm, np.abs(v) - r))
        else:  # triangle: intersection of three half-planes
            k = [(math.cos(a), math.sin(a)) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
            sdf = np.max([u * kx + v * ky for kx, ky in k], axis=0) - 0.55 * r
        return np.clip(0.5 - sdf, 0.0, 1.0)

    def paint(self, frame: np.ndarray, centre: np.ndarray, opacity: float = 1.0) -> np.ndarray:
        """Composite the sprite onto `frame` (in place) at a sub-pixel `centre`; return its coverage map."""
        size = frame.shape[0]
        y, x = np.mgrid[0:size, 0:size].astype(float)
        dx, dy = x - centre[0], y - centre[1]
        inner = self.coverage(dx, dy)
        # A dark or light 1-pixel outline keeps the sprite visible on any background.
        outline_cov = SpriteLook(self.shape, self.diameter + 2.5, self.angle, self.fill, None).coverage(dx, dy)
        fill = np.broadcast_to(np.asarray(self.fill), frame.shape)
        if self.pattern is not None:  # stripes fixed to the sprite, so they move with it
            c, s = math.cos(self.angle), math.sin(self.angle)
            stripes = (np.sin((c * dx + s * dy) * 2 * np.pi / (self.diameter / 2.5)) > 0)[..., None]
            fill = np.where(stripes, np.asarray(self.pattern), fill)
        luminance = float(np.dot(self.fill, (0.299, 0.587, 0.114)))
        edge = np.zeros(3) if luminance > 0.45 else np.ones(3)
        a_edge = (outline_cov * opacity)[..., None]
        frame[:] = frame * (1 - a_edge) + edge * a_edge
        a_fill = (inner * opacity)[..., None]
        frame[:] = frame * (1 - a_fill) + fill * a_fill
        return outline_cov


# --------------------------------------------------------------------------------------------------
# Videos


@dataclass
class Scene:
    background: np.ndarray
    look: SpriteLook
    distractors: list[tuple[SpriteLook, np.ndarray]]


class Appearance:
    """Draws scenes; pools of backgrounds / sprite looks are fixed by the dataset seed."""

    def __init__(self, cfg: dict, seed: int):
        self.cfg = cfg
        self.size = cfg["size"]
        self.scale = self.size / 64
        self.diameter = tuple(d * self.scale for d in cfg["object_size"])
        self.seed = seed
        pool_rng = np.random.default_rng([seed, 7001])
        self.backgrounds = [make_background(pool_rng, self.size) for _ in range(cfg["backgrounds"])]
        self.looks = [SpriteLook.random(pool_rng, self.diameter) for _ in range(cfg["sprite_looks"])]

    def class_background(self, class_index: int, rng) -> tuple[np.ndarray, int]:
        """A background from class `class_index`'s own scene pool (scene bias, out-of-context twins).

        The pools (`scene_pool` backgrounds per class) come from their own seeded stream, built on
        first use, so a dataset that never asks for one draws exactly what it drew before they existed.
        """
        if getattr(self, "_class_pools", None) is None:
            pool_rng = np.random.default_rng([self.seed, 7002])
            n_classes, size = len(self.cfg["classes"]), self.cfg.get("scene_pool", 8)
            self._class_pools = [[make_background(pool_rng, self.size) for _ in range(size)] for _ in range(n_classes)]
        pool = self._class_pools[class_index]
        i = int(rng.integers(len(pool)))
        return pool[i], i

    def style_background(self, class_index: int, group: int) -> np.ndarray:
        """Group `group`'s instance of class `class_index`'s scene style (`scenes: style`), from the
        stream [seed, 7003, class, group]: the clips of a group share it, as in UCF101, and since whole
        groups go to train or test, no training video shows a test video's exact background."""
        if getattr(self, "_styles", None) is None:
            self._styles = class_styles(len(self.cfg["classes"]), self.seed)
        rng = np.random.default_rng([self.seed, 7003, class_index, group])
        return make_background(rng, self.size, self._styles[class_index])

    def fresh_style_background(self, class_index: int, rng) -> np.ndarray:
        """A new instance of class `class_index`'s style drawn from `rng` (an out-of-context twin's)."""
        if getattr(self, "_styles", None) is None:
            self._styles = class_styles(len(self.cfg["classes"]), self.seed)
        return make_background(rng, self.size, self._styles[class_index])

    def background(self, rng) -> tuple[np.ndarray, int]:
        if self.backgrounds:
            i = int(rng.integers(len(self.backgrounds)))
            return self.backgrounds[i], i
        return make_background(rng, self.size), -1

    def look(self, rng) -> tuple[SpriteLook, int]:
        if self.looks:
            i = int(rng.integers(len(self.looks)))
            return self.looks[i], i
        return SpriteLook.random(rng, self.diameter), -1

    def scene(self, rng) -> tuple[Scene, dict]:
        background, bg_id = self.background(rng)
        look, look_id = self.look(rng)
        lo, hi = self.cfg["distractors"]
        distractors = []
        for _ in range(int(rng.integers(lo, hi + 1))):
            d_look, _ = self.look(rng)
            distractors.append((d_look, rng.uniform(0.1, 0.9, size=2) * self.size))
        return Scene(background, look, distractors), {"background": bg_id, "look": look_id, "distractors": len(distractors)}

    def place(self, rng, rel: np.ndarray) -> np.ndarray:
        """Translate a relative trajectory to a random place where the whole path stays in view, or None."""
        margin = self.diameter[1] / 2 + self.cfg["margin"] * self.scale
        lo, hi = margin, self.size - margin
        span = rel.max(axis=0) - rel.min(axis=0)
        room = (hi - lo) - span
        if np.any(room < 0):
            return None
        return rel - rel.min(axis=0) + lo + rng.uniform(0, 1, size=2) * room


def sample_motion(app: Appearance, name: str, rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Absolute centre track (F, 2) and opacity (F,) of class `name`, resampled until it fits the frame."""
    for _ in range(200):
        if name == "Bouncing":
            margin = app.diameter[1] / 2 + app.cfg["margin"] * app.scale
            rel, opacity = bouncing(rng, n, app.scale, box=app.size - 2 * margin)
        else:
            rel, opacity = DYNAMICS[name](rng, n, app.scale)
        placed = app.place(rng, rel)
        if placed is not None:
            return placed, opacity
    raise VididiError(f"synthetic: class {name} does not fit a {app.size}-pixel frame; raise `size` or lower `object_size`")


def scene_bias(app: Appearance, scene: Scene, info: dict, key: list[int], class_index: int, name: str) -> tuple[Scene, dict]:
    """With probability `scene_bias`, replace a trimmed video's background by one of its class's scenes:
    with `scenes: exact`, one of the class's pool of `scene_pool` backgrounds (shared by train and test);
    with `scenes: style`, its group's instance of the class's style (never shown in the other split).

    The coin and the pool index come from a stream of their own (`key` + [5001]), drawn only when
    scene_bias > 0: the video's own stream (look, motion, noise) is untouched, so the same video has
    the same motion at every p and in both modes, and at p = 0 the dataset is exactly the one made
    before the knob.
    """
    p = app.cfg.get("scene_bias", 0)
    if p <= 0:
        return scene, info
    rng = np.random.default_rng([*key, 5001])
    if rng.uniform() >= p:
        return scene, {**info, "scene_class": None}
    if app.cfg.get("scenes", "exact") == "style":
        group = key[2]
        background, i = app.style_background(class_index, group), group
    else:
        background, i = app.class_background(class_index, rng)
    return Scene(background, scene.look, scene.distractors), {**info, "background": -1, "scene_class": name, "scene_index": i}


def out_of_context(app: Appearance, scene: Scene, info: dict, key: list[int], class_index: int, names: list[str]) -> tuple[Scene, dict]:
    """The out-of-context twin's scene: the same sprite, distractors (and, rendered with the same
    stream, the same motion and noise) over ANOTHER class's scene (`key` + [5002]): a background of
    its pool (`scenes: exact`) or a new instance of its style (`scenes: style`; scene_index None)."""
    rng = np.random.default_rng([*key, 5002])
    other = (class_index + 1 + int(rng.integers(len(names) - 1))) % len(names)
    if app.cfg.get("scenes", "exact") == "style":
        background, i = app.fresh_style_background(other, rng), None
    else:
        background, i = app.class_background(other, rng)
    return Scene(background, scene.look, scene.distractors), {**info, "background": -1, "scene_class": names[other], "scene_index": i}


def render(app: Appearance, scene: Scene, track: np.ndarray, opacity: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Frames (F, H, W, 3) uint8 and object masks (F, H, W) bool of one video."""
    base = scene.background.copy()
    for look, centre in scene.distractors:
        look.paint(base, centre)
    n, size = len(track), app.size
    frames = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    noise = app.cfg["noise"]
    for t in range(n):
        frame = base.copy()
        coverage = scene.look.paint(frame, track[t], float(opacity[t]))
        masks[t] = coverage > 0.5
        if noise > 0:
            frame += rng.normal(0, noise, frame.shape)
        frames[t] = np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)
    return frames, masks


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(F, 4) x0, y0, x1, y1 (inclusive-exclusive pixel bounds) of each frame's mask; -1 if empty."""
    out = np.full((len(masks), 4), -1, np.int16)
    for t, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs):
            out[t] = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return out


# --------------------------------------------------------------------------------------------------
# The dataset on disk


def class_names(cfg: dict) -> list[str]:
    names = cfg["classes"]
    unknown = [c for c in names if c not in DYNAMICS]
    if unknown:
        raise VididiError(f"synthetic.classes: unknown {unknown}; allowed: {sorted(DYNAMICS)}")
    return list(names)


def group_split(cfg: dict, group: int) -> tuple[str, str | None]:
    """(split 1, split 2) membership of a group: split 1 = train / test; split 2, the validation
    protocol for tuning, divides split 1's training groups into train / test (val) and leaves the
    test groups out, so tuning never sees a test video."""
    first_test = cfg["groups"] - cfg["test_groups"] + 1
    if group >= first_test:
        return "test", None
    if not cfg["val_groups"]:
        return "train", None
    return "train", ("test" if group >= first_test - cfg["val_groups"] else "train")


def trimmed_plan(cfg: dict) -> list[tuple[int, str, int, int, str]]:
    """(class index, class name, group, clip, split-1 subset) for every trimmed video."""
    plan = []
    for ci, name in enumerate(class_names(cfg)):
        for g in range(1, cfg["groups"] + 1):
            for c in range(1, cfg["clips_per_group"] + 1):
                plan.append((ci, name, g, c, group_split(cfg, g)[0]))
    return plan


def generate(root: str | Path, cfg: dict, seed: int, workers: int = 1) -> None:
    """Write the whole dataset under `root` (see the module docstring for the layout).

    Videos are rendered and encoded by `workers` processes (an ffmpeg start costs ~0.1 s, so this
    is worth it); everything is written in plan order, so the output does not depend on `workers`.
    The dataset is built in `<root>.partial` and renamed to `root` when complete, replacing any
    older version (so no stale video of an earlier configuration survives).
    """
    final = Path(root)
    root = final.with_name(final.name + ".partial")
    shutil.rmtree(root, ignore_errors=True)
    names = class_names(cfg)
    if cfg["test_groups"] + cfg["val_groups"] >= cfg["groups"]:
        raise VididiError("synthetic: test_groups + val_groups must be smaller than groups (some groups must train)")
    jobs = [("trimmed", *item) for item in trimmed_plan(cfg)]
    if cfg.get("ooc_split"):  # split 3: out-of-context twins of the test videos
        jobs += [("ooc", *item) for item in trimmed_plan(cfg) if item[4] == "test"]
    ucfg = cfg["untrimmed"]
    jobs += [("untrimmed", "val", "validation", k) for k in range(1, ucfg["train"] + 1)]
    jobs += [("untrimmed", "test", "test", k) for k in range(1, ucfg["test"] + 1)]

    meta: dict = {"seed": seed, "settings": without_new_defaults(cfg, SYNTHETIC_NEW_DEFAULTS), "classes": names, "videos": {}}
    lists: dict[str, list[str]] = {"trainlist01": [], "testlist01": [], "trainlist02": [], "testlist02": []}
    annotations: dict[tuple[str, str], list[str]] = {}
    with ProcessPoolExecutor(max(1, workers), initializer=_init_worker, initargs=(str(root), cfg, seed)) as pool, \
            atomic_hdf5(root / OBJECTS_FILE, track_order=True) as objects:
        objects.attrs["fps"] = cfg["fps"]
        results = pool.map(_make_video, jobs, chunksize=4)
        for job, (video_id, masks, info) in progress(zip(jobs, results), total=len(jobs), desc="synthetic videos", unit="video"):
            group = objects.create_group(video_id, track_order=True)
            group.create_dataset("masks", data=masks, compression="gzip", track_times=False)
            group.create_dataset("boxes", data=boxes_from_masks(masks), track_times=False)
            meta["videos"][video_id] = info
            if job[0] == "trimmed":
                ci, group = job[1], job[3]
                for number, subset in enumerate(group_split(cfg, group), start=1):
                    if subset is not None:  # UCF101 format: train lines carry the 1-based label
                        line = f"{video_id}.mp4 {ci + 1}" if subset == "train" else f"{video_id}.mp4"
                        lists[f"{subset}list{number:02d}"].append(line)
                if cfg.get("ooc_split") and group_split(cfg, group)[0] == "train":  # split 3 trains as split 1
                    lists.setdefault("trainlist03", []).append(f"{video_id}.mp4 {ci + 1}")
            elif job[0] == "ooc":
                lists.setdefault("testlist03", []).append(f"{video_id}.mp4")
            else:
                video_name = video_id.rsplit("/", 1)[1]
                for name, start, end in info["segments"]:
                    annotations.setdefault((name, job[1]), []).append(f"{video_name} {start:.2f} {end:.2f}")
    write_text(root / "classInd.txt", "".join(f"{i + 1} {name}\n" for i, name in enumerate(names)))
    for name, lines in lists.items():
        if lines:
            write_text(root / f"{name}.txt", "\n".join(lines) + "\n")
    for name in names:
        for subset in ("val", "test"):
            lines = annotations.get((name, subset), [])
            write_text(root / "untrimmed" / "annotation" / f"{name}_{subset}.txt", "".join(f"{x}\n" for x in lines))
    write_text(root / "metadata.json", json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    root.rename(final)


_WORKER: dict = {}


def _init_worker(root: str, cfg: dict, seed: int) -> None:
    _WORKER.update(root=Path(root), cfg=cfg, seed=seed, app=Appearance(cfg, seed), names=class_names(cfg))


def _make_video(job: tuple) -> tuple[str, np.ndarray, dict]:
    """Render and encode one video; returns its id, object masks and metadata."""
    root, cfg, seed, app, names = (_WORKER[k] for k in ("root", "cfg", "seed", "app", "names"))
    if job[0] in ("trimmed", "ooc"):
        video_id, scene, info, track, opacity, rng = _trimmed_scene(app, names, seed, job)
    else:
        _, subset, folder, k = job
        video_id = f"untrimmed/{folder}/video_{folder}_{k:07d}"
        rng = np.random.default_rng([seed, 9000 + (subset == "test"), k])
        scene, info = app.scene(rng)
        track, opacity, segments = _untrimmed_motion(app, rng, names, cfg)
        info = {"subset": subset, **info, "segments": segments}
    frames, masks = render(app, scene, track, opacity, rng)
    encode_h264(frames, root / f"{video_id}.mp4", fps=cfg["fps"], crf=cfg["crf"])
    return video_id, masks, info


def _trimmed_scene(app: Appearance, names: list[str], seed: int, job: tuple) -> tuple[str, Scene, dict, np.ndarray, np.ndarray, np.random.Generator]:
    """Video id, scene, metadata, track, opacity and the stream (to render with) of a trimmed video or twin."""
    kind, ci, name, g, c, split = job
    video_id = f"{name}/v_{name}_g{g:02d}_c{c:02d}"
    rng = np.random.default_rng([seed, ci, g, c])
    scene, info = app.scene(rng)
    track, opacity = sample_motion(app, name, rng, app.cfg["frames"])
    scene, info = scene_bias(app, scene, info, [seed, ci, g, c], ci, name)
    if kind == "ooc":  # the same video (its stream continues identically) in another class's scene
        scene, info = out_of_context(app, scene, info, [seed, ci, g, c], ci, names)
        info = {**info, "twin_of": video_id}
        video_id += "_ooc"
    info = {"class": name, "split": split, **info, "track": np.round(track, 2).tolist()}
    return video_id, scene, info, track, opacity, rng


def scene_overlap(cfg: dict, seed: int, split: str = "1") -> dict:
    """How many test videos of `split` show the exact background of a training video.

    Replays the generator's scene draws (the same code, without rendering) and compares the background
    arrays themselves, before distractors and the sprite are drawn on them. Split "3" tests the
    out-of-context twins. Returns the test video count and how many share their exact background with
    a training video of the same class, of another class, and of any class (`share`: that count / test
    videos). Exact scenes: most do; scene styles: none should.
    """
    import hashlib

    names, app = class_names(cfg), Appearance(cfg, seed)
    jobs = [("trimmed", *item) for item in trimmed_plan(cfg)]
    if split == "3":
        if not cfg.get("ooc_split"):
            raise VididiError("synthetic: split 3 needs ooc_split: true")
        train = [j for j in jobs if j[5] == "train"]
        test = [("ooc", *j[1:]) for j in jobs if j[5] == "test"]
    else:
        membership = {j: group_split(cfg, j[3])[int(split) - 1] for j in jobs}
        train = [j for j in jobs if membership[j] == "train"]
        test = [j for j in jobs if membership[j] == "test"]

    def digest(job) -> str:
        return hashlib.sha256(_trimmed_scene(app, names, seed, job)[1].background.tobytes()).hexdigest()

    classes_by_background: dict[str, set[int]] = {}
    for job in train:
        classes_by_background.setdefault(digest(job), set()).add(job[1])
    same = other = shared = 0
    for job in test:
        classes = classes_by_background.get(digest(job), set())
        shared += bool(classes)
        same += job[1] in classes
        other += bool(classes - {job[1]})
    return {"test_videos": len(test), "shared": shared, "same_class": same, "other_class": other,
            "share": shared / max(1, len(test))}  # fmt: skip


def _untrimmed_motion(app: Appearance, rng, names: list[str], cfg: dict):
    """Several action segments separated by idle periods (sprite at rest, full opacity).

    During an idle period the sprite stays where the last segment left it; it jumps to the start
    of the next segment's path when that segment begins. Returns track, opacity and
    [class name, start s, end s] per segment (THUMOS14 annotations are in seconds).
    """
    ucfg, fps = cfg["untrimmed"], cfg["fps"]
    n = ucfg["frames"]
    track, opacity = np.empty((n, 2)), np.ones(n)
    segments, prev_end, position = [], 0, None
    for start, end in _segment_times(rng, n, ucfg):
        name = names[int(rng.integers(len(names)))]
        seg_track, seg_opacity = sample_motion(app, name, rng, end - start)
        track[prev_end:start] = seg_track[0] if position is None else position
        track[start:end], opacity[start:end] = seg_track, seg_opacity
        position, prev_end = seg_track[-1], end
        segments.append([name, start / fps, end / fps])
    track[prev_end:] = position
    return track, opacity, segments


def _segment_times(rng, n: int, ucfg: dict) -> list[tuple[int, int]]:
    """Non-overlapping (start, end) frame ranges with idle gaps of at least `min_gap` frames."""
    lo_len, hi_len = ucfg["segment_frames"]
    count = int(rng.integers(ucfg["segments"][0], ucfg["segments"][1] + 1))
    gap = ucfg["min_gap"]
    while True:
        lengths = rng.integers(lo_len, hi_len + 1, size=count)
        slack = n - lengths.sum() - gap * (count + 1)
        if slack >= 0:
            break
        count -= 1
        if count == 0:
            raise VididiError("synthetic.untrimmed: frames too few for one segment; raise `frames`")
    extra = np.diff(np.sort(np.concatenate([[0, slack], rng.integers(0, slack + 1, size=count)])))
    out, cursor = [], 0
    for length, pad in zip(lengths, extra):
        start = cursor + gap + int(pad)
        out.append((start, start + int(length)))
        cursor = start + int(length)
    return out
