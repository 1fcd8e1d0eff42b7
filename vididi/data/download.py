"""Resumable, verified downloads (standard library only) and the registry of official dataset files.

`download(url, dest)` contract:
- bytes stream into `<dest>.part`; after a cut the next attempt asks for the rest with an HTTP Range
  request; a 206 answer is appended, a 200 answer (server ignores Range) restarts the file from zero;
- connection errors, time-outs, short bodies, 408/429 and 5xx answers are retried with exponential
  back-off (`backoff * 2**k` seconds, at most 60 s); `retries` counts consecutive attempts that brought
  no new bytes, so a long download over a flaky link keeps going while it makes progress;
- the finished `.part` is checked against `size` and `sha256` and only then renamed onto `dest`;
- where no checksum is published, the first download records sha256 and size in `lock_file` (JSON,
  written atomically under an exclusive lock) and every later download must match them;
- a checksum or size mismatch, any other 4xx, or an HTML page served instead of the file stops with a
  one-line `VididiError` naming the URL and the reason; only the bad `.part` is removed, never `dest`;
- a `dest` that already verifies is returned without any network access.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from vididi import __version__
from vididi.data.archives import DEFAULT_LIMITS, Limits, extract
from vididi.utils import VididiError, atomic_path, get_logger, progress, write_json

MiB = 1 << 20
RETRYABLE_STATUS = frozenset({408, 429})  # plus every 5xx
MAX_BACKOFF_S = 60.0
HTML_STARTS = (b"<!doctype html", b"<html")
REGISTRY_PATH = Path(__file__).with_name("registry.yaml")

log = get_logger()


class _Retry(Exception):
    """A transient failure: try again after back-off (keeps the .part unless told otherwise)."""


def sha256_file(path: str | Path, chunk: int = MiB) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# lock file: checksums recorded on first download where none is published


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Exclusive lock around a read-modify-write of the lock file (parallel Snakemake jobs share it)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file.with_name(f".{lock_file.name}.flock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_lock(lock_file: Path) -> dict[str, dict[str, Any]]:
    if not lock_file.is_file():
        return {}
    try:
        return json.loads(lock_file.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise VididiError(f"lock file {lock_file} is not a vididi download lock (JSON with a 'files' map)") from None


def read_lock_entry(lock_file: str | Path, key: str) -> dict[str, Any] | None:
    """The recorded {"sha256", "size", "file"} of `key` (a URL unless the caller chose another key)."""
    return _read_lock(Path(lock_file)).get(key)


def _record_lock_entry(lock_file: Path, key: str, sha256: str, size: int, dest: Path) -> None:
    with _locked(lock_file):
        files = _read_lock(lock_file)
        files[key] = {"sha256": sha256, "size": size, "file": dest.name}
        write_json(lock_file, {"files": dict(sorted(files.items()))})


# ---------------------------------------------------------------------------------------------------------
# download


def _verify(path: Path, sha256: str | None, size: int | None) -> str | None:
    """None when `path` matches; otherwise the reason it does not."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size mismatch (expected {size} bytes, got {actual_size})"
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256.lower():
            return f"sha256 mismatch (expected {sha256.lower()}, got {actual})"
    return None


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    size: int | None = None,
    lock_file: str | Path | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    chunk: int = MiB,
    lock_key: str | None = None,
) -> Path:
    """Download `url` to `dest` (see the module docstring for the contract); return `dest`.

    `sha256`/`size`: published values. Without a published sha256 and with `lock_file` given, the
    sha256 and size recorded there under `lock_key` (default: the URL) are enforced, or recorded after
    the first download. `retries`: attempts in a row without new bytes before giving up.
    """
    dest = Path(dest)
    key = lock_key or url
    lock_path = Path(lock_file) if lock_file is not None else None
    recorded = read_lock_entry(lock_path, key) if lock_path is not None else None
    # the lock file stands in for a published checksum, so it is read and written only where none exists
    record = lock_path is not None and sha256 is None and recorded is None
    if sha256 is None and recorded is not None:
        sha256, size = recorded["sha256"], recorded["size"]

    if dest.is_file():
        reason = _verify(dest, sha256, size)
        if reason is None:
            if record:
                _record_lock_entry(lock_path, key, sha256_file(dest), dest.stat().st_size, dest)
            return dest
        log.warning("%s exists but does not verify (%s); downloading it again", dest, reason)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _fetch_into(url, part, size, timeout, chunk)
            break
        except _Retry as err:
            progressed = part.exists() and part.stat().st_size > before
            failures = 0 if progressed else failures + 1
            if failures > retries:
                raise VididiError(
                    f"download of {url} failed: {err} ({retries + 1} attempts in a row without progress)"
                ) from None
            wait = min(backoff * 2 ** max(failures - 1, 0), MAX_BACKOFF_S)
            log.warning("download of %s interrupted (%s); retrying in %.1f s", url, err, wait)
            time.sleep(wait)
        except VididiError:
            # a refused answer says nothing about the bytes already resumed; keep them unless there are none
            if part.exists() and part.stat().st_size == 0:
                part.unlink()
            raise

    reason = _verify(part, sha256, size)
    if reason is not None:
        part.unlink()
        raise VididiError(f"download of {url} failed: {reason}; the partial file was removed")
    if record:
        _record_lock_entry(lock_path, key, sha256_file(part), part.stat().st_size, dest)
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, size: int | None, timeout: float, chunk: int) -> None:
    """One HTTP attempt: append the missing bytes to `part`. Raises _Retry or VididiError."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return  # complete from an earlier run that stopped before verifying
    headers = {"User-Agent": f"vididi/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            _, total = _content_range(err.headers.get("Content-Range", ""))
            if total == offset:
                return  # the .part is already complete (an earlier run stopped before verifying)
            part.unlink()  # the .part is longer than the remote file, so it is not a prefix of it
            raise _Retry("server refused the resume range; restarting from zero") from None
        if err.code in RETRYABLE_STATUS or err.code >= 500:
            raise _Retry(f"HTTP {err.code} {err.reason}") from None
        raise VididiError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLCertVerificationError):
            # not transient: retrying cannot fix a certificate the system does not trust
            reason = f"TLS certificate not trusted ({err.reason.verify_message})"
            raise VididiError(f"download of {url} failed: {reason}") from None
        raise _Retry(f"{type(err).__name__}: {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:
        raise _Retry(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None

    with response:
        content_type = response.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() == "text/html":
            raise VididiError(f"download of {url} failed: the server sent an HTML page (Content-Type {content_type})")
        status = response.status
        if status == 206:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                part.unlink()
                raise _Retry(f"server resumed at byte {start} instead of {offset}; restarting from zero")
        elif offset:
            log.warning("%s ignored the Range request (HTTP %d); restarting from zero", url, status)
            offset = 0
            total = None
        else:
            total = None
        length = response.headers.get("Content-Length")
        expected_body = int(length) if length is not None and length.isdigit() else None
        if total is None and expected_body is not None:
            total = offset + expected_body
        if size is not None and total is not None and total != size:
            raise VididiError(f"download of {url} failed: server reports {total} bytes, expected {size}")
        _stream(response, part, offset, expected_body, total, chunk, url)


def _content_range(header: str) -> tuple[int | None, int | None]:
    """'bytes START-END/TOTAL' or 'bytes */TOTAL' -> (START, TOTAL); a part is None when absent or '*'."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header)
    if match is None:
        return None, None
    start, total = match.group(1), match.group(2)
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _stream(
    response, part: Path, offset: int, expected_body: int | None, total: int | None, chunk: int, url: str
) -> None:
    """Write the body to `part` (appending at `offset`); a short body raises _Retry so the next try resumes."""
    received = 0
    mode = "ab" if offset else "wb"
    with open(part, mode) as out, progress(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[: -len(".part")]
    ) as bar:
        try:
            while True:
                block = response.read(chunk)
                if not block:
                    break
                if offset == 0 and received == 0 and block[:512].lstrip().lower().startswith(HTML_STARTS):
                    raise VididiError(f"download of {url} failed: the server sent an HTML page instead of the file")
                out.write(block)
                received += len(block)
                bar.update(len(block))
        except (OSError, http.client.HTTPException) as err:
            raise _Retry(f"connection lost after {offset + received} bytes ({type(err).__name__})") from None
    # http.client returns b"" instead of raising when the peer closes early, so compare with Content-Length
    if expected_body is not None and received < expected_body:
        raise _Retry(f"connection closed after {offset + received} of {offset + expected_body} bytes")


