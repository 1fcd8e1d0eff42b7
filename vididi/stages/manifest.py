"""`vididi manifest`: list a dataset's videos and assign them to shards (data/extract.py)."""

from __future__ import annotations

from pathlib import Path

from ..data.extract import write_manifest


def main(config: dict, dataset: str) -> Path:
    """Write `layout.manifest_file` of `dataset`."""
    return write_manifest(config, dataset)
