"""`vididi download`: fetch and unpack a registry dataset (resumable, checksummed; data/download.py)."""

from __future__ import annotations

from pathlib import Path

from ..data.extract import download


def main(config: dict, dataset: str) -> Path:
    """Download `dataset`; returns the marker file that says the raw folder is complete."""
    return download(config, dataset)