# ---------------------------------------------------------------------------------------------------------
# registry of official dataset files

ARCHIVE_KINDS = ("zip", "tar", "rar")


@dataclass(frozen=True)
class DatasetFile:
    """One downloadable file of a dataset (see registry.yaml for the meaning of each field)."""

    name: str
    urls: tuple[str, ...]
    size: int | None
    sha256: str | None
    archive: str | None  # zip | tar | rar | None (a plain file, copied)
    extract_to: str  # folder relative to the dataset's raw folder
    inner_archives: str | None = None
    password_protected: bool = False
    url_list: bool = False  # the URL names a text file of URLs (one archive per line)
    optional: bool = False
    note: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    homepage: str
    layout: str  # source name for vididi.data.splits.list_dataset
    root: str  # dataset root relative to the raw folder
    files: tuple[DatasetFile, ...]
    notes: str = ""


def load_registry(path: str | Path | None = None) -> dict[str, DatasetSpec]:
    """Parse and check registry.yaml (or `path`); returns {dataset name: DatasetSpec}."""
    path = Path(path) if path is not None else REGISTRY_PATH
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), dict):
        raise VididiError(f"{path}: expected a top-level 'datasets' mapping")
    return {name: _dataset_spec(path, name, entry) for name, entry in raw["datasets"].items()}


