"""Safe extraction: formats, refused entries, atomicity and the completion marker."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from vididi.data import archives
from vididi.data.archives import archive_type, extract, marker_path
from vididi.utils import VididiError

needs_bsdtar = pytest.mark.skipif(shutil.which("bsdtar") is None, reason="bsdtar (libarchive-tools) not installed")

TREE = {
    "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi": b"video one",
    "UCF-101/Archery/v_Archery_g01_c01.avi": b"video two" * 100,
    "UCF-101/Archery/deeper/notes.txt": b"nested three levels",
    "README": b"top level file",
}


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link_member(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def read_tree(root: Path) -> dict[str, bytes]:
    """Every non-hidden file under root (hidden = markers and partial folders)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def assert_nothing_extracted(dest: Path) -> None:
    leftovers = [p.name for p in dest.iterdir()] if dest.exists() else []
    assert leftovers == [], leftovers


# ---------------------------------------------------------------------------------------------------------
# RAR v4 files written from the published format description (stored, uncompressed entries): no tool on
# this machine can create RAR, and bsdtar can read it.


def _rar_block(head_type: int, flags: int, body: bytes) -> bytes:
    head = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head  # header CRC: low 16 bits of CRC32


def _rar_file(name: str, data: bytes = b"", mode: int = 0o100644, directory: bool = False) -> bytes:
    encoded = name.encode()
    flags = 0x8000 | (0x00E0 if directory else 0)  # 0x8000: sizes follow; 0xE0: directory
    dos_time = ((2020 - 1980) << 25) | (1 << 21) | (1 << 16)
    # pack size, unpacked size, host OS 3 (Unix), data CRC32, time, version 2.0, method 0x30 (store), name size, mode
    body = struct.pack("<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), dos_time, 20, 0x30, len(encoded), mode)
    return _rar_block(0x74, flags, body + encoded) + data


def make_rar(path: Path, entries: list[dict]) -> Path:
    blob = b"Rar!\x1a\x07\x00" + _rar_block(0x73, 0, b"\0" * 6)
    blob += b"".join(_rar_file(**entry) for entry in entries)
    path.write_bytes(blob + _rar_block(0x7B, 0x4000, b""))
    return path


# ---------------------------------------------------------------------------------------------------------
# formats


def test_zip_nested_extracts_everything_and_marks_completion(tmp_path):
    archive = make_zip(tmp_path / "splits.zip", TREE)
    dest = tmp_path / "raw"
    files = extract(archive, dest)
    assert read_tree(dest) == TREE
    assert files == sorted(dest / name for name in TREE)
    assert marker_path(archive, dest).is_file()
    assert not list(dest.glob(".partial-*"))


def test_tar_gz_nested_and_plain_tar(tmp_path):
    members = [file_member(name, data) for name, data in TREE.items()]
    for suffix, mode in ((".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w")):
        archive = make_tar(tmp_path / f"videos{suffix}", members, mode)
        assert archive_type(archive) == "tar"
        dest = tmp_path / f"out{suffix}"
        extract(archive, dest)
        assert read_tree(dest) == TREE


def test_rerun_skips_a_completed_extraction_even_without_the_archive(tmp_path):
    archive = make_zip(tmp_path / "a.zip", TREE)
    dest = tmp_path / "raw"
    extract(archive, dest)
    (dest / "README").write_bytes(b"edited after extraction")
    first = extract(archive, dest)
    assert (dest / "README").read_bytes() == b"edited after extraction"  # not extracted again
    archive.unlink()  # big archives may be deleted once extracted
    assert extract(archive, dest) == first
    (dest / "README").unlink()
    with pytest.raises(VididiError, match="not found"):  # incomplete now, and nothing to extract from
        extract(archive, dest)


def test_a_changed_archive_is_extracted_again(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"x.txt": b"old"})
    dest = tmp_path / "raw"
    extract(archive, dest)
    make_zip(archive, {"x.txt": b"new, longer content"})
    extract(archive, dest)
    assert (dest / "x.txt").read_bytes() == b"new, longer content"


