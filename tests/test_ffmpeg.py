"""vididi.data.ffmpeg: finding the binary, decoding (size, frame count, fps, scaling, resampling), encoding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vididi.data import ffmpeg
from vididi.data.ffmpeg import decode, encode_h264
from vididi.utils import VididiError

# --------------------------------------------------------------------------------------------------
# Binary discovery: $VIDIDI_FFMPEG, then PATH, then the imageio-ffmpeg wheel


@pytest.fixture
def fresh_lookup(monkeypatch):
    """ffmpeg_binary() is cached: clear it before the test and again after, so no fake leaks out."""
    monkeypatch.delenv("VIDIDI_FFMPEG", raising=False)
    monkeypatch.delenv("IMAGEIO_FFMPEG_EXE", raising=False)  # imageio-ffmpeg's own override
    ffmpeg.ffmpeg_binary.cache_clear()
    yield
    ffmpeg.ffmpeg_binary.cache_clear()


def _fake_ffmpeg(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "ffmpeg"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


def test_env_variable_wins_over_path(fresh_lookup, monkeypatch, tmp_path):
    explicit = _fake_ffmpeg(tmp_path / "explicit")
    on_path = _fake_ffmpeg(tmp_path / "onpath")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setenv("VIDIDI_FFMPEG", str(explicit))
    assert ffmpeg.ffmpeg_binary() == str(explicit)


def test_env_variable_must_be_an_executable(fresh_lookup, monkeypatch, tmp_path):
    not_executable = tmp_path / "ffmpeg"
    not_executable.write_text("not a program")
    monkeypatch.setenv("VIDIDI_FFMPEG", str(not_executable))
    with pytest.raises(VididiError, match="VIDIDI_FFMPEG") as info:
        ffmpeg.ffmpeg_binary()
    assert "\n" not in str(info.value)
    monkeypatch.setenv("VIDIDI_FFMPEG", str(tmp_path / "absent"))
    with pytest.raises(VididiError, match="VIDIDI_FFMPEG"):
        ffmpeg.ffmpeg_binary()


def test_path_is_used_without_env_variable(fresh_lookup, monkeypatch, tmp_path):
    on_path = _fake_ffmpeg(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'empty'}{os.pathsep}{on_path.parent}")
    assert ffmpeg.ffmpeg_binary() == str(on_path)


def test_imageio_ffmpeg_is_the_fallback_when_path_has_none(fresh_lookup, monkeypatch, tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    found = ffmpeg.ffmpeg_binary()
    assert found == imageio_ffmpeg.get_ffmpeg_exe()
    assert Path(found).is_file() and os.access(found, os.X_OK)


def test_no_ffmpeg_anywhere_is_a_clear_error(fresh_lookup, monkeypatch, tmp_path):
    monkeypatch.setattr(ffmpeg.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # `import imageio_ffmpeg` raises ImportError
    with pytest.raises(VididiError, match="no ffmpeg found") as info:
        ffmpeg.ffmpeg_binary()
    assert "\n" not in str(info.value) and "VIDIDI_FFMPEG" in str(info.value)


# --------------------------------------------------------------------------------------------------
# Decoding


def _moving_gradient(n: int, height: int, width: int) -> list[np.ndarray]:
    """Smooth frames (little H.264 loss) in which a bright band moves one pixel per frame."""
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(n):
        band = 120 * np.exp(-(((x - t) % width - width / 2) ** 2) / 40.0)
        frame = np.stack([40 + 2 * y + band, 60 + band, 200 - 2 * x + 0 * band], axis=-1)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


@pytest.fixture(scope="module")
def wide_clip(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A 48x32 (width x height) clip of 20 frames at 10 fps."""
    path = tmp_path_factory.mktemp("ffmpeg") / "wide.mp4"
    frames = _moving_gradient(20, 32, 48)
    encode_h264(frames, path, fps=10)
    return path, frames


def test_decode_gives_every_frame_at_its_size_and_rate(wide_clip):
    path, source = wide_clip
    video = decode(path)
    frames = list(video.frames)
    assert (video.width, video.height, video.fps, video.expected_frames) == (48, 32, 10.0, 20)
    assert len(frames) == 20
    assert all(f.shape == (32, 48, 3) and f.dtype == np.uint8 for f in frames)
    errors = [np.abs(f.astype(float) - s).mean() for f, s in zip(frames, source)]
    assert max(errors) < 3.0  # crf 18 on smooth content: a few grey levels at most


