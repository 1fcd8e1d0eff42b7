"""`vididi index`: index the shards, list the bad videos, measure the derivative scales (data/extract.py)."""

from __future__ import annotations

from pathlib import Path

from ..data.extract import build_index


def main(config: dict, dataset: str) -> Path:
    """Write `layout.index_file`, `layout.info_file` and `layout.bad_videos_file` of `dataset`."""
    return build_index(config, dataset)
