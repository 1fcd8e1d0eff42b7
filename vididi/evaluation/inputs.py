"""What the metric stages (retrieval, probe, detection) share: their inputs and the settings their
metric files record (`utils.write_metrics`)."""

from __future__ import annotations

from pathlib import Path

from .. import config as cfgmod
from .. import layout
from ..utils import VididiError


def load(config: dict, run: cfgmod.Run, eval_dataset: str, stage: str) -> tuple[dict, Path, Path]:
    """(features, features file, metric file) of a stage."""
    features_path = layout.features_file(config, run, eval_dataset)
    return layout.read_features(features_path), features_path, layout.metrics_file(config, run, stage, eval_dataset)


def settings(config: dict, run: cfgmod.Run, eval_dataset: str, features: dict) -> dict:
    return {
        "run": run.name, "eval_dataset": eval_dataset,
        "pretrain_hash": cfgmod.settings_hash(cfgmod.pretrain_settings(config, run)),
        "clips": config["datasets"][eval_dataset]["clips"], "evaluation": cfgmod.evaluation_section(config),
        "bn_recalibrated": bool(features["attrs"]["bn_recalibrated"]),
    }  # fmt: skip


def trimmed(features: dict, path: Path) -> tuple[dict, dict]:
    if "train" not in features or "test" not in features:
        raise VididiError(f"{path} has no train/test video features (an untrimmed-only dataset?)")
    return features["train"], features["test"]
