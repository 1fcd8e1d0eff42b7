"""What the evaluation stages share: their inputs, checked against the config before use, and the
settings their outputs record (`utils.write_metrics`; vididi/stamps.py says why).

The chain of stamps: final.pt carries its run hash (train_info.json holds the same, readable without
torch); a features file carries the run hash it was computed from and its own settings hash; a
metric file carries its stage's settings hash and, under `inputs`, the run and features hashes it
was computed from. Each stage checks the link before it, the summary checks every row.
"""

from __future__ import annotations

from pathlib import Path

from .. import config as cfgmod
from .. import layout, stamps
from ..data.shards import DatasetIndex
from ..utils import VididiError


def expected_run(config: dict, run: cfgmod.Run) -> tuple[str, dict]:
    """(run hash, settings) the config asks of `run`'s final.pt: its settings and its data's content."""
    content = DatasetIndex.for_dataset(config, run.dataset).content
    settings = cfgmod.pretrain_settings(config, run)
    return cfgmod.run_hash(settings, content), {**settings, "data_content": content}


def require_current_run(config: dict, run: cfgmod.Run) -> str:
    """The run hash, after checking that final.pt (through train_info.json, written with it) was made
    with the config's settings and data; else one line naming what differs."""
    expected, settings = expected_run(config, run)
    info_path = layout.train_info(config, run)
    info = stamps.read_json_stamp(info_path) if info_path.is_file() else {}
    stamps.require(layout.final_checkpoint(config, run), info.get("settings_hash"), expected, info.get("settings"), settings)
    return expected


def features_settings(config: dict, eval_dataset: str) -> dict:
    """What a features file depends on beyond the run: the evaluation settings and the content of the
    evaluation dataset (the features rule's parameter is their hash)."""
    content = DatasetIndex.for_dataset(config, eval_dataset).content
    return {**cfgmod.eval_settings(config, eval_dataset), "data_content": content}


def load(config: dict, run: cfgmod.Run, eval_dataset: str, stage: str) -> tuple[dict, Path, Path]:
    """(features, features file, metric file) of a stage, the features checked against the config."""
    features_path = layout.features_file(config, run, eval_dataset)
    features = layout.read_features(features_path)
    require_current_features(config, run, eval_dataset, features, features_path)
    return features, features_path, layout.metrics_file(config, run, stage, eval_dataset)


def require_current_features(config: dict, run: cfgmod.Run, eval_dataset: str, features: dict, path: Path) -> None:
    attrs = features["attrs"]
    expected = features_settings(config, eval_dataset)
    stamps.require(path, attrs.get("settings_hash"), cfgmod.settings_hash(expected), what="evaluation settings")
    stamps.require(path, attrs.get("run_hash"), require_current_run(config, run), what="model (run hash)")


def record(config: dict, run: cfgmod.Run, eval_dataset: str, features: dict, settings: dict | list | None = None) -> dict:
    """The `settings` (the stage's own: the hash its rule carries) and `inputs` a metric file records."""
    attrs = features["attrs"]
    return {
        "settings": cfgmod.eval_settings(config, eval_dataset) if settings is None else settings,
        "inputs": {"run": run.name, "eval_dataset": eval_dataset, "run_hash": str(attrs["run_hash"]),
                   "features_hash": str(attrs["settings_hash"]), "bn_recalibrated": bool(attrs["bn_recalibrated"])},
    }  # fmt: skip


def trimmed(features: dict, path: Path) -> tuple[dict, dict]:
    if "train" not in features or "test" not in features:
        raise VididiError(f"{path} has no train/test video features (an untrimmed-only dataset?)")
    return features["train"], features["test"]


def probe_solver(config: dict) -> dict:
    """The linear probe's `solver` (`evaluation.probe.solver`) and, for the torch solver, the `device`
    it runs on (the configured `device`), as keyword arguments of the probe functions."""
    solver = config["evaluation"]["probe"]["solver"]
    if solver == "sklearn":
        return {"solver": solver}
    from ..ssl.encoder import resolve_device

    return {"solver": solver, "device": resolve_device(config["device"])}


def device(config: dict):
    """Where the metric stages compute (retrieval's similarity blocks): the configured `device`."""
    from ..ssl.encoder import resolve_device

    return resolve_device(config["device"])


def stage_settings(config: dict, run: cfgmod.Run, stage: str, eval_dataset: str, fraction: float = 1.0) -> dict:
    """The settings a metric file of `stage` records (its `config_hash`, what its rule hashes): the
    evaluation settings (with the labelled subset below 1.0), attention's own, or fine-tuning's with
    the content of the data it trains and tests on."""
    if stage == "attention":
        return cfgmod.attention_settings(config, eval_dataset)
    if stage == "finetune":
        content = DatasetIndex.for_dataset(config, eval_dataset).content
        return {**cfgmod.finetune_settings(config, run, eval_dataset, fraction), "data_content": content}
    return {**cfgmod.eval_settings(config, eval_dataset), **cfgmod.label_subset_settings(config, fraction)}
