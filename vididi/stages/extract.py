"""`vididi extract`: decode one shard's videos into an HDF5 shard (data/extract.py, data/shards.py)."""

from __future__ import annotations

from pathlib import Path

from ..data.extract import extract_shard


def main(config: dict, dataset: str, shard: int) -> Path:
    """Write `layout.shard_file` number `shard` of `dataset`."""
    return extract_shard(config, dataset, shard)
