"""The synthetic dynamics dataset: determinism, per-class motion laws, UCF101/THUMOS layout, masks, knobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import tiny_config
from vididi.config import deep_update
from vididi.data.ffmpeg import decode
from vididi.data.splits import list_dataset
from vididi.data.synthetic import DYNAMICS, generate
from vididi.layout import raw_dir
from vididi.utils import VididiError

MICRO = {  # 2 classes x 2 groups x 1 clip + 1 + 1 untrimmed videos: a dataset in about a second
    "classes": ["LinearMotion", "Accelerating"], "groups": 2, "clips_per_group": 1, "test_groups": 1, "val_groups": 0,
    "frames": 12, "size": 32, "fps": 8,
    "untrimmed": {"train": 1, "test": 1, "frames": 32, "segments": [1, 1], "segment_frames": [8, 10], "min_gap": 2},
}  # fmt: skip


def synthetic_settings(workdir: Path, **changes) -> dict:
    """The validated `synthetic` block of the micro dataset, with `changes` merged in."""
    block = deep_update(MICRO, changes)
    return tiny_config(workdir, datasets={"synthetic": {"synthetic": block}})["datasets"]["synthetic"]["synthetic"]


def decoded(root: Path, video_id: str) -> np.ndarray:
    return np.stack(list(decode(root / f"{video_id}.mp4").frames))


def video_ids(root: Path) -> list[str]:
    return list(json.loads((root / "metadata.json").read_text())["videos"])


def annotation_files(root: Path) -> list[Path]:
    files = [root / "classInd.txt", root / "trainlist01.txt", root / "testlist01.txt", root / "metadata.json"]
    return files + sorted((root / "untrimmed" / "annotation").glob("*.txt"))


# --------------------------------------------------------------------------------------------------
# Determinism


@pytest.fixture(scope="module")
def micro_datasets(tmp_path_factory) -> dict[str, Path]:
    """The micro dataset three times: seed 0 with 1 and with 2 workers, and seed 1."""
    base = tmp_path_factory.mktemp("micro")
    cfg = synthetic_settings(base)
    roots = {"seed0": base / "seed0", "seed0_again": base / "seed0_again", "seed1": base / "seed1"}
    generate(roots["seed0"], cfg, seed=0, workers=1)
    generate(roots["seed0_again"], cfg, seed=0, workers=2)
    generate(roots["seed1"], cfg, seed=1, workers=2)
    return roots


def test_same_seed_gives_the_same_dataset_whatever_the_workers(micro_datasets):
    a, b = micro_datasets["seed0"], micro_datasets["seed0_again"]
    for file in annotation_files(a):
        assert file.read_bytes() == (b / file.relative_to(a)).read_bytes(), file.name
    assert video_ids(a) == video_ids(b) and len(video_ids(a)) == 6
    with h5py.File(a / "objects.h5") as oa, h5py.File(b / "objects.h5") as ob:
        assert list(oa) == list(ob)
        for vid in video_ids(a):
            assert np.array_equal(oa[vid]["masks"][()], ob[vid]["masks"][()])
            assert np.array_equal(oa[vid]["boxes"][()], ob[vid]["boxes"][()])
    for vid in video_ids(a):
        assert np.array_equal(decoded(a, vid), decoded(b, vid)), vid
    assert not (a.parent / "seed0.partial").exists()  # built aside, renamed when complete


def test_another_seed_gives_other_videos(micro_datasets):
    a, c = micro_datasets["seed0"], micro_datasets["seed1"]
    # the class list and the split lists depend on the settings only, not on the seed ...
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        assert (a / name).read_bytes() == (c / name).read_bytes()
    # ... everything random does
    assert (a / "metadata.json").read_bytes() != (c / "metadata.json").read_bytes()
    with h5py.File(a / "objects.h5") as oa, h5py.File(c / "objects.h5") as oc:
        for vid in video_ids(a):
            assert not np.array_equal(oa[vid]["masks"][()], oc[vid]["masks"][()]), vid
            frames_a, frames_c = decoded(a, vid), decoded(c, vid)
            assert frames_a.shape == frames_c.shape
            assert np.abs(frames_a.astype(float) - frames_c).mean() > 5, vid


# --------------------------------------------------------------------------------------------------
# Per-class dynamics, measured on the tiny dataset's tracks and masks


@pytest.fixture(scope="module")
def tiny_raw(tiny_data) -> tuple[Path, dict, dict]:
    """(root, metadata, {video id: masks}) of the session's tiny dataset."""
    config, _ = tiny_data
    root = raw_dir(config, "synthetic")
    meta = json.loads((root / "metadata.json").read_text())
    with h5py.File(root / "objects.h5") as objects:
        masks = {vid: objects[vid]["masks"][()] for vid in meta["videos"]}
    return root, meta, masks