def test_leftover_partial_folder_is_replaced_and_archives_merge(tmp_path):
    dest = tmp_path / "raw"
    stale = dest / ".partial-b.zip"
    stale.mkdir(parents=True)
    (stale / "junk.txt").write_bytes(b"from an interrupted run")
    extract(make_zip(tmp_path / "a.zip", {"UCF-101/A/a.avi": b"a"}), dest)
    extract(make_zip(tmp_path / "b.zip", {"UCF-101/ucfTrainTestlist/classInd.txt": b"1 A\n"}), dest)
    assert read_tree(dest) == {"UCF-101/A/a.avi": b"a", "UCF-101/ucfTrainTestlist/classInd.txt": b"1 A\n"}
    assert not stale.exists()


def test_inner_archives_are_extracted_and_removed(tmp_path):
    inner_a = make_zip(tmp_path / "brush_hair.zip", {"brush_hair/v0.avi": b"0", "brush_hair/v1.avi": b"1"})
    inner_b = make_zip(tmp_path / "wave.zip", {"wave/v2.avi": b"2"})
    outer = make_zip(tmp_path / "hmdb.zip", {"brush_hair.zip": inner_a.read_bytes(), "wave.zip": inner_b.read_bytes()})
    dest = tmp_path / "raw"
    files = extract(outer, dest, inner_archives="*.zip")
    expected = {"brush_hair/v0.avi": b"0", "brush_hair/v1.avi": b"1", "wave/v2.avi": b"2"}
    assert read_tree(dest) == expected
    assert files == sorted(dest / n for n in expected)


def test_not_an_archive(tmp_path):
    junk = tmp_path / "page.rar"
    junk.write_bytes(b"<html>moved</html>")
    with pytest.raises(VididiError, match="not a zip, tar or RAR archive"):
        extract(junk, tmp_path / "raw")


# ---------------------------------------------------------------------------------------------------------
# refused entries


def test_zip_path_traversal_is_refused(tmp_path):
    archive = make_zip(tmp_path / "evil.zip", {"ok/file.txt": b"fine", "../evil": b"gotcha"})
    dest = tmp_path / "box" / "raw"
    with pytest.raises(VididiError, match=r"evil.zip: entry '\.\./evil' has a '\.\.' component"):
        extract(archive, dest)
    assert not (tmp_path / "box" / "evil").exists()
    assert_nothing_extracted(dest)


def test_zip_absolute_and_windows_names_are_refused(tmp_path):
    for name in ("/etc/cron.d/evil", "C:\\Windows\\evil.dll", "a\\..\\..\\evil"):
        archive = make_zip(tmp_path / "w.zip", {name: b"x"})
        with pytest.raises(VididiError, match="entry"):
            extract(archive, tmp_path / "raw")
        assert_nothing_extracted(tmp_path / "raw")


def test_tar_absolute_member_is_refused(tmp_path):
    outside = tmp_path / "abs_target.txt"
    archive = make_tar(tmp_path / "abs.tar.gz", [file_member("good.txt", b"g"), file_member(str(outside), b"bad")])
    with pytest.raises(VididiError, match=f"entry '{outside}' has an absolute path"):
        extract(archive, tmp_path / "raw")
    assert not outside.exists()
    assert_nothing_extracted(tmp_path / "raw")


def test_tar_symlink_pointing_outside_is_refused(tmp_path):
    archive = make_tar(tmp_path / "sym.tar.gz", [link_member("data/link", "../../outside", tarfile.SYMTYPE)])
    with pytest.raises(VididiError, match=r"entry 'data/link' links to '\.\./\.\./outside'"):
        extract(archive, tmp_path / "raw")
    absolute = make_tar(tmp_path / "sym2.tar.gz", [link_member("link", "/etc/passwd", tarfile.SYMTYPE)])
    with pytest.raises(VididiError, match="entry 'link' links to the absolute path '/etc/passwd'"):
        extract(absolute, tmp_path / "raw")
    assert_nothing_extracted(tmp_path / "raw")


