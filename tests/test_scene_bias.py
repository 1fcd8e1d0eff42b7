"""Scene bias: the class-scene background knob (exact scenes and scene styles) and the out-of-context split 3.

Videos are rendered in-process (ffmpeg replaced by a recorder) so every comparison is exact: the
same machine computes both sides.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_synthetic import MICRO, synthetic_settings

from vididi.config import SYNTHETIC_NEW_DEFAULTS, raw_settings
from vididi.data import synthetic
from vididi.data.synthetic import DYNAMICS, Appearance, render, sample_motion
from vididi.layout import OBJECTS_FILE


@pytest.fixture
def recorded(monkeypatch):
    """video id -> frames, instead of H.264 files."""
    frames: dict[str, np.ndarray] = {}

    def fake_encode(video, path, fps, crf):
        frames[Path(path).parent.name + "/" + Path(path).stem] = np.asarray(video).copy()

    monkeypatch.setattr(synthetic, "encode_h264", fake_encode)
    return frames


def make(tmp_path, cfg, job, seed=0):
    synthetic._init_worker(str(tmp_path), cfg, seed)
    return synthetic._make_video(job)


def motion_only(cfg, seed, ci, name, g, c):
    """Frames, masks and track of a trimmed video drawn from its own stream alone (no scene knob)."""
    app = Appearance(cfg, seed)
    rng = np.random.default_rng([seed, ci, g, c])
    scene, info = app.scene(rng)
    track, opacity = sample_motion(app, name, rng, cfg["frames"])
    frames, masks = render(app, scene, track, opacity, rng)
    return frames, masks, info, track


def content_digest(root: Path) -> str:
    """SHA-256 of a generated dataset: every file but objects.h5 (videos, lists, annotations,
    metadata.json) by path and bytes, then every array of objects.h5 by name and bytes."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != OBJECTS_FILE):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    with h5py.File(root / OBJECTS_FILE) as objects:
        objects.visititems(lambda name, obj: isinstance(obj, h5py.Dataset) and (h.update(name.encode()), h.update(obj[()].tobytes())) and None)
    return h.hexdigest()


