"""Shared fixtures: a tiny synthetic dataset built once per test session through the real stages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VIDIDI_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[1]

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
    from vididi.config import raw_dir
    from vididi.data.extract import build_index, extract_shard, read_manifest, write_manifest
    from vididi.data.shards import DatasetIndex
    from vididi.data.synthetic import generate

    workdir = tmp_path_factory.mktemp("tiny")
    config = tiny_config(workdir)
    ds = config["datasets"]["synthetic"]
    generate(raw_dir(config, "synthetic"), ds["synthetic"], seed=ds["seed"], workers=2)
    write_manifest(config, "synthetic")
    for shard in range(read_manifest(config, "synthetic")["n_shards"]):
        extract_shard(config, "synthetic", shard)
    build_index(config, "synthetic")
    from vididi.config import shard_dir

    return config, DatasetIndex.load(shard_dir(config, "synthetic"))