def tracks_of(meta: dict, cls: str) -> list[np.ndarray]:
    tracks = [np.array(v["track"]) for v in meta["videos"].values() if v.get("class") == cls]
    assert tracks, cls
    return tracks


def fitted_acceleration(track: np.ndarray) -> float:
    """|a| of the least-squares fit p(t) = p0 + v t + a t^2 / 2 (both axes), in pixels / frame^2."""
    t = np.arange(len(track), dtype=float)
    design = np.stack([np.ones_like(t), t, 0.5 * t**2], axis=1)
    coef, *_ = np.linalg.lstsq(design, track, rcond=None)
    return float(np.hypot(*coef[2]))


def centroids(masks: np.ndarray) -> np.ndarray:
    """(F, 2) x, y mean of each mask's pixel coordinates, by explicit summation."""
    out = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        out.append([xs.mean(), ys.mean()])
    return np.array(out)


def test_tracks_are_where_the_masks_are(tiny_raw):
    """The metadata track is the centre of the rendered sprite (symmetric shapes): within half a pixel."""
    _, meta, masks = tiny_raw
    for vid, info in meta["videos"].items():
        if "track" in info:
            assert np.abs(centroids(masks[vid]) - np.array(info["track"])).max() < 0.5, vid


def test_accelerating_has_acceleration_and_linear_motion_has_none(tiny_raw):
    _, meta, _ = tiny_raw
    accelerating = [fitted_acceleration(t) for t in tracks_of(meta, "Accelerating")]
    linear = [fitted_acceleration(t) for t in tracks_of(meta, "LinearMotion")]
    # frames=24 at size 32: a >= 0.028 * (32/64) * (48/24)^2 = 0.056 px/frame^2 by construction
    assert min(accelerating) > 0.04, accelerating
    assert max(linear) < 0.005, linear  # zero up to the 0.01-pixel rounding of the stored track
    for track in tracks_of(meta, "LinearMotion"):
        speeds = np.linalg.norm(np.diff(track, axis=0), axis=1)
        assert speeds.min() > 0.2 and speeds.std() < 0.02 * speeds.mean()


def test_acceleration_is_visible_in_the_rendered_masks(tiny_raw):
    """The same separation, measured on what was drawn (mask centroids, whole-pixel quantised)."""
    _, meta, masks = tiny_raw
    by_class = {"Accelerating": [], "LinearMotion": []}
    for vid, info in meta["videos"].items():
        if info.get("class") in by_class:
            by_class[info["class"]].append(fitted_acceleration(centroids(masks[vid])))
    assert min(by_class["Accelerating"]) > 0.04 and max(by_class["LinearMotion"]) < 0.015, by_class


