"""`vididi probe`: linear probe on a run's frozen features.

Multinomial logistic regression on standardised features; C chosen on a stratified validation part
of the TRAIN split; top-1 / top-5 on test (evaluation/probe.py); target_top1 / target_top5 the same
for a BYOL run's EMA target encoder when the features file holds its features. With
`--label-fraction f` < 1 (label efficiency) the probe sees only the per-class subset of the train
videos that fine-tuning sees too (evaluation/labels.py). Writes
`layout.metrics_file(config, run, "probe", eval_dataset, f)`.
"""

from __future__ import annotations

from pathlib import Path

from .. import config as cfgmod
from .. import layout
from ..evaluation import inputs
from ..evaluation.labels import label_subset, subset_digest
from ..evaluation.probe import linear_probe
from ..utils import write_metrics


def main(config: dict, run: cfgmod.Run, eval_dataset: str, label_fraction: float = 1.0) -> Path:
    """Top-1 / top-5 of a linear probe on `run`'s features of `eval_dataset` (`label_fraction` of the labels)."""
    features, features_path, out = inputs.load(config, run, eval_dataset, "probe")
    out = layout.metrics_file(config, run, "probe", eval_dataset, label_fraction)
    train, test = inputs.trimmed(features, features_path)
    subset = label_subset(train["labels"], label_fraction, config["evaluation"]["label_seed"])
    pcfg = config["evaluation"]["probe"]
    fit = dict(Cs=pcfg["Cs"], val_fraction=pcfg["val_fraction"], seed=run.seed, **inputs.probe_solver(config))

    def probe(train: dict, test: dict) -> dict:
        return linear_probe(train["features"][subset], train["labels"][subset], test["features"], test["labels"], **fit)

    result = probe(train, test)
    metrics = {"top1": result["top1"], "top5": result["top5"]}
    if "target_test" in features:  # a BYOL run's EMA target encoder (evaluation.target_encoder)
        target = probe(features["target_train"], features["target_test"])
        metrics.update(target_top1=target["top1"], target_top5=target["top5"])
    protocol = {"model": "multinomial logistic regression on standardised features",
                **({} if pcfg["solver"] == "sklearn" else {"solver": pcfg["solver"]}),
                "C_selected_on": f"{pcfg['val_fraction']} of the train split (stratified)", **result,
                "bn_recalibrated": bool(features["attrs"]["bn_recalibrated"])}  # fmt: skip
    if label_fraction < 1.0:
        protocol["label_subset"] = {"videos": int(subset.size), "digest": subset_digest(train["video_ids"][subset])}
    settings = inputs.stage_settings(config, run, "probe", eval_dataset, label_fraction)
    write_metrics(out, metrics, protocol, **inputs.record(config, run, eval_dataset, features, settings))
    return out
