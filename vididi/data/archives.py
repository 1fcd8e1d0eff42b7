"""Safe, atomic, resumable extraction of zip, tar(.gz/.bz2/.xz) and RAR archives.

Contract of `extract(archive, dest)`:
- Every entry name is checked BEFORE anything is written: absolute paths, `..` components, links whose
  target leaves the archive's folder, entries below a symlink entry and device files are refused with a
  `VididiError` naming the archive and the entry.
- Files are written into `dest/.partial-<archive name>/` first. After extraction every symlink's resolved
  target must lie inside that folder and no file may be a hard link to a file outside it; only then are
  the files moved (same-filesystem renames) into `dest`, merging with what is there.
- A marker `dest/.vididi-extracted-<archive name>.json` (the archive's size and the extracted paths) is
  written last and is THE completion signal (a good Snakemake output): the move into `dest` is many
  renames, so a crash can leave some files there but never the marker. A re-run that finds the marker,
  all listed files, and the same archive size (or no archive any more: deleting a huge archive after
  extraction is allowed) returns at once; otherwise it extracts again, overwriting, and removes the
  `.partial-*` folder an interrupted run left.

Limits (`Limits`; config `datasets.<name>.unpack`): an archive, with the archives inside it, may hold
at most `max_files` entries and unpack to at most `max_ratio` times its own size, and no more than the
free space of the target's file system. zip and tar declare every entry's size, so these are checked
before anything is written (and the standard library writes exactly the declared sizes); for bsdtar
the entries are counted from its listing first, and the bytes while it writes (each file it finishes;
a single file is capped by RLIMIT_FSIZE). A refusal is one line; the partial folder is removed.

zip and tar are read with the standard library. RAR (UCF101 and HMDB51 ship as RAR v4) and encrypted
zips (THUMOS14's test videos; Python's ZipCrypto runs at about 1 MB/s) go through `bsdtar`, Debian
package `libarchive-tools`, found on PATH at run time. `unrar-free` and Debian's `7zip` are not used:
Debian's 7zip has no RAR codec outside non-free, and one tool keeps one tested code path.
"""

from __future__ import annotations

import json
import os
import posixpath
import resource
import shutil
import signal
import stat
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from vididi.utils import STORAGE_ERRNOS, VididiError, progress, write_json