def test_accelerating_moves_along_a_straight_line(tiny_raw):
    _, meta, _ = tiny_raw
    for track in tracks_of(meta, "Accelerating"):
        centred = track - track.mean(axis=0)
        singular = np.linalg.svd(centred, compute_uv=False)
        assert singular[1] < 0.01 * singular[0]  # all points on one line
        speeds = np.linalg.norm(np.diff(track, axis=0), axis=1)
        assert speeds[-1] > 2 * speeds[len(speeds) // 4]  # and it speeds up


def test_pulsing_does_not_move_but_its_pixels_change(tiny_raw):
    root, meta, masks = tiny_raw
    for vid, info in meta["videos"].items():
        if info.get("class") != "Pulsing":
            continue
        track = np.array(info["track"])
        assert np.array_equal(track, np.broadcast_to(track[0], track.shape)), vid
        assert all(np.array_equal(m, masks[vid][0]) for m in masks[vid]), vid
        temporal_std = decoded(root, vid).astype(float).std(axis=0).mean(axis=-1)
        inside, outside = temporal_std[masks[vid][0]].mean(), temporal_std[~masks[vid][0]].mean()
        assert inside > 4 * outside, (vid, inside, outside)


def test_orbit_has_constant_speed_and_turns_one_way(tiny_raw):
    _, meta, _ = tiny_raw
    for track in tracks_of(meta, "Orbit"):
        steps = np.diff(track, axis=0)
        speeds = np.linalg.norm(steps, axis=1)
        assert speeds.min() > 0.5 and speeds.std() < 0.02 * speeds.mean()
        turns = steps[:-1, 0] * steps[1:, 1] - steps[:-1, 1] * steps[1:, 0]  # z of consecutive cross products
        assert np.all(turns > 0) or np.all(turns < 0)
        # the path is a circle: constant distance to the least-squares centre
        a = np.c_[2 * track, np.ones(len(track))]
        (cx, cy, _), *_ = np.linalg.lstsq(a, (track**2).sum(axis=1), rcond=None)
        radii = np.hypot(track[:, 0] - cx, track[:, 1] - cy)
        assert radii.std() < 0.02 * radii.mean()


def _dynamics(name: str, n: int = 48, seed: int = 3):
    return DYNAMICS[name](np.random.default_rng(seed), n, 1.0)


def test_decelerating_brakes_to_a_stop():
    for seed in range(5):
        track, _ = _dynamics("Decelerating", seed=seed)
        speeds = np.linalg.norm(np.diff(track, axis=0), axis=1)
        moving = speeds > 1e-9
        stop = int(np.argmin(moving))  # first step without motion
        assert 0.6 * 47 < stop < 0.9 * 47
        assert not moving[stop:].any() and np.all(np.diff(speeds[:stop]) < 0)


def test_projectile_has_constant_gravity_downwards():
    for seed in range(5):
        track, _ = _dynamics("Projectile", seed=seed)
        second_x, second_y = np.diff(track[:, 0], 2), np.diff(track[:, 1], 2)
        assert np.allclose(second_x, 0, atol=1e-9)
        assert np.allclose(second_y, second_y[0]) and second_y[0] > 0  # image y grows downwards
        assert track[1, 1] < track[0, 1]  # thrown upwards first


def test_bouncing_stays_in_its_box_at_constant_speed():
    for seed in range(5):
        track, _ = DYNAMICS["Bouncing"](np.random.default_rng(seed), 48, 1.0, box=30.0)
        assert track.min() >= 0 and track.max() <= 30.0
        steps = np.abs(np.diff(track, axis=0))
        per_axis = steps.max(axis=0)  # |v_x|, |v_y| between reflections
        assert 1.9 <= np.hypot(*per_axis) <= 2.7  # fast
        n_flips = 0
        for axis in range(2):
            direction = np.sign(np.diff(track[:, axis]))
            flips = np.flatnonzero(direction[1:] != direction[:-1])  # step i+1 moves the other way
            n_flips += len(flips)
            short = np.flatnonzero(~np.isclose(steps[:, axis], per_axis[axis]))
            # only a step that hits a wall is shorter (at either end the turn itself may be out of view)
            assert set(short) <= set(flips) | set(flips + 1) | {0, len(steps) - 1}
        assert n_flips > 0  # fast enough to reach a wall within 48 frames


def test_oscillation_is_harmonic_along_a_line():
    for seed in range(5):
        track, _ = _dynamics("Oscillation", seed=seed)
        assert np.allclose(np.linalg.svd(track, compute_uv=False)[1], 0, atol=1e-9)  # one line through 0
        farthest = track[np.argmax(np.linalg.norm(track, axis=1))]
        along = track @ (farthest / np.linalg.norm(farthest))  # signed displacement along that line
        # x'' = -omega^2 x: the second difference is proportional to -x with one constant
        ratio = -np.diff(along, 2) / along[1:-1]
        big = np.abs(along[1:-1]) > 0.3 * np.abs(along).max()
        assert np.all(ratio[big] > 0) and ratio[big].std() < 1e-6 + 0.01 * ratio[big].mean()


# --------------------------------------------------------------------------------------------------
# Layout: UCF101 names and splits, THUMOS-style untrimmed videos


UCF_NAME = re.compile(r"^(?P<cls>[A-Za-z]+)/v_(?P=cls)_g(?P<g>\d\d)_c(?P<c>\d\d)\.mp4$")


def test_ucf101_names_and_whole_groups_per_split(tiny_data, tiny_raw):
    config, _ = tiny_data
    root = tiny_raw[0]
    settings = config["datasets"]["synthetic"]["synthetic"]
    videos = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.mp4"))
    assert len(videos) == len(settings["classes"]) * settings["groups"] * settings["clips_per_group"]
    assert all(UCF_NAME.match(v) for v in videos), videos
    assert sorted({v.split("/")[0] for v in videos}) == sorted(settings["classes"])
    assert (root / "classInd.txt").read_text().split() == [
        str(x) for i, c in enumerate(settings["classes"]) for x in (i + 1, c)
    ]
    train = [line.split() for line in (root / "trainlist01.txt").read_text().splitlines() if line]
    test = [line.split() for line in (root / "testlist01.txt").read_text().splitlines() if line]
    assert sorted([t[0] for t in train] + [t[0] for t in test]) == videos
    for path, label in train:
        assert settings["classes"][int(label) - 1] == path.split("/")[0]
    split_of_group: dict[tuple[str, str], set[str]] = {}
    for subset, lines in (("train", train), ("test", test)):
        for fields in lines:
            match = UCF_NAME.match(fields[0])
            split_of_group.setdefault((match["cls"], match["g"]), set()).add(subset)
    assert all(len(s) == 1 for s in split_of_group.values())  # a group never straddles the split
    last = settings["groups"] - settings["test_groups"]
    for (_, group), subsets in split_of_group.items():
        assert subsets == ({"test"} if int(group) > last else {"train"})
    # split 2 (validation): the last val_groups training groups are its test part; no split-1 test video
    val_train = {line.split()[0] for line in (root / "trainlist02.txt").read_text().splitlines() if line}
    val_test = {line.split()[0] for line in (root / "testlist02.txt").read_text().splitlines() if line}
    assert val_train | val_test == {t[0] for t in train} and not val_train & val_test
    assert all(int(UCF_NAME.match(v)["g"]) > last - settings["val_groups"] for v in val_test)


def test_untrimmed_videos_parse_back_with_valid_segments(tiny_data, tiny_raw):
    config, _ = tiny_data
    root, meta, masks = tiny_raw
    settings = config["datasets"]["synthetic"]["synthetic"]
    fps, n = settings["fps"], settings["untrimmed"]["frames"]
    listing, missing = list_dataset("ucf101", root)
    assert missing == []
    untrimmed = [v for v in listing.videos if v.untrimmed]
    assert sorted(v.splits["1"] for v in untrimmed) == ["test"] * 2 + ["train"] * 2
    assert listing.classes == settings["classes"]
    for video in untrimmed:
        frames = decoded(root, video.video_id)
        assert len(frames) == n
        duration = len(frames) / fps
        segments = sorted((s.start, s.end, s.label) for s in listing.segments if s.video_id == video.video_id)
        assert segments, video.video_id
        truth = meta["videos"][video.video_id]["segments"]
        expected = [(round(a, 2), round(b, 2), settings["classes"].index(c)) for c, a, b in truth]
        assert [(round(a, 2), round(b, 2), c) for a, b, c in segments] == sorted(expected)
        previous_end = 0.0
        for start, end, _ in segments:
            assert previous_end <= start < end <= duration
            previous_end = end


def test_untrimmed_sprite_rests_between_segments(tiny_raw):
    """Outside the labelled segments nothing happens: the sprite's mask does not change."""
    _, meta, masks = tiny_raw
    fps = meta["settings"]["fps"]
    for vid, info in meta["videos"].items():
        if "segments" not in info:
            continue
        m = masks[vid]
        bounds = [(round(a * fps), round(b * fps)) for _, a, b in info["segments"]]
        idle_starts = [0] + [b - 1 for _, b in bounds]  # the last segment frame is where the sprite rests
        idle_ends = [a for a, _ in bounds] + [len(m)]
        for lo, hi in zip(idle_starts, idle_ends):
            assert all(np.array_equal(m[t], m[lo]) for t in range(lo, hi)), (vid, lo, hi)


def test_object_masks_and_boxes(tiny_raw):
    _, meta, masks = tiny_raw
    size = meta["settings"]["size"]
    root = tiny_raw[0]
    with h5py.File(root / "objects.h5") as objects:
        stored: list[str] = []
        objects.visititems(lambda name, node: stored.append(name.rsplit("/", 1)[0]) if name.endswith("/masks") else None)
        assert sorted(stored) == sorted(meta["videos"])  # one group per video, named by its id
        for vid, m in masks.items():
            assert m.dtype == bool and m.shape[1:] == (size, size)
            areas = m.sum(axis=(1, 2))
            assert areas.min() > 0, vid  # the sprite is on every frame
            assert areas.min() > 0.7 * areas.max(), vid  # ... and never leaves the frame
            boxes = objects[vid]["boxes"][()]
            for t in range(len(m)):
                ys, xs = np.nonzero(m[t])
                assert list(boxes[t]) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                assert 0 <= boxes[t][0] < boxes[t][2] <= size and 0 <= boxes[t][1] < boxes[t][3] <= size


# --------------------------------------------------------------------------------------------------
# Appearance knobs


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    padded = np.pad(mask, radius)
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out |= padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return out


def test_pool_sizes_set_the_background_and_look_ids(micro_datasets, tmp_path):
    default = json.loads((micro_datasets["seed0"] / "metadata.json").read_text())["videos"]
    assert all(v["background"] == -1 for v in default.values())  # backgrounds: 0 = fresh per video
    assert all(0 <= v["look"] < 8 for v in default.values())  # sprite_looks: 8

    root = tmp_path / "shared_scene"
    generate(root, synthetic_settings(tmp_path, backgrounds=1, sprite_looks=0, noise=0.0, distractors=[0, 0]), seed=0)
    videos = json.loads((root / "metadata.json").read_text())["videos"]
    assert all(v["background"] == 0 for v in videos.values())
    assert all(v["look"] == -1 for v in videos.values())
    with h5py.File(root / "objects.h5") as objects:
        first = {vid: (decoded(root, vid)[0].astype(float), _dilate(objects[vid]["masks"][0], 3)) for vid in videos}
    ids = list(first)
    for vid in ids[1:]:
        away = ~(first[vid][1] | first[ids[0]][1])
        assert np.abs(first[vid][0] - first[ids[0]][0])[away].mean() < 3, vid  # one shared background
    fresh = micro_datasets["seed0"]
    frame_a, frame_b = decoded(fresh, ids[0])[0].astype(float), decoded(fresh, ids[1])[0].astype(float)
    assert np.abs(frame_a - frame_b).mean() > 10  # control: fresh backgrounds differ


def test_odd_frame_size_is_rejected_with_a_message_naming_it(tmp_path):
    """x264 (yuv420p) cannot encode odd sizes; the user must hear about `size`, not an ffmpeg failure."""
    with pytest.raises(VididiError) as info:
        settings = synthetic_settings(tmp_path, size=33)
        generate(tmp_path / "odd", settings, seed=0)
    message = str(info.value)
    assert "size" in message and "encoding failed" not in message, message
