"""The metric stages over a run's frozen features (features.py): retrieval, linear probe, detection.

Each writes results/<dataset>/runs/<run>/metrics/<stage>-<eval_dataset>.json: the numbers, the
protocol parameters, the config hash and package versions (`utils.write_metrics`).

- retrieval: every test video queries all train videos by cosine similarity; Recall@k = share of
  queries with a same-class video among the k nearest (retrieval.py).
- probe: multinomial logistic regression on standardised features; C chosen on a validation part
  of the TRAIN split; top-1 / top-5 on test (probe.py).
- detection: a window classifier (logistic regression with a background class) trained on the
  windows of the untrimmed TRAIN videos, per-class score curves of the untrimmed TEST videos ->
  segments at several thresholds -> per-class NMS -> AP per class and mAP at tIoU 0.3:0.1:0.7
  (detection.py, ActivityNet-style matching and interpolation). Detections are also written in the
  THUMOS14 evaluation format next to the metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from . import config as cfgmod
from .detection import Segment, mean_average_precision, nms, scores_to_segments, window_labels, write_thumos14_detections
from .features import read_features
from .probe import linear_probe, select_regularisation
from .retrieval import recall_at_k
from .utils import VididiError, write_metrics


def _load(config: dict, run: cfgmod.Run, eval_dataset: str, stage: str) -> tuple[dict, Path, Path]:
    """(features, features file, metric file) of a stage."""
    base = cfgmod.run_dir(config, run)
    features_path = base / "features" / f"{eval_dataset}.h5"
    return read_features(features_path), features_path, base / "metrics" / f"{stage}-{eval_dataset}.json"


def _settings(config: dict, run: cfgmod.Run, eval_dataset: str, features: dict) -> dict:
    return {
        "run": run.name, "eval_dataset": eval_dataset,
        "pretrain_hash": cfgmod.settings_hash(cfgmod.pretrain_settings(config, run)),
        "clips": config["datasets"][eval_dataset]["clips"], "evaluation": config["evaluation"],
        "bn_recalibrated": bool(features["attrs"]["bn_recalibrated"]),
    }  # fmt: skip


def _trimmed(features: dict, path: Path) -> tuple[dict, dict]:
    if "train" not in features or "test" not in features:
        raise VididiError(f"{path} has no train/test video features (an untrimmed-only dataset?)")
    return features["train"], features["test"]


def retrieval(config: dict, run: cfgmod.Run, eval_dataset: str) -> Path:
    features, features_path, out = _load(config, run, eval_dataset, "retrieval")
    train, test = _trimmed(features, features_path)
    ks = config["evaluation"]["retrieval_ks"]
    result = recall_at_k(test["features"], test["labels"], train["features"], train["labels"], ks=ks)
    metrics = {f"R@{k}": v for k, v in result.recall.items()}
    if "target_test" in features:  # a BYOL run's EMA target encoder (evaluation.target_encoder)
        target = recall_at_k(features["target_test"]["features"], features["target_test"]["labels"],
                             features["target_train"]["features"], features["target_train"]["labels"], ks=ks)  # fmt: skip
        metrics.update({f"target_R@{k}": v for k, v in target.recall.items()})
    protocol = {"queries": "test split", "gallery": "train split", "similarity": "cosine",
                "hit": "any same-class video among the top k", "ks": ks,
                "n_queries": len(test["labels"]), "gallery_size": result.gallery_size,
                "clips_per_video": int(features["attrs"]["eval_clips"]),
                "bn_recalibrated": bool(features["attrs"]["bn_recalibrated"])}  # fmt: skip
    write_metrics(out, metrics, protocol, _settings(config, run, eval_dataset, features))
    return out


def probe(config: dict, run: cfgmod.Run, eval_dataset: str) -> Path:
    features, features_path, out = _load(config, run, eval_dataset, "probe")
    train, test = _trimmed(features, features_path)
    pcfg = config["evaluation"]["probe"]
    result = linear_probe(train["features"], train["labels"], test["features"], test["labels"],
                          Cs=pcfg["Cs"], val_fraction=pcfg["val_fraction"], seed=run.seed)  # fmt: skip
    metrics = {"top1": result["top1"], "top5": result["top5"]}
    if "target_test" in features:  # a BYOL run's EMA target encoder (evaluation.target_encoder)
        target = linear_probe(features["target_train"]["features"], features["target_train"]["labels"],
                              features["target_test"]["features"], features["target_test"]["labels"],
                              Cs=pcfg["Cs"], val_fraction=pcfg["val_fraction"], seed=run.seed)  # fmt: skip
        metrics.update(target_top1=target["top1"], target_top5=target["top5"])
    protocol = {"model": "multinomial logistic regression on standardised features",
                "C_selected_on": f"{pcfg['val_fraction']} of the train split (stratified)", **result,
                "bn_recalibrated": bool(features["attrs"]["bn_recalibrated"])}  # fmt: skip
    write_metrics(out, metrics, protocol, _settings(config, run, eval_dataset, features))
    return out


def detection(config: dict, run: cfgmod.Run, eval_dataset: str) -> Path:
    from .data.shards import DatasetIndex

    features, features_path, out = _load(config, run, eval_dataset, "detection")
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
    labels = _window_targets(windows, is_train, ground_truth, len(classes), dcfg["min_overlap"])
    x_train = windows["features"][is_train]
    by_video = windows["video_ids"][is_train] if dcfg["c_selection"] == "videos" else None
    best_C, val_scores = select_regularisation(x_train, labels, config["evaluation"]["probe"]["Cs"],
                                               config["evaluation"]["probe"]["val_fraction"], run.seed,
                                               groups=by_video)  # fmt: skip
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=best_C, max_iter=2000).fit(scaler.transform(x_train), labels)
    probs = np.zeros((int((~is_train).sum()), len(classes) + 1))
    probs[:, clf.classes_] = clf.predict_proba(scaler.transform(windows["features"][~is_train]))

    detections = _detect(windows, ~is_train, probs[:, : len(classes)], dcfg)
    test_videos = set(windows["video_ids"][~is_train])
    truth = [g for g in ground_truth if g.video in test_videos]
    result = mean_average_precision(detections, truth, tious=dcfg["tious"])
    write_thumos14_detections(out.with_suffix(".detections.txt"), detections)
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
    write_metrics(out, metrics, protocol, _settings(config, run, eval_dataset, features))
    return out


def _window_targets(windows: dict, is_train: np.ndarray, ground_truth: list[Segment], n_classes: int,
                    min_overlap: float) -> np.ndarray:  # fmt: skip
    labels = np.empty(int(is_train.sum()), np.int64)
    rows = np.flatnonzero(is_train)
    vids = windows["video_ids"][rows]
    for video in np.unique(vids):
        mask = vids == video
        segs = [g for g in ground_truth if g.video == video]
        labels[mask] = window_labels(windows["start"][rows[mask]], windows["end"][rows[mask]], segs,
                                     classes=list(range(n_classes)), min_overlap=min_overlap)  # fmt: skip
    return labels


def _detect(windows: dict, rows_mask: np.ndarray, scores: np.ndarray, dcfg: dict) -> list[Segment]:
    """Segments from each test video's per-class score curves at every threshold, then per-class NMS."""
    rows = np.flatnonzero(rows_mask)
    vids = windows["video_ids"][rows]
    found: list[Segment] = []
    for video in np.unique(vids):
        local = np.flatnonzero(vids == video)
        order = local[np.argsort(windows["start"][rows[local]], kind="stable")]
        for threshold in dcfg["thresholds"]:
            found += scores_to_segments(windows["start"][rows[order]], windows["end"][rows[order]],
                                        scores[order], threshold, video=str(video))  # fmt: skip
    return nms(found, dcfg["nms_iou"])
