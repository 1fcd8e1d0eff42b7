"""The ffmpeg binary: finding it, decoding videos to RGB frames, encoding frames to H.264.

Command lines are built with ffmpeg-python; we run the binary ourselves so that frames stream
through a pipe (a long video is never held twice in memory) while a thread drains stderr
(no pipe deadlock) and keeps its tail for error messages.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import ffmpeg as ffmpeg_python
import numpy as np

from ..utils import VididiError, atomic_path


@lru_cache(maxsize=None)
def ffmpeg_binary() -> str:
    """$VIDIDI_FFMPEG, else `ffmpeg` on PATH, else the binary shipped in the imageio-ffmpeg wheel.

    The last one needs no root and no system package, so the pipeline also runs on a bare machine.
    """
    explicit = os.environ.get("VIDIDI_FFMPEG")
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            raise VididiError(f"VIDIDI_FFMPEG={explicit} is not an executable file")
        return explicit
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise VididiError(
            "no ffmpeg found: install Debian's `ffmpeg` or `pip install imageio-ffmpeg`, "
            "or point VIDIDI_FFMPEG at a binary"
        ) from exc


@lru_cache(maxsize=None)
def ffmpeg_version() -> str:
    """The first line of `ffmpeg -version` of the binary the pipeline decodes with (provenance: other
    ffmpeg builds may decode other pixels); "unavailable" when there is none."""
    try:
        out = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True, timeout=30)
    except (VididiError, OSError, subprocess.SubprocessError):
        return "unavailable"
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return first.removeprefix("ffmpeg version ").split(" Copyright")[0].strip() or "unavailable"


class _StderrDrain(threading.Thread):
    """Reads a process's stderr to the end, keeping the last lines and announcing the output size."""

    _OUTPUT_VIDEO = re.compile(r"Stream #0:0.*: Video: rawvideo.*?, (\d+)x(\d+)")

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.tail: deque[str] = deque(maxlen=20)
        self.size: tuple[int, int] | None = None
        self.input_info: list[str] = []
        self.size_known = threading.Event()
        self._in_output = False

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            if line.startswith("Output #0"):
                self._in_output = True
            elif not self._in_output:
                self.input_info.append(line)
            elif self.size is None:
                match = self._OUTPUT_VIDEO.search(line)
                if match:
                    self.size = (int(match.group(1)), int(match.group(2)))
                    self.size_known.set()
        self.size_known.set()  # process ended: unblock a waiting reader

    def reason(self, path: str | os.PathLike | None = None) -> str:
        """The most telling stderr line, without the input path, for a one-line error message."""
        lines = [line.strip() for line in self.tail if line.strip()]
        lines = [line for line in lines if not line.startswith(("frame=", "Press [q]", "[out#", "video:"))]
        telling = [line for line in lines if "moov atom not found" in line] or lines
        if not telling:
            return "ffmpeg gave no message"
        text = telling[-1]
        if path is not None:
            text = text.replace(f"{path}: ", "").replace(str(path), "<input>")
        return text


@dataclass
class DecodedVideo:
    """Frames of one video, produced lazily; `fps` and `expected_frames` come from the container header."""

    frames: Iterator[np.ndarray]
    width: int
    height: int
    fps: float | None
    expected_frames: int | None


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_FPS = re.compile(r"Stream #\d+:\d+.*: Video: .*?, ([\d.]+) fps")


def _header_timing(lines: list[str], fps_out: float | None) -> tuple[float | None, int | None]:
    text = "\n".join(lines)
    fps_match = _FPS.search(text)
    fps_in = float(fps_match.group(1)) if fps_match else None
    fps = fps_out or fps_in
    duration_match = _DURATION.search(text)
    if duration_match and fps:
        h, m, s = duration_match.groups()
        seconds = int(h) * 3600 + int(m) * 60 + float(s)
        return fps, int(round(seconds * fps))
    return fps, None


def decode(path: str | os.PathLike, fps: float | None = None, short_side: int | None = None) -> DecodedVideo:
    """Start decoding `path` to RGB24 frames (H, W, 3) uint8, resampled to `fps` and resized so the
    shorter side is `short_side` (aspect kept, even sizes). Raises VididiError if ffmpeg cannot
    open the file. Iterating `frames` raises VididiError if decoding fails part way.
    """
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise VididiError(f"{path}: empty file (0 bytes)")
    stream = ffmpeg_python.input(str(path))
    if fps:
        stream = stream.filter("fps", fps=fps)
    if short_side:
        s = int(short_side)
        stream = stream.filter("scale", f"if(gt(iw,ih),-2,{s})", f"if(gt(iw,ih),{s},-2)")
    cmd = (
        stream.output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .global_args("-nostdin", "-hide_banner", "-nostats")
        .compile(cmd=ffmpeg_binary())
    )
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    drain = _StderrDrain(proc.stderr)
    drain.start()
    drain.size_known.wait()
    if drain.size is None:
        proc.stdout.close()
        proc.wait()
        drain.join()
        raise VididiError(f"{path}: cannot decode: {drain.reason(path)}")
    width, height = drain.size
    fps_used, expected = _header_timing(drain.input_info, fps)

    def frames() -> Iterator[np.ndarray]:
        nbytes = width * height * 3
        try:
            while True:
                buf = proc.stdout.read(nbytes)
                if len(buf) < nbytes:
                    break
                yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
        finally:
            proc.stdout.close()
            if proc.poll() is None:  # consumer stopped early: stop ffmpeg
                proc.kill()
            returncode = proc.wait()
            drain.join()
        if returncode != 0:
            raise VididiError(f"{path}: decoding failed: {drain.reason(path)}")

    return DecodedVideo(frames(), width, height, fps_used, expected)


def encode_h264(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float, crf: int = 18) -> None:
    """Encode RGB frames (H, W, 3) uint8 to an H.264 .mp4 (yuv420p, like real datasets), atomically.

    Single-threaded x264 with fixed settings so the same frames give the same decoded frames.
    """
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    with atomic_path(path) as tmp:
        cmd = (
            ffmpeg_python.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", r=fps)
            .output(
                str(tmp), format="mp4", vcodec="libx264", pix_fmt="yuv420p", crf=crf,
                preset="medium", threads=1, **{"x264-params": "threads=1:lookahead-threads=1"},
            )
            .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-y")
            .compile(cmd=ffmpeg_binary())
        )
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        drain = _StderrDrain(proc.stderr)
        drain.start()
        try:
            proc.stdin.write(np.ascontiguousarray(first).tobytes())
            for frame in frames:
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        returncode = proc.wait()
        drain.join()
        if returncode != 0:
            raise VididiError(f"{path}: encoding failed: {drain.reason()}")
