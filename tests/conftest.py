"""Shared fixtures: a tiny synthetic dataset built once per test session through the real stages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("VIDIDI_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
BIN = Path(sys.executable).parent  # the venv's bin: snakemake, hadolint and the `vididi` script rules call


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: the venv's tools on PATH, no progress bars."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "VIDIDI_NO_PROGRESS": "1", **extra}


def snakemake(workdir: Path, *args: str, timeout: int = 120, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the repository's workflow in `workdir` (its config.yaml, data/ and results/ live there)."""
    command = [str(BIN / "snakemake"), "-s", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(command, cwd=workdir, env=tool_env(**(extra_env or {})), capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints: rule -> count (without the total)."""
    counts, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
        elif in_table:
            fields = line.split()
            if len(fields) == 2 and fields[1].isdigit():
                if fields[0] == "total":
                    break
                counts[fields[0]] = int(fields[1])
    return counts


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: the machine has 2 shared cores, and CLI subprocesses run with `threads: 1`,
    so in-process reference computations use the same reduction order (bitwise comparisons)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

TINY = {
    "threads": 2,
    "datasets": {
        "synthetic": {
            "source": "synthetic",
            "synthetic": {
                "classes": ["LinearMotion", "Accelerating", "Orbit", "Pulsing"],
                "groups": 3, "clips_per_group": 2, "test_groups": 1, "val_groups": 1,
                "frames": 24, "size": 32, "fps": 8,
                "untrimmed": {"train": 2, "test": 2, "frames": 64, "segments": [1, 2], "segment_frames": [16, 24], "min_gap": 4},
            },
            "extract": {"short_side": 32, "shard_size": 10},
            "clips": {"frames": 4, "stride": 2, "size": 28, "eval_clips": 2, "sigma_clips": 16},
        }
    },
    "runs": [{"dataset": "synthetic", "framework": "vicreg", "variant": ["base", "vididi"], "backbone": "small3d", "seed": 0}],
    "pretrain": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1, "num_workers": 0},
    "backbones": {"small3d": {"widths": [4, 8, 8, 16]}},
    "frameworks": {
        "vicreg": {"projector": [32, 32, 32]},
        "simclr": {"projector": [32, 32, 16]},
        "byol": {"projector": [32, 32, 16], "predictor": [32, 16]},
    },
    "evaluation": {"bn_recalibration_clips": 8, "batch_size": 4, "num_workers": 0},
}  # fmt: skip


def tiny_config(workdir: Path, **overrides) -> dict:
    """The tiny config with data/results under `workdir`, validated (defaults filled)."""
    from vididi.config import deep_update, resolve

    cfg = deep_update(TINY, {"data_dir": str(workdir / "data"), "results_dir": str(workdir / "results")})
    return resolve(deep_update(cfg, overrides))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """(config, DatasetIndex) of the tiny synthetic dataset: generated, extracted and indexed once."""
    from vididi.data.extract import build_index, extract_shard, write_manifest
    from vididi.data.shards import DatasetIndex
    from vididi.data.synthetic import generate
    from vididi.layout import raw_dir, read_manifest

    workdir = tmp_path_factory.mktemp("tiny")
    config = tiny_config(workdir)
    ds = config["datasets"]["synthetic"]
    generate(raw_dir(config, "synthetic"), ds["synthetic"], seed=ds["seed"], workers=2)
    write_manifest(config, "synthetic")
    for shard in range(read_manifest(config, "synthetic")["n_shards"]):
        extract_shard(config, "synthetic", shard)
    build_index(config, "synthetic")
    from vididi.layout import shard_dir

    return config, DatasetIndex.load(shard_dir(config, "synthetic"))
