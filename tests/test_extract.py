"""Extraction: ffmpeg -> HDF5 shards -> index. Round trip, index contents, bad videos, interruptions."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from vididi.data import extract as extract_mod
from vididi.data.extract import build_index, extract_shard, write_manifest
from vididi.data.ffmpeg import DecodedVideo, decode, ffmpeg_binary
from vididi.data.shards import DatasetIndex, FrameReader, ShardWriter, read_video_table
from vididi.layout import raw_dir, read_manifest, shard_dir
from vididi.utils import VididiError

DS = "synthetic"


def run_data_stage(config: dict, dataset: str = DS, index: bool = True) -> Path:
    """manifest -> every shard -> index, in process; returns the shard folder."""
    write_manifest(config, dataset)
    for shard in range(read_manifest(config, dataset)["n_shards"]):
        extract_shard(config, dataset, shard)
    if index:
        build_index(config, dataset)
    return shard_dir(config, dataset)


def stored_frames(reader: FrameReader, row: int) -> np.ndarray:
    """All frames of index row `row` as (F, H, W, 3) uint8."""
    n = int(reader.index.n_frames[row])
    return reader.read(row, np.arange(n)).permute(0, 2, 3, 1).numpy()


_DECODED: dict[tuple, list[np.ndarray]] = {}


def source_frames(config: dict, dataset: str, path: str) -> list[np.ndarray]:
    """The source video decoded directly with the dataset's extraction settings (cached by file content:
    several tests read copies of the same videos, and an ffmpeg start is the slow part)."""
    ext = config["datasets"][dataset]["extract"]
    file = raw_dir(config, dataset) / path
    key = (hashlib.sha1(file.read_bytes()).hexdigest(), ext["fps"], ext["short_side"])
    if key not in _DECODED:
        _DECODED[key] = list(decode(file, fps=ext["fps"], short_side=ext["short_side"]).frames)
    return _DECODED[key]


def paths_by_id(config: dict, dataset: str = DS) -> dict[str, str]:
    return {v["video_id"]: v["path"] for v in read_manifest(config, dataset)["videos"]}


def jpeg_round_trip(frame: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


@contextlib.contextmanager
def vididi_records() -> Iterator[list[logging.LogRecord]]:
    """Records of the 'vididi' logger (it may not propagate to the root logger once the CLI set it up)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("vididi")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture
def vididi_log():
    with vididi_records() as records:
        yield records


def over_tiny_videos(tiny_data, workdir: Path, root: Path | None = None, **extract) -> dict:
    """A config whose dataset reads the tiny dataset's videos (or a copy at `root`) into `workdir`."""
    config, _ = tiny_data
    source = root or raw_dir(config, DS)
    return tiny_config(workdir, datasets={DS: {"root": str(source), "extract": extract}})


# --------------------------------------------------------------------------------------------------
# Round trip


def test_jpeg_round_trip_matches_the_source(tiny_data):
    config, index = tiny_data
    quality = config["datasets"][DS]["extract"]["jpeg_quality"]
    reader, paths = FrameReader(index), paths_by_id(config)
    settings = config["datasets"][DS]["synthetic"]
    errors = []
    for row in range(len(index)):
        vid = index.video_id[row]
        source = source_frames(config, DS, paths[vid])
        stored = stored_frames(reader, row)
        assert len(stored) == len(source) == (settings["untrimmed"]["frames"] if index.untrimmed[row] else settings["frames"])
        # each stored frame IS its source frame through JPEG at the configured quality (so order and count are right) ...
        for t, frame in enumerate(source):
            assert np.abs(stored[t].astype(float) - jpeg_round_trip(frame, quality)).mean() < 0.5, (vid, t)
        errors.append(np.abs(stored.astype(float) - np.stack(source)).mean())
    reader.close()
    # ... and JPEG keeps it close: measured 4 grey levels on average (8 at worst) on these tiny 32x32
    # frames with sensor noise and sharp sprite edges, where 4:2:0 chroma subsampling costs the most
    assert np.mean(errors) < 5 and max(errors) < 10, errors


