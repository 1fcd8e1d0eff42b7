"""`vididi detection`: temporal action detection over a run's frozen window features (stages/features.py).

A window classifier (logistic regression with a background class, C chosen as for the probe; with
`evaluation.detection.c_selection: videos` on held-out training videos, `evaluation.probe.grouped_split`,
instead of a stratified part of all windows; with fewer than `MIN_VIDEOS_FOR_VIDEO_SPLIT` training videos
it falls back to windows and says so in the protocol) is trained on the windows of the untrimmed TRAIN
videos; per-class score curves of the untrimmed TEST
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
from ..utils import VididiError, get_logger, write_metrics

# Below this many untrimmed training videos a held-out part is one video (val_fraction 0.2), too few to
# choose C on: C is then validated on windows, as with `c_selection: windows`.
MIN_VIDEOS_FOR_VIDEO_SPLIT = 5
C_SELECTED_ON = {"windows": "a stratified part of all training windows (windows of one video on both sides)",
                 "videos": "held-out training videos (no video on both sides)"}  # fmt: skip


def c_validation_groups(train_video_ids, c_selection: str) -> tuple[np.ndarray | None, str]:
    """(the groups `select_regularisation` holds out whole, or None for windows; how C was validated)."""
    n_videos = np.unique(train_video_ids).size
    if c_selection == "windows":
        return None, C_SELECTED_ON["windows"]
    if n_videos < MIN_VIDEOS_FOR_VIDEO_SPLIT:
        return None, (f"{C_SELECTED_ON['windows']}; c_selection 'videos' fell back to windows: "
                      f"{n_videos} training videos, fewer than {MIN_VIDEOS_FOR_VIDEO_SPLIT}")  # fmt: skip
    return np.asarray(train_video_ids), C_SELECTED_ON["videos"]


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
    by_video, c_selected_on = c_validation_groups(windows["video_ids"][is_train], dcfg["c_selection"])
    if by_video is None and dcfg["c_selection"] == "videos":
        get_logger().warning("detection on %s: %s", eval_dataset, c_selected_on)
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
                "C": best_C, "val_scores": val_scores, "C_selected_on": c_selected_on,
                "window_step": dcfg["window_step"],
                "min_overlap": dcfg["min_overlap"], "thresholds": dcfg["thresholds"], "nms_iou": dcfg["nms_iou"],
                "tious": dcfg["tious"], "matching": "ActivityNet-style (highest-tIoU unmatched ground truth)",
                "n_test_videos": len(test_videos), "n_ground_truth": len(truth), "n_detections": len(detections),
                "per_class": {classes[c]: aps for c, aps in result["per_class"].items()}}  # fmt: skip
    write_metrics(out, metrics, protocol, **inputs.record(config, run, eval_dataset, features))
    return out