def test_tar_hardlink_escape_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not touch")
    archive = make_tar(tmp_path / "hard.tar.gz", [link_member("innocent.txt", "../secret.txt", tarfile.LNKTYPE)])
    with pytest.raises(VididiError, match=r"entry 'innocent.txt' links to '\.\./secret.txt'"):
        extract(archive, tmp_path / "raw")
    assert secret.read_text() == "do not touch"
    assert_nothing_extracted(tmp_path / "raw")


def test_tar_writing_through_a_symlink_and_link_chains_are_refused(tmp_path):
    through = make_tar(
        tmp_path / "through.tar",
        [link_member("sub", ".", tarfile.SYMTYPE), file_member("sub/x.txt", b"x")],
        mode="w",
    )
    with pytest.raises(VididiError, match="entry 'sub/x.txt' lies below a symlink entry"):
        extract(through, tmp_path / "raw")
    # each link alone stays inside ('a' -> '.', 'b' -> 'a/..' is '.' lexically) but b resolves to the parent
    chain = make_tar(
        tmp_path / "chain.tar",
        [link_member("a", ".", tarfile.SYMTYPE), link_member("b", "a/..", tarfile.SYMTYPE)],
        mode="w",
    )
    with pytest.raises(VididiError, match="entry 'b'"):
        extract(chain, tmp_path / "raw")
    assert_nothing_extracted(tmp_path / "raw")


def test_tar_symlink_inside_is_kept(tmp_path):
    archive = make_tar(
        tmp_path / "ok.tar.gz",
        [file_member("videos/a.mp4", b"a"), link_member("latest.mp4", "videos/a.mp4", tarfile.SYMTYPE)],
    )
    extract(archive, tmp_path / "raw")
    link = tmp_path / "raw" / "latest.mp4"
    assert link.is_symlink() and link.read_bytes() == b"a"


def test_tar_device_entry_is_refused(tmp_path):
    info = tarfile.TarInfo("dev/null2")
    info.type = tarfile.CHRTYPE
    archive = make_tar(tmp_path / "dev.tar", [(info, None)], mode="w")
    with pytest.raises(VididiError, match="entry 'dev/null2' is a device or fifo"):
        extract(archive, tmp_path / "raw")


# ---------------------------------------------------------------------------------------------------------
# RAR and encrypted zip through bsdtar


def test_missing_bsdtar_names_the_debian_package(tmp_path, monkeypatch):
    archive = make_rar(tmp_path / "UCF101.rar", [{"name": "a.txt", "data": b"a"}])
    assert archive_type(archive) == "rar"
    monkeypatch.setattr(archives.shutil, "which", lambda name: None)
    with pytest.raises(VididiError, match="libarchive-tools"):
        extract(archive, tmp_path / "raw")
    assert_nothing_extracted(tmp_path / "raw")


@needs_bsdtar
def test_rar_extracts_with_bsdtar(tmp_path):
    archive = make_rar(
        tmp_path / "UCF101.rar",
        [
            {"name": "UCF-101", "mode": 0o40755, "directory": True},
            {"name": "UCF-101/Archery", "mode": 0o40755, "directory": True},
            {"name": "UCF-101/Archery/v_Archery_g01_c01.avi", "data": b"RIFF fake avi"},
            {"name": "UCF-101/Archery/v_Archery_g01_c02.avi", "data": b"second"},
        ],
    )
    dest = tmp_path / "raw"
    files = extract(archive, dest)
    assert read_tree(dest) == {
        "UCF-101/Archery/v_Archery_g01_c01.avi": b"RIFF fake avi",
        "UCF-101/Archery/v_Archery_g01_c02.avi": b"second",
    }
    assert files == sorted(dest / p for p in read_tree(dest))