@pytest.fixture(scope="module")
def raw_shards(tiny_data, tmp_path_factory):
    """The tiny videos extracted with `encoding: raw`, with many clips for the derivative scales."""
    config, _ = tiny_data
    workdir = tmp_path_factory.mktemp("raw")
    raw_config = tiny_config(
        workdir, datasets={DS: {"root": str(raw_dir(config, DS)), "extract": {"encoding": "raw"}, "clips": {"sigma_clips": 400}}}
    )
    folder = run_data_stage(raw_config)
    return raw_config, DatasetIndex.load(folder)


def test_raw_round_trip_is_exact(raw_shards):
    config, index = raw_shards
    reader, paths = FrameReader(index), paths_by_id(config)
    for row in range(len(index)):
        source = np.stack(source_frames(config, DS, paths[index.video_id[row]]))
        assert np.array_equal(stored_frames(reader, row), source), index.video_id[row]
    reader.close()


def test_shard_layout_is_consistent(raw_shards):
    """offsets has one entry per frame plus one, data ends at the last offset, videos are contiguous."""
    config, index = raw_shards
    folder = shard_dir(config, DS)
    size = config["datasets"][DS]["extract"]["shard_size"]
    manifest = read_manifest(config, DS)
    assert manifest["n_shards"] == -(-len(manifest["videos"]) // size)
    for shard in range(manifest["n_shards"]):
        with h5py.File(folder / f"shard-{shard:05d}.h5") as h5:
            offsets, n_bytes = h5["offsets"][()], h5["data"].shape[0]
            assert h5.attrs["encoding"] == "raw"
            starts, counts = h5["videos/frame_start"][()], h5["videos/n_frames"][()]
            heights, widths = h5["videos/height"][()], h5["videos/width"][()]
        assert offsets[0] == 0 and offsets[-1] == n_bytes and len(offsets) == counts.sum() + 1
        expected_start = 0
        for start, count, h, w in zip(starts, counts, heights, widths):
            assert start == expected_start
            assert np.all(np.diff(offsets[start : start + count + 1]) == h * w * 3)
            expected_start += count
        expected_ids = [v["video_id"] for v in manifest["videos"] if v["shard"] == shard]
        assert list(read_video_table(folder / f"shard-{shard:05d}.h5")[0]["video_id"]) == expected_ids


def test_index_and_dataset_json(tiny_data):
    config, index = tiny_data
    root = raw_dir(config, DS)
    folder = shard_dir(config, DS)
    settings = config["datasets"][DS]["synthetic"]
    classes = [line.split()[1] for line in (root / "classInd.txt").read_text().splitlines()]
    train = {line.split()[0][:-4] for line in (root / "trainlist01.txt").read_text().splitlines() if line}
    test = {line.strip()[:-4] for line in (root / "testlist01.txt").read_text().splitlines() if line}
    untrimmed = {p.relative_to(root).with_suffix("").as_posix(): p for p in (root / "untrimmed").rglob("*.mp4")}

    info = json.loads((folder / "dataset.json").read_text())
    assert info["classes"] == classes == settings["classes"]
    assert (info["n_videos"], info["n_bad"]) == (len(train) + len(test) + len(untrimmed), 0)
    assert (folder / "bad_videos.tsv").read_text() == "video_id\tpath\treason\n"

    header, *rows = [line.split("\t") for line in (folder / "index.tsv").read_text().splitlines()]
    assert header == ["video_id", "shard", "frame_start", "n_frames", "height", "width", "fps", "label", "untrimmed", "splits", "digest"]
    assert sorted(r[0] for r in rows) == sorted(train | test | set(untrimmed))
    shard_size = config["datasets"][DS]["extract"]["shard_size"]
    for position, row in enumerate(rows):
        vid, shard, _, n_frames, height, width, fps, label, is_untrimmed, splits, digest = row
        assert re.fullmatch(r"[0-9a-f]{32}", digest), digest
        assert int(shard) == position // shard_size  # videos in id order, shard_size per shard
        assert (int(height), int(width), float(fps)) == (settings["size"], settings["size"], settings["fps"])
        if vid in untrimmed:
            assert (label, is_untrimmed, int(n_frames)) == ("-1", "1", settings["untrimmed"]["frames"])
            assert splits == ("1:train" if "/validation/" in vid else "1:test")
        else:
            assert classes[int(label)] == vid.split("/")[0]
            assert (is_untrimmed, int(n_frames)) == ("0", settings["frames"])
            # split 2 (validation) divides split 1's training groups and leaves its test groups out
            group = int(vid.rsplit("_g", 1)[1][:2])
            val = settings["groups"] - settings["test_groups"] - settings["val_groups"] < group
            expected = ("1:train," + ("2:test" if val else "2:train")) if vid in train else "1:test"
            assert splits == expected
    # temporal ground truth of the untrimmed videos, in seconds, as annotated
    annotated = []
    for file in (root / "untrimmed" / "annotation").glob("*.txt"):
        cls = file.stem.rsplit("_", 1)[0]
        for line in file.read_text().splitlines():
            name, start, end = line.split()
            vid = next(v for v in untrimmed if v.endswith("/" + name))
            annotated.append((vid, float(start), float(end), classes.index(cls)))
    assert sorted((v, round(a, 2), round(b, 2), c) for v, a, b, c in info["segments"]) == sorted(annotated)


def test_stats_match_an_exhaustive_measurement(raw_shards):
    """mean / sigma_k from 400 random clips agree with the same quantities over EVERY training clip."""
    config, index = raw_shards
    clips = config["datasets"][DS]["clips"]
    stats = index.stats
    assert stats["clips"] == 400 and len(stats["mean"]) == 3 and len(stats["sigma"]) == 3
    reader = FrameReader(index)
    length, stride = clips["frames"] + 2, clips["stride"]
    span = (length - 1) * stride + 1
    frames_all, orders = [], ([], [], [])
    for row in index.select("train"):
        x = stored_frames(reader, row).astype(float) / 255
        frames_all.append(x)
        for start in range(len(x) - span + 1):
            c = x[start : start + span : stride]  # the clip's T+2 frames
            t = clips["frames"]
            orders[0].append(c[:t])
            orders[1].append(c[1 : t + 1] - c[:t])
            orders[2].append(c[2 : t + 2] - 2 * c[1 : t + 1] + c[:t])
    reader.close()
    mean = np.concatenate(frames_all).mean(axis=(0, 1, 2))
    sigma = [np.concatenate(o).std() for o in orders]
    assert np.allclose(stats["mean"], mean, atol=0.03), (stats["mean"], mean)
    assert np.allclose(stats["sigma"], sigma, rtol=0.1), (stats["sigma"], sigma)
    assert all(s > 0 for s in stats["sigma"]) and stats["sigma"][1] < stats["sigma"][0]


# --------------------------------------------------------------------------------------------------
# Bad videos: skipped, listed with a reason, counted; the stage fails only past max_bad_fraction

CORRUPTED = {  # video id -> what is done to its file
    "Accelerating/v_Accelerating_g01_c01": "zero_bytes",
    "Accelerating/v_Accelerating_g02_c01": "cut_in_half",
    "LinearMotion/v_LinearMotion_g01_c01": "text",
    "LinearMotion/v_LinearMotion_g02_c02": "random_bytes",
    "Orbit/v_Orbit_g01_c02": "truncated_streamable",
    "Orbit/v_Orbit_g02_c01": "deleted",
}


def corrupt(path: Path, how: str) -> None:
    if how == "zero_bytes":
        path.write_bytes(b"")
    elif how == "cut_in_half":  # ffmpeg writes the mp4 index (moov) last: this file cannot be opened
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "text":
        path.write_text("<html>404 Not Found</html>\n" * 20)
    elif how == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(20_000))
    elif how == "truncated_streamable":  # index first (faststart): opens, decodes about half the frames
        streamable = path.with_name("streamable.mp4")
        subprocess.run([ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-i", str(path), "-c", "copy",
                        "-movflags", "+faststart", str(streamable)], check=True)  # fmt: skip
        data = streamable.read_bytes()
        streamable.unlink()
        path.write_bytes(data[: len(data) // 2])
    elif how == "deleted":
        path.unlink()
    else:
        raise ValueError(how)


@pytest.fixture(scope="module")
def corrupted(tiny_data, tmp_path_factory):
    """A copy of the tiny videos with bad files; extracted; indexed first with the default
    max_bad_fraction (must fail) then with a lenient one. Returns what each step left."""
    config, _ = tiny_data
    workdir = tmp_path_factory.mktemp("corrupted")
    root = workdir / "videos"
    shutil.copytree(raw_dir(config, DS), root)
    for vid, how in CORRUPTED.items():
        corrupt(root / f"{vid}.mp4", how)
    with vididi_records() as records:
        strict = over_tiny_videos(tiny_data, workdir, root=root)
        assert strict["datasets"][DS]["extract"]["max_bad_fraction"] == 0.05
        folder = run_data_stage(strict, index=False)
        with pytest.raises(VididiError) as failure:
            build_index(strict, DS)
        named = Path(str(failure.value).rsplit("see ", 1)[-1])  # the report the message points at
        after_failure = {
            "bad_tsv": named.read_text() if named.is_file() else None,
            "named": named,
            "index_exists": (folder / "index.tsv").exists(),
        }
        lenient = over_tiny_videos(tiny_data, workdir, root=root, max_bad_fraction=0.25)
        build_index(lenient, DS)
    return {"config": lenient, "folder": folder, "failure": failure.value, "after_failure": after_failure, "log": records}


def read_bad(folder: Path) -> dict[str, tuple[str, str]]:
    header, *rows = (folder / "bad_videos.tsv").read_text().splitlines()
    assert header == "video_id\tpath\treason"
    out = {}
    for row in rows:
        vid, path, reason = row.split("\t")
        out[vid] = (path, reason)
    return out


def test_every_bad_video_is_listed_with_its_reason(corrupted):
    bad = read_bad(corrupted["folder"])
    assert sorted(bad) == sorted(CORRUPTED)
    for vid, (path, reason) in bad.items():
        assert path == f"{vid}.mp4" and reason.strip(), vid
        how = CORRUPTED[vid]
        if how == "deleted":
            assert reason.startswith("missing:") and "list0" in reason  # named in a split list
        elif how == "truncated_streamable":
            assert "truncated" in reason
        elif how == "zero_bytes":
            assert reason == "empty file (0 bytes)"
        else:
            assert "cannot decode" in reason and "/" not in reason, (how, reason)  # no absolute path


def test_bad_videos_are_skipped_and_counted(corrupted):
    folder = corrupted["folder"]
    index = DatasetIndex.load(folder)
    assert not set(index.video_id) & set(CORRUPTED)
    assert len(index) == 28 - len(CORRUPTED)
    info = json.loads((folder / "dataset.json").read_text())
    assert (info["n_videos"], info["n_bad"]) == (22, 6)
    messages = [r.getMessage() for r in corrupted["log"]]
    warned = [m for m in messages if m.startswith("bad video")]
    assert len(warned) == 5  # the deleted file never reaches extraction; the manifest counts it
    assert any("(1 listed but missing)" in m for m in messages)
    assert any("indexed 22 videos (6 bad)" in m for m in messages)
    # the shard files record their own bad videos too
    in_shards = sum(len(read_video_table(p)[1]) for p in sorted(folder.glob("shard-*.h5")))
    assert in_shards == 5


def test_good_videos_around_bad_ones_read_back_intact(corrupted):
    """A video that decoded partly and was then dropped (truncated) leaves no frames behind."""
    config, folder = corrupted["config"], corrupted["folder"]
    index = DatasetIndex.load(folder)
    quality = config["datasets"][DS]["extract"]["jpeg_quality"]
    reader, paths = FrameReader(index), paths_by_id(config)
    for row in range(len(index)):
        if not index.video_id[row].startswith(("Orbit/", "Pulsing/")):
            continue  # the videos stored after the truncated one
        source = source_frames(config, DS, paths[index.video_id[row]])
        stored = stored_frames(reader, row)
        assert len(stored) == len(source)
        assert np.abs(stored[-1].astype(float) - jpeg_round_trip(source[-1], quality)).mean() < 0.5
        assert np.abs(stored[0].astype(float) - jpeg_round_trip(source[0], quality)).mean() < 0.5
    reader.close()


def test_too_many_bad_videos_fail_with_one_clear_line(corrupted):
    message = str(corrupted["failure"])
    assert "\n" not in message
    assert "6 of 28" in message and "max_bad_fraction=0.05" in message and "bad_videos.tsv" in message
    after = corrupted["after_failure"]
    assert after["bad_tsv"] is not None and len(after["bad_tsv"].splitlines()) == 1 + len(CORRUPTED)
    # Snakemake deletes a failed job's outputs: the report named must not be one (it sits with the logs)
    assert after["named"].parent.name == DS and after["named"].parent.parent.name == "logs"
    assert not after["index_exists"]  # no index that looks usable


def test_folder_source_with_bad_files(tiny_data, tmp_path, vididi_log):
    config, _ = tiny_data
    videos = raw_dir(config, DS)
    root = tmp_path / "my_videos"
    for cls, source in (("walk", "LinearMotion"), ("wave", "Pulsing")):
        (root / cls / "sub").mkdir(parents=True)
        for i, file in enumerate(sorted((videos / source).glob("*.mp4"))[:3]):
            shutil.copy(file, root / cls / ("sub" if i == 0 else "") / f"clip{i}.mp4")
    (root / "walk" / "empty.mp4").write_bytes(b"")
    (root / "wave" / "notes.mp4").write_text("not a video")
    folder_config = tiny_config(
        tmp_path, datasets={"mine": {"source": "folder", "root": str(root), "clips": config["datasets"][DS]["clips"],
                                     "extract": {"short_side": 16, "shard_size": 3, "max_bad_fraction": 0.3}}},
    )  # fmt: skip
    folder = run_data_stage(folder_config, "mine")
    index = DatasetIndex.load(folder)
    assert index.classes == ["walk", "wave"]
    assert sorted(index.video_id) == sorted(
        f"{c}/{'sub/' if i == 0 else ''}clip{i}" for c in ("walk", "wave") for i in range(3)
    )
    assert set(index.height) == {16}  # short_side applies to user videos too
    assert sorted(read_bad(folder)) == ["walk/empty", "wave/notes"]
    assert {s["1"] for s in index.splits} == {"train", "test"}
    assert any("indexed 6 videos (2 bad)" in r.getMessage() for r in vididi_log)


def folder_of_classes(tiny_data, root: Path, classes: dict[str, int]) -> None:
    """`root/<class>/clipN.mp4`: copies of the tiny videos, `count` per class."""
    config, _ = tiny_data
    sources = sorted((raw_dir(config, DS) / "LinearMotion").glob("*.mp4"))
    for cls, count in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(count):
            shutil.copy(sources[i], root / cls / f"clip{i}.mp4")


def folder_config(tiny_data, workdir: Path, root: Path, **extract) -> dict:
    config, _ = tiny_data
    return tiny_config(workdir, datasets={"mine": {"source": "folder", "root": str(root), "clips": config["datasets"][DS]["clips"],
                                                   "extract": {"short_side": 16, "shard_size": 4, **extract}}})  # fmt: skip


def test_a_class_index_entry_without_videos_stops_the_manifest(tiny_data, tmp_path):
    root = tmp_path / "videos"
    folder_of_classes(tiny_data, root, {"walk": 2, "wave": 2})
    (root / "classInd.txt").write_text("1 walk\n2 jump\n3 wave\n")  # no folder `jump`
    config = folder_config(tiny_data, tmp_path, root)
    with pytest.raises(VididiError) as failure:
        write_manifest(config, "mine")
    message = str(failure.value)
    assert "\n" not in message
    assert "class 'jump'" in message and f"{root / 'classInd.txt'}:2" in message, message
    assert not (shard_dir(config, "mine") / "manifest.json").exists()


def test_a_class_whose_videos_are_all_bad_stops_the_index(tiny_data, tmp_path):
    root = tmp_path / "videos"
    folder_of_classes(tiny_data, root, {"walk": 3, "wave": 3, "jump": 2})
    for clip in (root / "jump").iterdir():
        clip.write_text("not a video")
    config = folder_config(tiny_data, tmp_path, root, max_bad_fraction=0.5)  # 2 of 8 bad: within the limit
    run_data_stage(config, "mine", index=False)
    with pytest.raises(VididiError) as failure:
        build_index(config, "mine")
    message = str(failure.value)
    assert "\n" not in message
    assert "class 'jump'" in message and "all 2 of its videos" in message and "bad_videos.tsv" in message, message
    assert not (shard_dir(config, "mine") / "index.tsv").exists()


# --------------------------------------------------------------------------------------------------
# Interruptions and failures part way


def test_interrupted_shard_write_leaves_no_shard(tiny_data, tmp_path, monkeypatch):
    config = over_tiny_videos(tiny_data, tmp_path)
    write_manifest(config, DS)
    folder = shard_dir(config, DS)
    real_append, calls = ShardWriter._append, []

    def append_then_interrupt(self, blobs):
        calls.append(len(blobs))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third video is being written
        real_append(self, blobs)

    monkeypatch.setattr(ShardWriter, "_append", append_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract_shard(config, DS, 0)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]  # no shard, no temporary file

    # an interrupted re-extraction leaves the complete shard of an earlier run untouched
    monkeypatch.setattr(ShardWriter, "_append", real_append)
    extract_shard(config, DS, 0)
    before = (folder / "shard-00000.h5").read_bytes()
    calls.clear()
    monkeypatch.setattr(ShardWriter, "_append", append_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract_shard(config, DS, 0)
    assert (folder / "shard-00000.h5").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "shard-00000.h5"]


KILL_MIDWAY = """
import json, os, signal, sys
from vididi.data.shards import ShardWriter
from vididi.data.extract import extract_shard
config = json.loads(open(sys.argv[1]).read())
real_append, calls = ShardWriter._append, []
def append_then_die(self, blobs):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # the job is killed: no Python clean-up runs
    real_append(self, blobs)
ShardWriter._append = append_then_die
extract_shard(config, "synthetic", 0)
"""


def test_killed_extraction_leaves_nothing_that_looks_like_a_shard(tiny_data, tmp_path):
    config = over_tiny_videos(tiny_data, tmp_path)
    write_manifest(config, DS)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    env = {**os.environ, "VIDIDI_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-c", KILL_MIDWAY, str(config_file)], env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    folder = shard_dir(config, DS)
    assert not (folder / "shard-00000.h5").exists()
    assert all(p.name.startswith(".") for p in folder.glob("*shard-00000*"))  # at most a hidden temporary file
    with pytest.raises(VididiError, match="shard-00000.h5 not found"):
        build_index(config, DS)
    extract_shard(config, DS, 0)  # a rerun completes
    table, bad, _ = read_video_table(folder / "shard-00000.h5")
    assert len(table["video_id"]) == 10 and bad == []


def test_video_failing_mid_stream_is_rolled_back(tiny_data, tmp_path, monkeypatch):
    """A decode error after some frames were already flushed to the shard removes exactly those frames."""
    config = over_tiny_videos(tiny_data, tmp_path, encoding="raw")
    write_manifest(config, DS)
    entries = [v for v in read_manifest(config, DS)["videos"] if v["shard"] == 0]
    victim = entries[4]["video_id"]  # in the middle of the shard
    real_decode = extract_mod.decode

    def failing_decode(path, **kwargs):
        video = real_decode(path, **kwargs)
        if not str(path).endswith(f"{victim}.mp4"):
            return video

        def frames():
            decoded = list(video.frames)
            for i in range(70):  # more than ShardWriter's block of 64 frames: one block is already written
                yield decoded[i % len(decoded)]
            raise VididiError(f"{path}: decoding failed: simulated corruption")

        return DecodedVideo(frames(), video.width, video.height, video.fps, video.expected_frames)

    monkeypatch.setattr(extract_mod, "decode", failing_decode)
    shard = extract_shard(config, DS, 0)
    table, bad, _ = read_video_table(shard)
    assert bad == [(victim, f"{victim}.mp4", "decoding failed: simulated corruption")]
    assert list(table["video_id"]) == [e["video_id"] for e in entries if e["video_id"] != victim]
    with h5py.File(shard) as h5:
        data, offsets = h5["data"][()], h5["offsets"][()]
    assert len(offsets) == table["n_frames"].sum() + 1 and offsets[-1] == len(data)
    assert list(table["frame_start"]) == list(np.cumsum([0, *table["n_frames"][:-1]]))
    columns = ("video_id", "frame_start", "n_frames", "height", "width")
    for vid, start, count, h, w in zip(*(table[c] for c in columns)):
        source = np.stack(source_frames(config, DS, f"{vid}.mp4"))
        stored = np.stack([data[offsets[f] : offsets[f + 1]].reshape(h, w, 3) for f in range(start, start + count)])
        assert np.array_equal(stored, source), vid


def test_shard_writer_rolls_back_a_failed_video(tmp_path):
    rng = np.random.default_rng(0)
    clip_a, clip_c = rng.integers(0, 256, (10, 4, 6, 3), np.uint8), rng.integers(0, 256, (5, 4, 6, 3), np.uint8)
    meta = {"path": "x.mp4", "splits": "1:train", "label": 0, "untrimmed": False}

    def failing(n_good):
        yield from rng.integers(0, 256, (n_good, 4, 6, 3), np.uint8)
        raise VididiError("broken")

    with h5py.File(tmp_path / "s.h5", "w") as h5:
        writer = ShardWriter(h5, "raw", flush_frames=4)
        assert writer.add_video({**meta, "video_id": "a"}, iter(clip_a), 4, 6, 8.0) == 10
        with pytest.raises(VididiError):
            writer.add_video({**meta, "video_id": "b"}, failing(7), 4, 6, 8.0)  # one block of 4 was flushed
        assert writer.add_video({**meta, "video_id": "c"}, iter(clip_c), 4, 6, 8.0) == 5
        writer.close()
    table, bad, _ = read_video_table(tmp_path / "s.h5")
    assert list(table["video_id"]) == ["a", "c"] and list(table["frame_start"]) == [0, 10] and bad == []
    # each video's digest covers exactly its own frames (the rolled-back frames of "b" are in neither)
    assert list(table["digest"]) == [hashlib.blake2b(b"".join(f.tobytes() for f in clip), digest_size=16).hexdigest()
                                     for clip in (clip_a, clip_c)]  # fmt: skip
    with h5py.File(tmp_path / "s.h5") as h5:
        data, offsets = h5["data"][()], h5["offsets"][()]
    assert list(offsets) == [72 * i for i in range(16)] and len(data) == 15 * 72
    assert np.array_equal(data.reshape(15, 4, 6, 3), np.concatenate([clip_a, clip_c]))


def test_stage_arguments_are_checked(tiny_data, tmp_path):
    config = over_tiny_videos(tiny_data, tmp_path)
    with pytest.raises(VididiError, match="manifest.json not found"):
        extract_shard(config, DS, 0)
    write_manifest(config, DS)
    with pytest.raises(VididiError, match=r"shards 0\.\.2, not 3"):
        extract_shard(config, DS, 3)
    missing_root = tiny_config(tmp_path, datasets={DS: {"root": str(tmp_path / "nowhere")}})
    with pytest.raises(VididiError, match="not found"):
        write_manifest(missing_root, DS)


def test_each_split_has_its_own_selection_and_stats(tiny_data):
    """Split 2 (validation) lies inside split 1's training videos, with derivative scales of its own."""
    _, index = tiny_data
    val = DatasetIndex.load(index.root, "2")
    assert set(index.info["stats"]) == {"1", "2"} and index.split == "1"
    official_train, official_test = set(index.select("train")), set(index.select("test"))
    assert set(val.select("test")) and set(val.select("test")) <= official_train
    assert set(val.select("train")) | set(val.select("test")) == official_train
    assert not (set(val.select("train")) | set(val.select("test"))) & official_test
    assert len(val.select("train", untrimmed=True)) == 0  # detection videos belong to split 1 only
    assert val.stats != index.stats and all(s > 0 for s in val.stats["sigma"])


# --------------------------------------------------------------------------------------------------
# Damage is found and named


def copy_of_tiny_shards(tiny_data, tmp_path) -> Path:
    folder = tmp_path / "shards"
    shutil.copytree(shard_dir(tiny_data[0], DS), folder)
    return folder


def video_in_shard(index: DatasetIndex, shard: int) -> int:
    return int(np.flatnonzero(index.shard == shard)[0])


@pytest.mark.parametrize("seed", range(5))
def test_a_flipped_bit_in_a_shards_frames_is_caught_and_named(tiny_data, tmp_path, seed):
    """One flipped bit in the stored JPEG bytes: before 0.2.0, 3 of 5 such flips decoded silently to
    another frame. The Fletcher-32 checksums catch each; the line names the shard and the video, and
    the shard is moved aside for the next `snakemake` to rebuild."""
    folder = copy_of_tiny_shards(tiny_data, tmp_path)
    shard = folder / "shard-00000.h5"
    with h5py.File(shard, "r") as h5:
        chunk = h5["data"].id.get_chunk_info(0)
    rng = np.random.default_rng(seed)
    position = chunk.byte_offset + int(rng.integers(chunk.size))
    with shard.open("r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ (1 << int(rng.integers(8)))]))
    index = DatasetIndex.load(folder)
    video = video_in_shard(index, 0)
    reader = FrameReader(index)
    with pytest.raises(VididiError) as excinfo:
        reader.read(video, np.arange(int(index.n_frames[video])))
    message = str(excinfo.value)
    assert message.startswith(f"shard {shard}, video {index.video_id[video]} is damaged (") and "\n" not in message
    assert "run snakemake again to rebuild it" in message
    assert not shard.exists() and len(list(folder.glob("shard-00000.h5.damaged-*"))) == 1


def test_a_truncated_shard_is_caught_and_named(tiny_data, tmp_path):
    folder = copy_of_tiny_shards(tiny_data, tmp_path)
    shard = folder / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(VididiError) as excinfo:
        read_video_table(shard)
    assert str(excinfo.value).startswith(f"shard {shard} is damaged (") and "\n" not in str(excinfo.value)
    assert not shard.exists()


def test_a_shard_made_with_other_settings_stops_the_index(tiny_data, tmp_path):
    """`vididi extract --set ...` by hand writes a shard whose stamp is not the manifest's."""
    config = over_tiny_videos(tiny_data, tmp_path, encoding="raw")
    write_manifest(config, DS)
    for shard in range(read_manifest(config, DS)["n_shards"]):
        extract_shard(config, DS, shard)
    other = {**config, "datasets": {DS: {**config["datasets"][DS], "extract": {**config["datasets"][DS]["extract"], "jpeg_quality": 50}}}}
    with pytest.raises(VididiError, match=r"manifest.json was made with other data settings than this config's \(extract.jpeg_quality: 90 → 50\)"):
        extract_shard(other, DS, 0)
    path = shard_dir(config, DS) / "shard-00001.h5"
    with h5py.File(path, "a", libver="latest") as h5:
        h5.attrs["settings_hash"] = "0123456789ab"
    with pytest.raises(VididiError, match=rf"{path} was made with other data settings than this config's"):
        build_index(config, DS)