RAR_MAGIC = (b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00")  # RAR 1.5-4.x, RAR 5
MARKER_PREFIX = ".vididi-extracted-"
PARTIAL_PREFIX = ".partial-"
BSDTAR_HINT = (
    "install bsdtar: Debian/Ubuntu package libarchive-tools (apt-get install libarchive-tools), "
    "conda-forge package libarchive"
)


@dataclass(frozen=True)
class Limits:
    """What one archive, with the archives inside it, may unpack to (config `datasets.<name>.unpack`,
    same defaults). The largest archive of the registry's datasets, UCF101.rar, holds 13,320 videos;
    videos barely compress, so their archives unpack to about their own size."""

    max_files: int = 20_000  # entries: files, folders, links
    max_ratio: float = 100.0  # unpacked bytes per byte of archive

    @classmethod
    def from_config(cls, unpack: dict) -> "Limits":
        return cls(max_files=unpack["max_files"], max_ratio=unpack["max_ratio"])


DEFAULT_LIMITS = Limits()


class _Budget:
    """The limits as one archive and then the archives inside it are unpacked."""

    def __init__(self, limits: Limits):
        self.limits, self.entries = limits, 0

    def admit(self, archive: Path, entries: int) -> None:
        self.entries += entries
        if self.entries > self.limits.max_files:
            held = f"{entries:,} entries" + (f" ({self.entries:,} with the archive around it)" if self.entries > entries else "")
            raise VididiError(f"refusing to extract {archive}: it holds {held}, more than the limit of "
                              f"{self.limits.max_files:,} (config: datasets.<name>.unpack.max_files)")  # fmt: skip

    def max_bytes(self, archive: Path) -> int:
        return int(self.limits.max_ratio * archive.stat().st_size)

    def check_bytes(self, archive: Path, into: Path, unpacked: int) -> None:
        if unpacked > self.max_bytes(archive):
            raise self.too_big(archive, unpacked)
        free = shutil.disk_usage(into).free
        if unpacked > free:
            raise VididiError(f"refusing to extract {archive}: it unpacks to {_human(unpacked)}, "
                              f"but {into.parent} has {_human(free)} free")  # fmt: skip


    def too_big(self, archive: Path, unpacked: int, more: bool = False) -> VididiError:
        size = archive.stat().st_size
        amount = f"more than {_human(unpacked)}" if more else f"{_human(unpacked)}, {unpacked / size:,.0f} times its size"
        return VididiError(f"refusing to extract {archive} ({_human(size)}): it unpacks to {amount}, more than the limit "
                           f"of {self.limits.max_ratio:g} times (config: datasets.<name>.unpack.max_ratio)")  # fmt: skip


def _human(size: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1000
    raise AssertionError


def archive_type(path: str | Path) -> str:
    """'rar', 'zip' or 'tar' (any compression tarfile reads), from the file's content, not its name."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(RAR_MAGIC):
        return "rar"
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise VididiError(f"{path} is not a zip, tar or RAR archive")


def find_bsdtar() -> str:
    """Path of the bsdtar binary, or a VididiError that says which package provides it."""
    tool = shutil.which("bsdtar")
    if tool is None:
        raise VididiError(f"extracting RAR and encrypted zip archives needs bsdtar; {BSDTAR_HINT}")
    return tool


def marker_path(archive: str | Path, dest: str | Path) -> Path:
    return Path(dest) / f"{MARKER_PREFIX}{Path(archive).name}.json"


def extract(
    archive: str | Path,
    dest: str | Path,
    *,
    password: str | None = None,
    inner_archives: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Path]:
    """Extract `archive` into `dest` safely and atomically; return the extracted files (sorted).

    `password`: for encrypted zips (extracted with bsdtar). `inner_archives`: a glob (e.g. "*.rar",
    HMDB51's one archive per class) of extracted files that are archives themselves; each is checked
    and extracted the same way into its own folder and then deleted, before anything reaches `dest`.
    `limits`: entries and size (see `Limits`), counted over the archive and the archives inside it.
    """
    archive, dest = Path(archive), Path(dest)
    done = _completed(archive, dest)
    if done is not None:
        return done
    if not archive.is_file():
        raise VididiError(f"archive {archive} not found")
    dest.mkdir(parents=True, exist_ok=True)
    marker_path(archive, dest).unlink(missing_ok=True)  # files are about to change: not complete until rewritten
    partial = dest / f"{PARTIAL_PREFIX}{archive.name}"
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
    budget = _Budget(limits)
    try:
        _extract_checked(archive, partial, password, budget)
        if inner_archives is not None:
            for inner in sorted(p for p in partial.rglob(inner_archives) if p.is_file() and not p.is_symlink()):
                unpacked = inner.parent / f"{PARTIAL_PREFIX}{inner.name}"
                _extract_checked(inner, unpacked, password, budget)
                inner.unlink()
                _merge_move(unpacked, inner.parent)
        files = _merge_move(partial, dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    record = {"archive": archive.name, "size": archive.stat().st_size, "files": files}
    write_json(marker_path(archive, dest), record)
    return [dest / f for f in files]


def _completed(archive: Path, dest: Path) -> list[Path] | None:
    """The files of an earlier complete extraction of this archive, or None."""
    marker = marker_path(archive, dest)
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
        files = [dest / f for f in record["files"]]
        size = record["size"]
    except (ValueError, KeyError, TypeError):
        return None
    if archive.is_file() and archive.stat().st_size != size:
        return None  # a different archive of the same name: extract again
    if not all(f.exists() or f.is_symlink() for f in files):
        return None
    return files


def _extract_checked(archive: Path, into: Path, password: str | None, budget: _Budget) -> None:
    """Check every entry name and the limits, extract into the new folder `into`, then check what
    landed there."""
    kind = archive_type(archive)
    into.mkdir(parents=True)
    try:
        if kind == "zip":
            _extract_zip(archive, into, password, budget)
        elif kind == "tar":
            _extract_tar(archive, into, budget)
        else:
            _extract_bsdtar(archive, into, None, budget)  # RAR encryption is not supported by bsdtar
    except OSError as err:
        if err.errno not in STORAGE_ERRNOS:
            raise
        raise VididiError(f"cannot extract {archive} into {into.parent}: {os.strerror(err.errno)}") from None
    _verify_tree(archive, into)


# ---------------------------------------------------------------------------------------------------------
# entry-name checks


def _refuse(archive: Path, entry: str, reason: str) -> VididiError:
    return VididiError(f"refusing to extract {archive}: entry '{entry}' {reason}")


def _escapes(path: str) -> bool:
    """True when a '/'-separated relative path normalises to something outside its base folder."""
    normal = posixpath.normpath(path)
    return normal == ".." or normal.startswith("../")


def _check_name(archive: Path, name: str) -> str:
    """Return the entry name as a clean relative posix path, or raise for absolute / `..` names."""
    unified = name.replace("\\", "/")  # a Windows-made archive may use backslashes
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise _refuse(archive, name, "has an absolute path")
    if ".." in unified.split("/"):
        raise _refuse(archive, name, "has a '..' component")
    return posixpath.normpath(unified)


def _check_link_target(archive: Path, name: str, target: str, relative_to_entry: bool) -> None:
    """Symlink targets are relative to the link's folder, tar hard-link targets to the archive root."""
    if target.replace("\\", "/").startswith("/"):
        raise _refuse(archive, name, f"links to the absolute path '{target}'")
    base = posixpath.dirname(name) if relative_to_entry else ""
    if _escapes(posixpath.join(base, target)):
        raise _refuse(archive, name, f"links to '{target}', outside the target folder")


# ---------------------------------------------------------------------------------------------------------
# formats


def _extract_zip(archive: Path, into: Path, password: str | None, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(archive, info.filename)
        encrypted = any(info.flag_bits & 0x1 for info in infos)
        if not encrypted:
            budget.admit(archive, len(infos))
            # zipfile stops each file at its declared size (and checks its CRC): the sum is what lands
            budget.check_bytes(archive, into, sum(info.file_size for info in infos))
            # zipfile writes symlink entries as small regular files, so zip links cannot escape
            for info in progress(infos, desc=f"extract {archive.name}", unit="file"):
                zf.extract(info, into)
            return
    if password is None:
        raise VididiError(f"{archive} is password-protected: pass password=")
    _extract_bsdtar(archive, into, password, budget)


def _extract_tar(archive: Path, into: Path, budget: _Budget) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        budget.admit(archive, len(members))
        budget.check_bytes(archive, into, sum(m.size for m in members if m.isfile()))
        symlinks: set[str] = set()
        for member in members:
            name = _check_name(archive, member.name)
            if any(name.startswith(link + "/") for link in symlinks):
                raise _refuse(archive, member.name, "lies below a symlink entry")
            if member.issym():
                _check_link_target(archive, name, member.linkname, relative_to_entry=True)
                symlinks.add(name)
            elif member.islnk():
                _check_link_target(archive, name, member.linkname, relative_to_entry=False)
            elif not (member.isfile() or member.isdir()):
                raise _refuse(archive, member.name, "is a device or fifo")
        for member in progress(members, desc=f"extract {archive.name}", unit="file"):
            try:
                # the 'data' filter re-checks each path against the real folder as it writes
                tf.extract(member, into, filter="data")
            except tarfile.FilterError as err:
                raise _refuse(archive, member.name, f"was rejected: {err}") from None


def _extract_bsdtar(archive: Path, into: Path, password: str | None, budget: _Budget) -> None:
    tool = find_bsdtar()
    secret = ["--passphrase", password] if password is not None else []
    listing = subprocess.run([tool, "-tf", str(archive), *secret], capture_output=True, text=True)
    if listing.returncode != 0:
        raise VididiError(f"bsdtar cannot list {archive}: {_last_line(listing.stderr)}")
    names = [line for line in listing.stdout.splitlines() if line]
    for name in names:
        _check_name(archive, name)
    budget.admit(archive, len(names))
    # sizes are not listed in a form worth parsing: count what bsdtar writes. Each entry's line ends
    # once the entry is written; a single file is capped by RLIMIT_FSIZE (bsdtar then dies of SIGXFSZ).
    limit, written, too_big = budget.max_bytes(archive), 0, False

    def cap_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit + 1, limit + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    # bsdtar's defaults add their own guard: no '..', no absolute paths, no writing through symlinks
    cmd = [tool, "-xvf", str(archive), "-C", str(into), "--no-same-owner", *secret]
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, preexec_fn=cap_file_size) as proc:
        other: list[str] = []
        with progress(total=len(names), desc=f"extract {archive.name}", unit="file") as bar:
            for line in proc.stderr:
                if line.startswith("x "):
                    bar.update(1)
                    entry = into / line[2:].rstrip("\n")
                    written += entry.lstat().st_size if entry.is_file() and not entry.is_symlink() else 0
                    if written > limit:
                        too_big = True
                        proc.kill()
                        break
                else:
                    other.append(line.strip())
    if too_big or proc.returncode == -signal.SIGXFSZ:
        raise budget.too_big(archive, limit, more=True)
    if proc.returncode != 0:
        raise VididiError(f"bsdtar failed on {archive}: {other[-1] if other else f'exit code {proc.returncode}'}")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


# ---------------------------------------------------------------------------------------------------------
# after extraction


def _verify_tree(archive: Path, root: Path) -> None:
    """Every symlink must resolve inside `root`; no file may share its inode with a file outside `root`."""
    real_root = os.path.realpath(root)
    inode_count: dict[tuple[int, int], int] = {}
    nlinks: dict[tuple[int, int], tuple[int, str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                real = os.path.realpath(path)
                if real != real_root and not real.startswith(real_root + os.sep):
                    raise _refuse(archive, rel, f"is a link that resolves outside the target folder ({real})")
            elif stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                key = (info.st_dev, info.st_ino)
                inode_count[key] = inode_count.get(key, 0) + 1
                nlinks[key] = (info.st_nlink, rel)
    for key, (nlink, rel) in nlinks.items():
        if inode_count[key] < nlink:
            raise _refuse(archive, rel, "is a hard link to a file outside the target folder")


def _merge_move(src: Path, dst: Path) -> list[str]:
    """Move the tree `src` into `dst` file by file (renames on one filesystem); return relative paths."""
    moved: list[str] = []
    for folder, dirs, files in os.walk(src):
        rel_folder = Path(folder).relative_to(src)
        target_folder = dst / rel_folder
        if target_folder.is_symlink() or (target_folder.exists() and not target_folder.is_dir()):
            raise VididiError(f"cannot extract into {target_folder}: a file or link is in the way")
        target_folder.mkdir(parents=True, exist_ok=True)
        # symlinks to folders are listed in `dirs` but are moved as links, not walked
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        dirs[:] = [d for d in dirs if d not in links]
        for name in sorted(files + links):
            target = target_folder / name
            if target.is_dir() and not target.is_symlink():
                raise VididiError(f"cannot extract {rel_folder / name}: {target} is a folder")
            os.replace(os.path.join(folder, name), target)
            moved.append((rel_folder / name).as_posix())
    shutil.rmtree(src)
    return sorted(moved)
