"""`vididi probe`: linear probe on a run's frozen features.

Multinomial logistic regression on standardised features; C chosen on a stratified validation part
of the TRAIN split; top-1 / top-5 on test (evaluation/probe.py); target_top1 / target_top5 the same
for a BYOL run's EMA target encoder when the features file holds its features. Writes
`layout.metrics_file(config, run, "probe", eval_dataset)`.
"""

from __future__ import annotations

from pathlib import Path

from .. import config as cfgmod
from ..evaluation import inputs
from ..evaluation.probe import linear_probe
from ..utils import write_metrics


def main(config: dict, run: cfgmod.Run, eval_dataset: str) -> Path:
    """Top-1 / top-5 of a linear probe on `run`'s features of `eval_dataset`."""
    features, features_path, out = inputs.load(config, run, eval_dataset, "probe")
    train, test = inputs.trimmed(features, features_path)
    pcfg = config["evaluation"]["probe"]
    fit = dict(Cs=pcfg["Cs"], val_fraction=pcfg["val_fraction"], seed=run.seed, **inputs.probe_solver(config))
    result = linear_probe(train["features"], train["labels"], test["features"], test["labels"], **fit)
    metrics = {"top1": result["top1"], "top5": result["top5"]}
    if "target_test" in features:  # a BYOL run's EMA target encoder (evaluation.target_encoder)
        target = linear_probe(features["target_train"]["features"], features["target_train"]["labels"],
                              features["target_test"]["features"], features["target_test"]["labels"], **fit)  # fmt: skip
        metrics.update(target_top1=target["top1"], target_top5=target["top5"])
    protocol = {"model": "multinomial logistic regression on standardised features",
                **({} if pcfg["solver"] == "sklearn" else {"solver": pcfg["solver"]}),
                "C_selected_on": f"{pcfg['val_fraction']} of the train split (stratified)", **result,
                "bn_recalibrated": bool(features["attrs"]["bn_recalibrated"])}  # fmt: skip
    write_metrics(out, metrics, protocol, **inputs.record(config, run, eval_dataset, features))
    return out
