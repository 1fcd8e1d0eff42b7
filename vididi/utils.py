"""Small pieces every stage shares: the user-error type, atomic writes, metric files, seeding, logs."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterator


class VididiError(Exception):
    """Bad input from the user (config, files, videos). The CLI prints it as one line and exits 2."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    An interrupted writer therefore never leaves a file that looks complete. A write that fails for
    lack of space (or quota, or a file-size limit) becomes one line naming `path` and the reason, even
    when the writer's own message hides it (torch.save: "basic_ios::clear: iostream error"); the
    partial file is removed, and an earlier `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        reason = _storage_failure(tmp, exc)
        if reason is None:
            raise
        raise VididiError(f"cannot write {path}: {reason}") from exc
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_hdf5(path: str | os.PathLike, **options) -> Iterator[Any]:
    """An h5py.File written under a temporary name and renamed when complete (`atomic_path`).

    When the storage refuses a write (a full disk), HDF5's state is broken: closing the file fails, and
    freeing its objects later crashes the process. The file is then left open and listed in
    ABANDONED_HDF5; the CLI leaves without HDF5's clean-up (os._exit) after printing the error."""
    import h5py  # lazily: the Snakefile imports this module on hosts without h5py

    with atomic_path(path) as tmp:
        h5 = h5py.File(tmp, "w", **options)
        try:
            yield h5
            h5.flush()
        except BaseException as exc:
            if isinstance(exc, (OSError, RuntimeError)) and _storage_failure(tmp, exc):
                ABANDONED_HDF5.append(h5)
            else:
                h5.close()
            raise
        h5.close()


ABANDONED_HDF5: list = []  # files HDF5 could not write; never closed (see atomic_hdf5)


# a full disk, a full quota, a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored), a read-only file system
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def _storage_failure(tmp: Path, exc: BaseException) -> str | None:
    """The reason a write to `tmp` failed when the storage refused it, else None.

    OSError carries its errno (h5py's too). torch.save's C++ stream loses it, so where the writer got
    as far as creating `tmp`, the same write is tried once more: 1 MiB appended and synced, which fails
    the same way on a full disk and costs nothing otherwise (the file is deleted next)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno) if exc.errno in STORAGE_ERRNOS else None
    if not tmp.exists():
        return None
    try:
        with open(tmp, "ab") as f:
            f.write(bytes(1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as probe:
        if probe.errno in STORAGE_ERRNOS:
            return os.strerror(probe.errno)
    return None


def _remove_orphans(path: Path) -> None:
    """Delete temporary files of `path` left by writers that were killed (their process is gone)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) while the block runs; if another process
    holds it, stop at once with one line naming that process. The kernel drops the lock when its holder
    dies (kill -9 included), so a stale file never blocks anyone."""
    import fcntl
    import socket

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise VididiError(f"{holder} is already {what} ({path}): wait for it to finish or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np  # lazily: the Snakefile imports this module on hosts without numpy

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def config_hash(obj: Any) -> str:
    """Short stable hash of a JSON-able object (used to tie outputs to the settings that made them)."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def versions() -> dict[str, str]:
    """Versions of the interpreter and the libraries whose behaviour shapes a result."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("vididi", "torch", "torchvision", "numpy", "h5py", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> str:
    """One line naming the machine a result was computed on: CPU model and cores, the vector ISA torch
    uses on it (float rounding differs between ISAs), and the GPU when one is visible."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores"]
    try:
        import torch

        parts.append(f"torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()}")
        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name())
    except ImportError:
        pass
    return "; ".join(parts)


def code_version() -> str:
    """The package version, plus the git commit (and `-dirty`) when running from a checkout."""
    import subprocess

    from . import __version__

    if "code" not in _CODE_VERSION:
        repo = Path(__file__).resolve().parents[1]
        try:
            sha = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=10"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
        _CODE_VERSION["code"] = f"{__version__}+g{sha}" if sha and (repo / ".git").exists() else __version__
    return _CODE_VERSION["code"]


_CODE_VERSION: dict[str, str] = {}


def threads() -> dict[str, Any]:
    """The thread counts that shape float rounding on a CPU (torch's only if torch is loaded)."""
    out: dict[str, Any] = {"omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    torch = sys.modules.get("torch")
    if torch is not None:
        out.update(torch_intra_op=torch.get_num_threads(), torch_inter_op=torch.get_num_interop_threads())
    return out


def provenance() -> dict[str, Any]:
    """Where, when and by what an output was made: machine, code (commit), threads, ffmpeg, versions."""
    from .data.ffmpeg import ffmpeg_version  # lazily: utils is imported by the torch-free planner

    return {"machine": machine(), "code": code_version(), "threads": threads(), "ffmpeg": ffmpeg_version(),
            "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip


def write_metrics(path: str | os.PathLike, metrics: dict, protocol: dict, settings: Any, inputs: dict | None = None) -> None:
    """Write a metric file: the numbers, how they were measured, and what produced them.

    `settings` are the stage's own settings: `config_hash` is their hash, the one the rule carries as
    a parameter and vididi.stamps checks. `inputs` names what it was computed from (e.g. the run's
    `run_hash`), so a result made from an older model is recognised as such."""
    write_json(path, {"metrics": metrics, "protocol": protocol, "config_hash": config_hash(settings),
                      "settings": settings, "inputs": inputs or {}, **provenance()})  # fmt: skip


IMAGE_VENV = Path(os.sep, "opt", "venv")  # the container image's environment (Dockerfile)
IMAGE_PINS = Path(os.sep, "opt", "vididi", "constraints.txt")  # the pins the image was built from


def image_pins_mismatch(repo: Path) -> str | None:
    """Inside the image: a one-line message when its packages are not the versions the checkout pins
    (its constraints.txt differs from the checkout's), else None. Outside the image: None."""
    if sys.prefix != str(IMAGE_VENV):
        return None
    if not IMAGE_PINS.is_file():
        return f"this image has no {IMAGE_PINS}; rebuild it: make image sif"
    image = set(IMAGE_PINS.read_text().splitlines())
    checkout = set((repo / "constraints.txt").read_text().splitlines())
    if image == checkout:
        return None
    changes = [f"< {line}" for line in sorted(image - checkout)] + [f"> {line}" for line in sorted(checkout - image)]
    return f"image and checkout pin other versions (< image, > checkout): {' '.join(changes)}; rebuild: make image sif"


def get_logger(name: str = "vididi", log_file: str | os.PathLike | None = None) -> logging.Logger:
    """A logger that writes to stderr and, when given, to a file (one line per message)."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(fh)
    return logger


def progress(iterable=None, **kwargs):
    """tqdm progress bar; quiet when VIDIDI_NO_PROGRESS is set (tests)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", bool(os.environ.get("VIDIDI_NO_PROGRESS")))
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 1.0)
    return tqdm(iterable, **kwargs)
