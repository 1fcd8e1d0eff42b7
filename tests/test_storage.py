"""A full disk while saving: one line naming the file and "No space left on device", nothing lost.

The writers' own messages hide the reason (torch.save: "basic_ios::clear: iostream error" or
"unexpected pos ..."; h5py: a multi-line HDF5 error). Two ways to fill a disk without touching the
machine's: /dev/full (every write fails with ENOSPC) behind the temporary name of `utils.atomic_path`,
and a small tmpfs mounted in a private mount namespace (`unshare`), where the real stages run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, tiny_config
from vididi.config import expand_runs
from vididi.layout import raw_dir, run_dir
from vididi.utils import VididiError, atomic_path

NO_SPACE = "No space left on device"


def cli_env() -> dict:
    return {**os.environ, "VIDIDI_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


# --------------------------------------------------------------------------------------------------
# /dev/full behind the temporary name


@pytest.mark.parametrize("writer", ["torch.save", "Path.write_text"])
def test_a_write_that_hits_a_full_disk_names_the_file_and_the_reason(tmp_path, writer):
    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous checkpoint")
    with pytest.raises(VididiError) as failure:
        with atomic_path(target) as tmp:
            tmp.symlink_to("/dev/full")  # every write to it fails with ENOSPC
            if writer == "torch.save":
                torch.save({"weights": torch.zeros(100_000)}, tmp)
            else:
                tmp.write_text("x" * 100_000)
    assert str(failure.value) == f"cannot write {target}: {NO_SPACE}"
    assert target.read_bytes() == b"the previous checkpoint"  # nothing lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no partial file left


def test_other_errors_inside_the_block_pass_through_unchanged(tmp_path):
    with pytest.raises(RuntimeError, match="not a storage problem"):
        with atomic_path(tmp_path / "x.pt") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("not a storage problem")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# A small tmpfs in a private mount namespace; the real stages write into it


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30)  # fmt: skip
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount_tmpfs(), reason="no unprivileged mount namespace (unshare -rm) here")

DRIVER = textwrap.dedent(
    """
    # runs inside the namespace: the tmpfs is mounted at MOUNT; writes its findings to REPORT
    import json, subprocess, sys
    mount, report, grow, *commands = sys.argv[1:]
    out = []
    for i, command in enumerate(commands):
        if i and grow != "0":
            subprocess.run(["mount", "-o", f"remount,size={grow}", mount], check=True)  # space freed
        done = subprocess.run(json.loads(command), capture_output=True, text=True)
        files = sorted(str(p) for p in __import__("pathlib").Path(mount).rglob("*"))
        out.append({"rc": done.returncode, "stderr": done.stderr, "files": files})
    open(report, "w").write(json.dumps(out))
    """
)


def in_small_tmpfs(mount: Path, size: str, commands: list[list[str]], tmp_path: Path, grow: str = "0") -> list[dict]:
    """Run `commands` one after the other with a tmpfs of `size` at `mount` (before each command after
    the first, the tmpfs is grown to `grow`); per command: exit status, stderr, the files on the tmpfs."""
    mount.mkdir(parents=True, exist_ok=True)
    driver, report = tmp_path / "driver.py", tmp_path / "report.json"
    driver.write_text(DRIVER)
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'
    subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", size, str(mount),
                    sys.executable, str(driver), str(mount), str(report), grow, *map(json.dumps, commands)],
                   cwd=REPO, env=cli_env(), check=True, timeout=600)  # fmt: skip
    return json.loads(report.read_text())


def stage(config_file: Path, name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "vididi.cli", name, "--config", str(config_file), *args]


@pytest.mark.slow
@needs_tmpfs
def test_a_full_disk_during_pretraining_is_one_line_and_the_run_resumes(tmp_path, tiny_data):
    data_config, _ = tiny_data
    opts = {"steps": 6, "checkpoint_every": 2, "batch_size": 4}
    # the size of one checkpoint, measured on the normal disk
    probe = tiny_config(tmp_path / "probe", data_dir=data_config["data_dir"], pretrain={**opts, "steps": 2})
    probe_file = tmp_path / "probe.yaml"
    probe_file.write_text(yaml.safe_dump(probe))
    run = expand_runs(probe)[0]
    done = subprocess.run(stage(probe_file, "pretrain", "--dataset", run.dataset, "--run", run.name),
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoint = (run_dir(probe, run) / "checkpoints" / "last.pt").stat().st_size

    # room for one checkpoint and the logs, not for the next one beside it (writes are atomic)
    results = tmp_path / "results"
    config = tiny_config(tmp_path, data_dir=data_config["data_dir"], results_dir=str(results), pretrain=opts)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = stage(config_file, "pretrain", "--dataset", run.dataset, "--run", run.name)
    size = f"{(checkpoint * 3 // 2 + 64 * 1024) // 1024}k"
    first, second = in_small_tmpfs(results, size, [command, command], tmp_path, grow="64m")

    last = run_dir(config, run) / "checkpoints" / "last.pt"
    assert first["rc"] == 2, first["stderr"][-2000:]
    assert first["stderr"].splitlines()[-1] == f"vididi pretrain: error: cannot write {last}: {NO_SPACE}"
    assert str(last) in first["files"] and not any(".tmp-" in f for f in first["files"])  # no partial file
    # the checkpoint on disk survived: once there is room, the run resumes from it and finishes
    assert second["rc"] == 0, second["stderr"][-2000:]
    assert f"resuming from {last} at step 2" in second["stderr"]
    assert str(run_dir(config, run) / "checkpoints" / "final.pt") in second["files"]


@needs_tmpfs
def test_a_full_disk_during_shard_extraction_is_one_line(tmp_path, tiny_data):
    data_config, _ = tiny_data
    data = tmp_path / "data"
    root = str(raw_dir(data_config, "synthetic"))
    config = tiny_config(tmp_path, data_dir=str(data), datasets={"synthetic": {"root": root}})
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    manifest = stage(config_file, "manifest", "--dataset", "synthetic")
    extract = stage(config_file, "extract", "--dataset", "synthetic", "--shard", "0")
    first, second = in_small_tmpfs(data, "64k", [manifest, extract], tmp_path)
    assert first["rc"] == 0, first["stderr"][-2000:]
    shard = data / "shards" / "synthetic" / "shard-00000.h5"
    assert second["rc"] == 2, second["stderr"][-2000:]
    assert second["stderr"].splitlines()[-1] == f"vididi extract: error: cannot write {shard}: {NO_SPACE}"
    assert second["files"] == first["files"]  # the manifest and its folder, no partial shard