def _dataset_spec(path: Path, name: str, entry: dict) -> DatasetSpec:
    where = f"{path}: dataset '{name}'"
    missing = {"homepage", "layout", "root", "files"} - set(entry)
    if missing:
        raise VididiError(f"{where} lacks {sorted(missing)}")
    files = tuple(_dataset_file(f"{where} file {i}", f) for i, f in enumerate(entry["files"]))
    return DatasetSpec(
        name=name,
        homepage=entry["homepage"],
        layout=entry["layout"],
        root=entry["root"],
        files=files,
        notes=entry.get("notes", ""),
    )


def _dataset_file(where: str, entry: dict) -> DatasetFile:
    known = set(DatasetFile.__dataclass_fields__)
    unknown = set(entry) - known
    if unknown:
        raise VididiError(f"{where}: unknown keys {sorted(unknown)}")
    if not entry.get("urls") or not entry.get("name"):
        raise VididiError(f"{where}: needs 'name' and a non-empty 'urls' list")
    sha = entry.get("sha256")
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", str(sha)):
        raise VididiError(f"{where}: sha256 must be 64 lowercase hex digits or null")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise VididiError(f"{where}: size must be a positive integer or null")
    if entry.get("archive") not in (None, *ARCHIVE_KINDS):
        raise VididiError(f"{where}: archive must be one of {ARCHIVE_KINDS} or null")
    return DatasetFile(**{**entry, "urls": tuple(entry["urls"]), "extract_to": entry.get("extract_to", ".")})


def download_dataset(
    name: str,
    download_dir: str | Path,
    *,
    lock_file: str | Path | None = None,
    include_optional: bool = False,
    registry: dict[str, DatasetSpec] | None = None,
    **download_options,
) -> list[tuple[DatasetFile, Path]]:
    """Download every file of a registry dataset into `download_dir`; return (file, local path) pairs.

    Mirrors (several `urls`) are tried in order; a URL that fails for good moves on to the next one.
    Lock-file entries are keyed `<dataset>/<file name>` so all mirrors of a file must agree.
    A `url_list` file is downloaded, then each URL it lists into `download_dir/<name without .txt>/`.
    """
    spec = _spec(name, registry)
    download_dir = Path(download_dir)
    fetched: list[tuple[DatasetFile, Path]] = []
    for file in spec.files:
        if file.optional and not include_optional:
            continue
        local = _download_mirrors(file, download_dir / file.name, f"{name}/{file.name}", lock_file, download_options)
        if not file.url_list:
            fetched.append((file, local))
            continue
        folder = download_dir / Path(file.name).stem
        for url in _read_url_list(local):
            target = folder / Path(urllib.parse.urlparse(url).path).name
            key = f"{name}/{folder.name}/{target.name}"
            fetched.append((file, download(url, target, lock_file=lock_file, lock_key=key, **download_options)))
    return fetched


def _spec(name: str, registry: dict[str, DatasetSpec] | None) -> DatasetSpec:
    registry = registry if registry is not None else load_registry()
    if name not in registry:
        raise VididiError(f"dataset '{name}' is not in the registry (known: {', '.join(sorted(registry))})")
    return registry[name]


def _download_mirrors(file: DatasetFile, dest: Path, key: str, lock_file, options: dict) -> Path:
    errors = []
    for url in file.urls:
        try:
            return download(url, dest, sha256=file.sha256, size=file.size, lock_file=lock_file, lock_key=key, **options)
        except VididiError as err:
            errors.append(str(err))
            if len(file.urls) > 1:
                log.warning("%s; trying the next mirror", err)
    raise VididiError(" | ".join(errors))


def _read_url_list(path: Path) -> list[str]:
    urls = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    bad = [u for u in urls if urllib.parse.urlparse(u).scheme not in ("http", "https")]
    if bad:
        raise VididiError(f"URL list {path} has lines that are not http(s) URLs, e.g. {bad[0]!r}")
    return urls


def fetch_dataset(
    name: str,
    download_dir: str | Path,
    raw_dir: str | Path,
    *,
    lock_file: str | Path | None = None,
    password: str | None = None,
    include_optional: bool = False,
    registry: dict[str, DatasetSpec] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    **download_options,
) -> Path:
    """Download and extract a registry dataset; return its root (`raw_dir/<spec.root>`) for list_dataset.

    Archives are extracted into `raw_dir/<extract_to>` (skipped when already complete); plain files are
    copied there. `password` is used for files marked password_protected; `limits` apply to each archive.
    """
    spec = _spec(name, registry)
    raw_dir = Path(raw_dir)
    for file, local in download_dataset(
        name, download_dir, lock_file=lock_file, include_optional=include_optional, registry=registry,
        **download_options,
    ):
        target = raw_dir / file.extract_to
        if file.archive is not None:
            secret = password if file.password_protected else None
            extract(local, target, password=secret, inner_archives=file.inner_archives, limits=limits)
        else:
            _copy_if_changed(local, target / local.name)
    return raw_dir / spec.root


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and sha256_file(dst) == sha256_file(src):
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
