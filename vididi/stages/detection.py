"""`vididi detection`: temporal action detection over a run's frozen window features (stages/features.py).

A window classifier (logistic regression with a background class, C chosen as for the probe; with
`evaluation.detection.c_selection: videos` on held-out training videos, `evaluation.probe.grouped_split`,
instead of a stratified part of all windows) is trained on the windows of the untrimmed TRAIN videos; per-class score curves of the untrimmed TEST
videos -> segments at several thresholds -> per-class NMS -> AP per class and mAP at tIoU 0.3:0.1:0.7
(evaluation/detection.py, ActivityNet-style matching and interpolation). Writes
`layout.metrics_file(config, run, "detection", eval_dataset)` and the detections in the THUMOS14
evaluation format next to it (`layout.detections_file`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from .. import config as cfgmod
from .. import layout
from ..data.shards import DatasetIndex
from ..evaluation import inputs
from ..evaluation.detection import Segment, detect, mean_average_precision, window_targets, write_thumos14_detections
from ..evaluation.probe import select_regularisation
from ..utils import VididiError, write_metrics


def main(config: dict, run: cfgmod.Run, eval_dataset: str) -> Path:
    """mAP at the configured tIoUs of `run`'s window features on `eval_dataset`'s untrimmed test videos."""
    features, features_path, out = inputs.load(config, run, eval_dataset, "detection")
    if "windows" not in features:
        raise VididiError(f"{features_path} has no untrimmed-video windows: {eval_dataset} has no detection videos")
    dcfg = config["evaluation"]["detection"]
    info = DatasetIndex.for_dataset(config, eval_dataset).info
    classes = features["classes"]
    ground_truth = [Segment(v, s, e, int(c)) for v, s, e, c in info["segments"]]
    windows = features["windows"]
    is_train = windows["subset"] == "train"
    if not is_train.any() or is_train.all():
        raise VididiError(f"{eval_dataset}: detection needs untrimmed videos in both train and test subsets")

    # Window classifier with a background class (label len(classes)), trained on train videos only.
    labels = window_targets(windows, is_train, ground_truth, len(classes), dcfg["min_overlap"])
    x_train = windows["features"][is_train]
    by_video = windows["video_ids"][is_train] if dcfg["c_selection"] == "videos" else None
    best_C, val_scores = select_regularisation(x_train, labels, config["evaluation"]["probe"]["Cs"],
                                               config["evaluation"]["probe"]["val_fraction"], run.seed,
                                               groups=by_video)  # fmt: skip
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=best_C, max_iter=2000).fit(scaler.transform(x_train), labels)
    probs = np.zeros((int((~is_train).sum()), len(classes) + 1))
    probs[:, clf.classes_] = clf.predict_proba(scaler.transform(windows["features"][~is_train]))

    detections = detect(windows, ~is_train, probs[:, : len(classes)], dcfg)
    test_videos = set(windows["video_ids"][~is_train])
    truth = [g for g in ground_truth if g.video in test_videos]
    result = mean_average_precision(detections, truth, tious=dcfg["tious"])
    write_thumos14_detections(layout.detections_file(config, run, eval_dataset), detections)
    metrics = {f"mAP@{t:g}": result["map"][t] for t in dcfg["tious"]}
    metrics["mAP_mean"] = result["average_map"]
    protocol = {"classifier": "logistic regression with a background class on window features (train videos)",
                "C": best_C, "val_scores": val_scores, "C_selected_on": {
                    "windows": "a stratified part of all training windows (windows of one video on both sides)",
                    "videos": "held-out training videos (no video on both sides)"}[dcfg["c_selection"]],
                "window_step": dcfg["window_step"],
                "min_overlap": dcfg["min_overlap"], "thresholds": dcfg["thresholds"], "nms_iou": dcfg["nms_iou"],
                "tious": dcfg["tious"], "matching": "ActivityNet-style (highest-tIoU unmatched ground truth)",
                "n_test_videos": len(test_videos), "n_ground_truth": len(truth), "n_detections": len(detections),
                "per_class": {classes[c]: aps for c, aps in result["per_class"].items()}}  # fmt: skip
    write_metrics(out, metrics, protocol, inputs.settings(config, run, eval_dataset, features))
    return out