@needs_bsdtar
def test_rar_traversal_and_escaping_link_are_refused(tmp_path):
    evil = make_rar(tmp_path / "evil.rar", [{"name": "ok.txt", "data": b"ok"}, {"name": "../evil.txt", "data": b"x"}])
    with pytest.raises(VididiError, match=r"entry '\.\./evil.txt' has a '\.\.' component"):
        extract(evil, tmp_path / "box" / "raw")
    assert not (tmp_path / "box" / "evil.txt").exists()
    link = make_rar(tmp_path / "link.rar", [{"name": "lnk", "data": b"../../outside", "mode": 0o120777}])
    with pytest.raises(VididiError, match="entry 'lnk' is a link that resolves outside"):
        extract(link, tmp_path / "raw")
    assert_nothing_extracted(tmp_path / "raw")


@needs_bsdtar
def test_rar_inside_rar_like_hmdb51(tmp_path):
    inner = make_rar(tmp_path / "brush_hair.rar", [{"name": "brush_hair/a.avi", "data": b"A"}])
    outer = make_rar(tmp_path / "hmdb51_org.rar", [{"name": "brush_hair.rar", "data": inner.read_bytes()}])
    extract(outer, tmp_path / "raw", inner_archives="*.rar")
    assert read_tree(tmp_path / "raw") == {"brush_hair/a.avi": b"A"}


@needs_bsdtar
def test_encrypted_zip_needs_the_password(tmp_path):
    src = tmp_path / "src"
    (src / "test").mkdir(parents=True)
    (src / "test" / "video_test_0000004.mp4").write_bytes(b"secret video")
    archive = tmp_path / "TH14_Test_set_mp4.zip"
    subprocess.run(
        ["bsdtar", "--format", "zip", "--options", "zip:encryption=zipcrypt", "--passphrase", "pw",
         "-cf", str(archive), "-C", str(src), "test"],
        check=True,
    )  # fmt: skip
    with pytest.raises(VididiError, match="password-protected"):
        extract(archive, tmp_path / "raw")
    with pytest.raises(VididiError, match="bsdtar failed"):
        extract(archive, tmp_path / "raw", password="wrong")
    assert_nothing_extracted(tmp_path / "raw")
    extract(archive, tmp_path / "raw", password="pw")
    assert read_tree(tmp_path / "raw") == {"test/video_test_0000004.mp4": b"secret video"}


# ---------------------------------------------------------------------------------------------------------
# limits: entries, unpacked size, free space (archive bombs)