def raw_frames_encoder(video, path, fps, crf):
    """Stands in for H.264: writes the rendered uint8 frames as they are (the digest then does not
    depend on the ffmpeg build, only on what the generator drew)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(np.ascontiguousarray(video, np.uint8).tobytes())


# SHA-256 of the micro dataset with all 8 classes as generated before the scene knobs (default settings) and with the
# exact-scene benchmark's knobs (p = 0.5, twins), by the code of version 0.1.0. A change to the
# generator that moves one pixel, mask, track or list line of either fails here: published numbers
# were measured on these datasets.
GOLDEN = {
    "default": "a2c3aa0745db3d74921c3b24ee9a71ce5ce633a3f3f3f2f048336bfb25260976",
    "exact scenes, p = 0.5, twins": "fcdfddcf2e4564265e3b1d7d3f7cb1d25fdd1aa05fd59360565b9af7a8795c56",
}


@pytest.mark.parametrize("name, changes", [("default", {}), ("exact scenes, p = 0.5, twins", {"scene_bias": 0.5, "ooc_split": True})])
def test_generated_content_matches_its_golden_hash(tmp_path, monkeypatch, name, changes):
    monkeypatch.setattr(synthetic, "encode_h264", raw_frames_encoder)
    cfg = synthetic_settings(tmp_path, classes=list(DYNAMICS), **changes)
    synthetic.generate(tmp_path / "ds", cfg, seed=0)
    assert content_digest(tmp_path / "ds") == GOLDEN[name]


def test_new_keys_at_their_defaults_change_no_recorded_setting(tmp_path):
    cfg = synthetic_settings(tmp_path)
    assert cfg["scene_bias"] == 0 and cfg["ooc_split"] is False
    # the keys added since 0.1.0, at their defaults, change no recorded setting and no settings hash
    recorded = raw_settings({"datasets": {"d": {"source": "synthetic", "root": None, "seed": 0, "synthetic": cfg}}}, "d")
    assert not set(SYNTHETIC_NEW_DEFAULTS) & set(recorded["synthetic"])


def test_p1_draws_every_background_from_the_class_pool(tmp_path, recorded):
    cfg = synthetic_settings(tmp_path, scene_bias=1.0, scene_pool=3)
    app = Appearance(cfg, 0)
    for ci, name in enumerate(MICRO["classes"]):
        for g in (1, 2):
            vid, masks, info = make(tmp_path, cfg, ("trimmed", ci, name, g, 1, "train"))
            assert info["scene_class"] == name and 0 <= info["scene_index"] < 3
            app.class_background(ci, np.random.default_rng(0))  # builds the pools
            expected_bg = app._class_pools[ci][info["scene_index"]]
            # far from the sprite (the whole track) and with no distractors, a pixel is the pool background
            frames, own_masks, _, track = motion_only(cfg, 0, ci, name, g, 1)
            assert np.array_equal(masks, own_masks)  # the motion is the one drawn at p = 0
            if info["distractors"] == 0:
                static = ~masks.any(axis=0)
                diff = np.abs(recorded[vid][0] / 255.0 - expected_bg)[static]
                assert np.median(diff) < 0.05  # up to sensor noise
    # p = 0.5: some videos keep their own background, some take the pool's
    cfg = synthetic_settings(tmp_path, scene_bias=0.5)
    hits = [make(tmp_path, cfg, ("trimmed", 0, "LinearMotion", 1, c, "train"))[2]["scene_class"] for c in range(1, 13)]
    assert 0 < sum(h is not None for h in hits) < len(hits)


def test_ooc_twin_shares_the_motion_and_changes_the_scene_class(tmp_path, recorded):
    cfg = synthetic_settings(tmp_path, scene_bias=1.0, ooc_split=True)
    for ci, name in enumerate(MICRO["classes"]):
        vid, masks, info = make(tmp_path, cfg, ("trimmed", ci, name, 2, 1, "test"))
        twin, twin_masks, twin_info = make(tmp_path, cfg, ("ooc", ci, name, 2, 1, "test"))
        assert twin == vid + "_ooc" and twin_info["twin_of"] == vid
        assert twin_info["track"] == info["track"] and np.array_equal(twin_masks, masks)  # same motion
        assert twin_info["class"] == name and twin_info["scene_class"] != name  # another class's scene
        assert twin_info["scene_class"] in MICRO["classes"]
        on_object = masks.any(axis=0)
        assert not np.array_equal(recorded[twin][:, ~on_object], recorded[vid][:, ~on_object])  # background differs


def test_ooc_split_lists(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "encode_h264", lambda video, path, fps, crf: Path(path).parent.mkdir(parents=True, exist_ok=True))
    cfg = synthetic_settings(tmp_path, ooc_split=True, untrimmed={"train": 0, "test": 0})
    root = tmp_path / "ds"
    synthetic.generate(root, cfg, seed=0)
    read = lambda name: (root / name).read_text().split("\n")[:-1]  # noqa: E731
    assert read("trainlist03.txt") == read("trainlist01.txt")
    assert read("testlist03.txt") == [f"{line[:-4]}_ooc.mp4" for line in read("testlist01.txt")]
    meta = json.loads((root / "metadata.json").read_text())
    assert meta["settings"]["ooc_split"] is True
    assert all(meta["videos"][line[:-4]]["scene_class"] != meta["videos"][line[:-4]]["class"] for line in read("testlist03.txt"))


def test_split_3_indexes_the_twins_as_test_and_split_1_ignores_them(tmp_path):
    from conftest import TINY, tiny_config
    from vididi.data.extract import build_index, extract_shard, write_manifest
    from vididi.data.shards import DatasetIndex
    from vididi.layout import raw_dir, read_manifest, shard_dir

    block = {**TINY["datasets"]["synthetic"]["synthetic"], "ooc_split": True, "scene_bias": 0.5,
             "untrimmed": {"train": 0, "test": 0}}  # fmt: skip
    config = tiny_config(tmp_path, datasets={"synthetic": {"synthetic": block, "split": "3"}})
    ds = config["datasets"]["synthetic"]
    synthetic.generate(raw_dir(config, "synthetic"), ds["synthetic"], seed=ds["seed"], workers=2)
    write_manifest(config, "synthetic")
    for shard in range(read_manifest(config, "synthetic")["n_shards"]):
        extract_shard(config, "synthetic", shard)
    build_index(config, "synthetic")
    index = DatasetIndex.for_dataset(config, "synthetic")
    ooc_test = sorted(index.video_id[index.select("test")])
    assert ooc_test and all(v.endswith("_ooc") for v in ooc_test)
    in_context = DatasetIndex.for_dataset({**config, "datasets": {"synthetic": {**ds, "split": "1"}}}, "synthetic")
    assert sorted(index.video_id[index.select("train")]) == sorted(in_context.video_id[in_context.select("train")])
    assert sorted(f"{v}_ooc" for v in in_context.video_id[in_context.select("test")]) == ooc_test
    assert index.stats and shard_dir(config, "synthetic").is_dir()


# --------------------------------------------------------------------------------------------------
# Scene styles: a texture family and palette per class, one instance per group


def test_style_scenes_are_the_groups_instance_of_the_class_style(tmp_path, recorded):
    import colorsys

    cfg = synthetic_settings(tmp_path, scene_bias=1.0, scenes="style", distractors=[0, 0], groups=3, clips_per_group=2)
    app = Appearance(cfg, 0)
    styles = synthetic.class_styles(len(MICRO["classes"]), 0)
    assert len({(s.texture, round(s.hue, 6)) for s in styles}) == len(styles)
    backgrounds = {}
    for ci, name in enumerate(MICRO["classes"]):
        for g in (1, 2, 3):
            for c in (1, 2):
                vid, masks, info = make(tmp_path, cfg, ("trimmed", ci, name, g, c, "train"))
                assert (info["scene_class"], info["scene_index"]) == (name, g)
                expected = app.style_background(ci, g)
                static = ~masks.any(axis=0)
                assert np.median(np.abs(recorded[vid][0] / 255.0 - expected)[static]) < 0.05  # up to sensor noise
                frames, own_masks, _, _ = motion_only(cfg, 0, ci, name, g, c)
                assert np.array_equal(masks, own_masks)  # the motion is the video's own
                backgrounds[ci, g] = expected
            # the instance has its class's hue: the mean colour's hue is within the jitter
            r, gr, b = backgrounds[ci, g].reshape(-1, 3).mean(axis=0)
            hue = colorsys.rgb_to_hsv(r, gr, b)[0]
            assert min(abs(hue - styles[ci].hue), 1 - abs(hue - styles[ci].hue)) < 0.05
    # every (class, group) instance is its own picture
    keys = list(backgrounds)
    assert all(not np.array_equal(backgrounds[a], backgrounds[b]) for i, a in enumerate(keys) for b in keys[i + 1:])


def test_style_twins_keep_the_motion_and_take_another_class_style(tmp_path, recorded):
    cfg = synthetic_settings(tmp_path, scene_bias=1.0, scenes="style", ooc_split=True)
    for ci, name in enumerate(MICRO["classes"]):
        vid, masks, info = make(tmp_path, cfg, ("trimmed", ci, name, 2, 1, "test"))
        twin, twin_masks, twin_info = make(tmp_path, cfg, ("ooc", ci, name, 2, 1, "test"))
        assert twin_info["track"] == info["track"] and np.array_equal(twin_masks, masks)
        assert twin_info["scene_class"] != name and twin_info["scene_index"] is None


@pytest.mark.parametrize("scenes, in_context, twins", [("exact", 1.0, 1.0), ("style", 0.0, 0.0)])
def test_scene_overlap_counts_exact_backgrounds_shared_with_training_videos(tmp_path, scenes, in_context, twins):
    # one exact scene per class: every test video shows its class's only pool background, every twin
    # the other class's; with styles no test video shows a training video's exact background
    cfg = synthetic_settings(tmp_path, scene_bias=1.0, scene_pool=1, scenes=scenes, ooc_split=True, groups=3, clips_per_group=2)
    split1, split3 = synthetic.scene_overlap(cfg, 0, "1"), synthetic.scene_overlap(cfg, 0, "3")
    assert split1["test_videos"] == split3["test_videos"] == 4
    assert split1["share"] == split1["same_class"] / 4 == in_context and split1["other_class"] == 0
    assert split3["share"] == split3["other_class"] / 4 == twins and split3["same_class"] == 0
    # p = 0: fresh backgrounds everywhere, nothing shared (the default dataset)
    assert synthetic.scene_overlap(synthetic_settings(tmp_path, groups=3), 0)["shared"] == 0


def test_the_summary_states_how_many_test_videos_show_a_training_background(tmp_path):
    from conftest import TINY, tiny_config
    from vididi.stages.summary import scene_overlap_lines

    block = {**TINY["datasets"]["synthetic"]["synthetic"], "scene_bias": 1.0, "scene_pool": 1, "ooc_split": True}
    datasets = {"ex": {"synthetic": block}, "ex_ooc": {"synthetic": block, "split": "3"},
                "st": {"synthetic": {**block, "scenes": "style"}}, "synthetic": {}}  # fmt: skip
    config = tiny_config(tmp_path, datasets={k: {"source": "synthetic", **v} for k, v in datasets.items()})
    (line,) = scene_overlap_lines(config, [{"eval_dataset": name} for name in ("ex", "ex_ooc", "st", "synthetic")])
    n = 4 * 2  # 4 classes x 1 test group x 2 clips
    assert f"ex (exact scenes, split 1) {n} of {n} (100.0%; same class {n}, other class 0)" in line
    assert f"ex_ooc (exact scenes, split 3) {n} of {n} (100.0%; same class 0, other class {n})" in line
    assert f"st (style scenes, split 1) 0 of {n} (0.0%" in line
    assert "synthetic (" not in line  # no class scenes: nothing to count
    assert scene_overlap_lines(config, [{"eval_dataset": "synthetic"}]) == []