@pytest.mark.parametrize(("width", "height", "expected"), [(48, 32, (24, 16)), (32, 48, (16, 24)), (32, 32, (16, 16))])
def test_short_side_keeps_the_aspect_ratio(tmp_path, width, height, expected):
    path = tmp_path / "clip.mp4"
    encode_h264(_moving_gradient(4, height, width), path, fps=10)
    video = decode(path, short_side=16)
    frames = list(video.frames)
    assert (video.width, video.height) == expected
    assert len(frames) == 4 and frames[0].shape == (expected[1], expected[0], 3)


def test_short_side_scaling_matches_an_area_average(wide_clip):
    """Halving 48x32 -> 24x16: each output pixel is close to the mean of its 2x2 source block."""
    path, source = wide_clip
    frames = list(decode(path, short_side=16).frames)
    reference = source[5].astype(float).reshape(16, 2, 24, 2, 3).mean(axis=(1, 3))
    assert np.abs(frames[5].astype(float) - reference).mean() < 4.0


@pytest.fixture(scope="module")
def counting_clip(tmp_path_factory) -> Path:
    """20 flat grey frames at 10 fps; frame i has grey level 40 + 8 i, so a decoded frame tells its source."""
    path = tmp_path_factory.mktemp("ffmpeg") / "counting.mp4"
    encode_h264([np.full((16, 16, 3), 40 + 8 * i, np.uint8) for i in range(20)], path, fps=10)
    return path


def _source_index(frame: np.ndarray) -> int:
    return int(round((frame.astype(float).mean() - 40) / 8))


def test_fps_resampling_down_takes_every_other_frame(counting_clip):
    video = decode(counting_clip, fps=5)
    frames = list(video.frames)
    assert video.fps == 5 and video.expected_frames == 10
    assert [_source_index(f) for f in frames] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]


def test_fps_resampling_up_repeats_each_frame(counting_clip):
    video = decode(counting_clip, fps=20)
    sources = [_source_index(f) for f in video.frames]
    assert video.fps == 20 and len(sources) == 40
    assert sorted(sources) == sources  # time order kept
    assert [sources.count(i) for i in range(20)] == [2] * 20


def test_decoding_ignores_an_audio_track(wide_clip, tmp_path):
    """Real datasets (UCF101, Kinetics) carry audio; only the video stream must come out."""
    path, _ = wide_clip
    with_audio = tmp_path / "audio.mp4"
    subprocess.run(
        [ffmpeg.ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "lavfi", "-i", "sine=d=2",
         "-c:v", "copy", "-c:a", "aac", "-shortest", str(with_audio)],
        check=True,
    )  # fmt: skip
    video = decode(with_audio)
    assert (video.width, video.height) == (48, 32)
    assert len(list(video.frames)) == 20


def test_not_a_video_is_a_one_line_error(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n" * 20)
    with pytest.raises(VididiError, match="cannot decode") as info:
        decode(fake)
    assert "\n" not in str(info.value) and str(fake) in str(info.value)


def test_stopping_early_does_not_raise_or_hang(wide_clip):
    video = decode(wide_clip[0])
    first = [next(video.frames) for _ in range(3)]
    video.frames.close()  # kills ffmpeg; a consumer that stops early is not a decoding failure
    assert len(first) == 3


# --------------------------------------------------------------------------------------------------
# Encoding


def test_encoding_is_deterministic_and_atomic(tmp_path):
    frames = _moving_gradient(6, 16, 16)
    encode_h264(frames, tmp_path / "a.mp4", fps=8)
    encode_h264(frames, tmp_path / "b.mp4", fps=8)
    decoded_a = np.stack(list(decode(tmp_path / "a.mp4").frames))
    decoded_b = np.stack(list(decode(tmp_path / "b.mp4").frames))
    assert np.array_equal(decoded_a, decoded_b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]  # no temporary files left


def test_failed_encoding_leaves_no_file(tmp_path):
    """x264 with yuv420p needs even sizes: the failure is a VididiError and no partial .mp4 remains."""
    with pytest.raises(VididiError, match="encoding failed"):
        encode_h264([np.zeros((15, 15, 3), np.uint8)] * 3, tmp_path / "odd.mp4", fps=8)
    assert list(tmp_path.iterdir()) == []
