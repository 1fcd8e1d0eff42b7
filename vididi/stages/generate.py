"""`vididi generate`: render the synthetic dataset's videos into `layout.raw_dir` (data/synthetic.py)."""

from __future__ import annotations

from pathlib import Path

from .. import layout
from ..data.synthetic import generate
from ..utils import VididiError


def main(config: dict, dataset: str, workers: int | None = None) -> Path:
    """Generate `dataset` (a synthetic source) with `workers` processes (default: the config's threads)."""
    ds = config["datasets"][dataset]
    if ds["source"] != "synthetic":
        raise VididiError(f"dataset {dataset} is not synthetic (source: {ds['source']}); use `vididi download`")
    out = layout.raw_dir(config, dataset)
    generate(out, ds["synthetic"], seed=ds["seed"], workers=workers or config["threads"])
    return out