def zeros_zip(path: Path, files: dict[str, int]) -> Path:
    """A zip of files of zero bytes, deflated: `size` bytes each, about a thousandth of that on disk."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, size in files.items():
            zf.writestr(name, bytes(size))
    return path


def assert_refused_cleanly(dest: Path, failure: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(failure.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert_nothing_extracted(dest)  # no partial folder, no marker, nothing beside it


def test_an_archive_of_very_many_files_is_refused_before_unpacking(tmp_path):
    archive = make_tar(tmp_path / "part_0.tar.gz", [file_member(f"d{i // 1000}/f{i}", b"") for i in range(50_000)])
    assert archive.stat().st_size < 500_000  # a few hundred KB
    dest = tmp_path / "raw"
    with pytest.raises(VididiError) as failure:
        extract(archive, dest)
    assert_refused_cleanly(dest, failure, str(archive), "50,000 entries", "20,000", "unpack.max_files")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part_0.tar.gz", "raw"]


def test_the_file_limit_is_raised_by_the_config_and_counts_inner_archives(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {f"f{i}.txt": b"x" for i in range(30)})
    with pytest.raises(VididiError, match="it holds 30 entries"):
        extract(archive, tmp_path / "raw", limits=archives.Limits(max_files=29))
    assert len(extract(archive, tmp_path / "raw", limits=archives.Limits(max_files=30))) == 30
    inner = make_zip(tmp_path / "inner.zip", {f"i{i}.txt": b"y" for i in range(5)})
    outer = make_zip(tmp_path / "outer.zip", {"inner.zip": inner.read_bytes(), "top.txt": b"z"})
    with pytest.raises(VididiError, match=r"it holds 5 entries \(7 with the archive around it\)"):
        extract(outer, tmp_path / "nested", inner_archives="*.zip", limits=archives.Limits(max_files=6))
    assert_nothing_extracted(tmp_path / "nested")


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_small_archive_that_unpacks_to_much_more_is_refused_before_unpacking(tmp_path, kind):
    if kind == "zip":
        bomb = zeros_zip(tmp_path / "bomb.zip", {"a.bin": 30_000_000, "b.bin": 30_000_000})
    else:
        bomb = make_tar(tmp_path / "bomb.tar.gz", [file_member(name, bytes(30_000_000)) for name in ("a.bin", "b.bin")])
    assert bomb.stat().st_size < 200_000
    dest = tmp_path / "raw"
    with pytest.raises(VididiError) as failure:
        extract(bomb, dest)
    assert_refused_cleanly(dest, failure, str(bomb), "it unpacks to 60.0 MB", "unpack.max_ratio")
    assert len(extract(bomb, dest, limits=archives.Limits(max_ratio=1e6))) == 2  # raised: it unpacks


def test_an_archive_larger_than_the_free_space_is_refused_before_unpacking(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "videos.zip", {"a.avi": bytes(range(256)) * 40})
    real = shutil.disk_usage
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda path: real(path)._replace(free=5_000))
    dest = tmp_path / "raw"
    with pytest.raises(VididiError) as failure:
        extract(archive, dest)
    assert_refused_cleanly(dest, failure, "it unpacks to 10.2 KB", "has 5.0 KB free")


def test_a_full_disk_while_unpacking_is_one_line_and_cleans_up(tmp_path, monkeypatch):
    archive = make_tar(tmp_path / "a.tar.gz", [file_member(f"f{i}", b"data") for i in range(3)])

    def disk_full(self, member, path, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extract", disk_full)
    dest = tmp_path / "raw"
    with pytest.raises(VididiError) as failure:
        extract(archive, dest)
    assert_refused_cleanly(dest, failure, f"cannot extract {archive} into {dest}: No space left on device")


@needs_bsdtar
@pytest.mark.parametrize("files", [{"one.bin": 30_000_000}, {f"part{i}.bin": 1_500_000 for i in range(20)}],
                         ids=["one large file", "many files"])  # fmt: skip
def test_a_bomb_unpacked_by_bsdtar_is_stopped_while_it_writes(tmp_path, files):
    """bsdtar (RAR, encrypted zip) lists no sizes worth trusting: the bytes are counted as it writes,
    and a single file is capped by RLIMIT_FSIZE."""
    src = tmp_path / "src"
    src.mkdir()
    for name, size in files.items():
        (src / name).write_bytes(bytes(size))
    bomb = tmp_path / "TH14_Test_set_mp4.zip"
    subprocess.run(["bsdtar", "--format", "zip", "--options", "zip:encryption=zipcrypt", "--passphrase", "pw",
                    "-cf", str(bomb), "-C", str(src), *files], check=True)  # fmt: skip
    assert bomb.stat().st_size < 300_000
    dest = tmp_path / "raw"
    with pytest.raises(VididiError) as failure:
        extract(bomb, dest, password="pw")
    assert_refused_cleanly(dest, failure, str(bomb), "it unpacks to more than", "unpack.max_ratio")


def test_the_limits_come_from_the_config(tmp_path, monkeypatch):
    from vididi.config import resolve, schema
    from vididi.data import download as download_mod
    from vididi.data import extract as extract_mod

    defaults = schema()["$defs"]["unpack"]["properties"]
    assert archives.Limits() == archives.Limits(defaults["max_files"]["default"], defaults["max_ratio"]["default"])
    seen = {}
    monkeypatch.setattr(download_mod, "fetch_dataset", lambda *args, **kwargs: seen.update(kwargs))
    config = resolve({"data_dir": str(tmp_path), "datasets": {"ucf": {"source": "ucf101", "unpack": {"max_files": 50_000}}},
                      "runs": [{"dataset": "ucf", "framework": "vicreg"}]})  # fmt: skip
    extract_mod.download(config, "ucf")
    assert seen["limits"] == archives.Limits(max_files=50_000, max_ratio=100)
