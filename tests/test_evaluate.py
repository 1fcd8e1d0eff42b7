"""The metric stages (vididi/stages/{retrieval,probe,detection}.py) and the CLI guard around them.

What is checked, and against what:
- every stage writes metric JSON with metrics, protocol, config_hash (= hash of the stored settings),
  settings and versions;
- retrieval: Recall@k equals a hand-written loop over the stored features (cosine, top-k, any hit);
- probe: C is chosen on TRAIN features only (a spy on `select_regularisation`); top-1 equals a
  scikit-learn fit written here with the chosen C; top-5 over 4 classes is 1;
- detection, on oracle window features (a noisy one-hot of each window's true class) so that mAP is
  far from 0: the classifier (and its C selection) sees the train-subset windows only, with the targets
  of a hand-written window labelling; mAP equals `mean_average_precision` recomputed from the written
  THUMOS14 detections file and the ground truth of the test videos;
- a features file without untrimmed windows / without train-test videos gives a one-line VididiError;
- the CLI refuses a metric that does not apply to an evaluation dataset: exit 2, one line.
"""

from __future__ import annotations

import importlib
import json
import shutil

import h5py
import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import vididi.evaluation.probe as probe_module
import vididi.stages.detection as detection_stage
from vididi.config import deep_update, eval_settings, expand_runs, resolve
from vididi.evaluation.detection import Segment, read_thumos14_detections
from vididi.layout import read_json, run_dir, train_info
from vididi.stages.features import main as extract_features
from vididi.stages.pretrain import main as pretrain
from vididi.stages.probe import main as probe_stage
from vididi.stages.retrieval import main as retrieval_stage
from vididi.utils import VididiError, config_hash

DS = "synthetic"
# the numbers, how, what settings (hashed), what from, and the provenance (utils.provenance)
METRIC_FILE_KEYS = {"metrics", "protocol", "config_hash", "settings", "inputs", "versions", "created", "machine", "code",
                    "threads", "ffmpeg"}


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """(config, run, index): one tiny VICReg run and its features on the tiny dataset."""
    from conftest import tiny_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = tiny_config(
        tmp_path_factory.mktemp("evaluate"),
        data_dir=tiny_data[0]["data_dir"], device="cpu", threads=1, pretrain={"steps": 3},
        runs=[{"dataset": DS, "framework": "vicreg", "variant": "base", "backbone": "small3d", "seed": 0}],
    )  # fmt: skip
    (run,) = expand_runs(config)
    pretrain(config, run)
    extract_features(config, run, DS)
    torch.set_num_threads(threads)
    return config, run, tiny_data[1]


def stored(config, run) -> dict:
    with h5py.File(run_dir(config, run) / "features" / f"{DS}.h5", "r") as h5:
        return {g: {k: h5[g][k][()] for k in h5[g]} for g in ("train", "test", "windows")}


def read_metric_file(path) -> dict:
    data = json.loads(path.read_text())
    assert set(data) == METRIC_FILE_KEYS
    assert data["config_hash"] == config_hash(data["settings"])
    assert {"python", "torch", "numpy", "scikit-learn"} <= set(data["versions"])
    return data


def copy_of_features(config, run, workdir, edit) -> dict:
    """A config whose results dir holds a copy of the run's features file, changed by `edit(h5)`."""
    other = resolve(deep_update(config, {"results_dir": str(workdir / "results")}))
    target = run_dir(other, run) / "features" / f"{DS}.h5"
    target.parent.mkdir(parents=True)
    shutil.copy(run_dir(config, run) / "features" / f"{DS}.h5", target)
    shutil.copy(train_info(config, run), train_info(other, run))  # the record of the model the features come from
    with h5py.File(target, "a") as h5:
        edit(h5)
    return other


# ------------------------------------------------------------------------------------------------
# retrieval


def hand_recall(query, query_labels, gallery, gallery_labels, k: int) -> float:
    hits = 0
    for q, label in zip(query, query_labels):
        sims = [float(np.dot(q, g) / (np.linalg.norm(q) * np.linalg.norm(g))) for g in gallery]
        top = sorted(range(len(gallery)), key=lambda j: -sims[j])[:k]
        hits += any(gallery_labels[j] == label for j in top)
    return hits / len(query)


def test_retrieval_recall_of_the_stored_features(trained):
    config, run, _ = trained
    data = read_metric_file(retrieval_stage(config, run, DS))
    f = stored(config, run)
    ks = [1, 5, 10, 20, 50]
    assert list(data["metrics"]) == [f"R@{k}" for k in ks]
    for k in ks:
        expected = hand_recall(f["test"]["features"], f["test"]["labels"], f["train"]["features"], f["train"]["labels"], k)
        assert data["metrics"][f"R@{k}"] == pytest.approx(expected, abs=1e-12), k
    assert data["metrics"]["R@20"] == data["metrics"]["R@50"] == 1.0  # k >= the 16 gallery videos: every class is in
    protocol = data["protocol"]
    assert protocol["n_queries"] == 8 and protocol["gallery_size"] == 16 and protocol["similarity"] == "cosine"
    assert protocol["bn_recalibrated"] is True and protocol["clips_per_video"] == 2
    assert data["inputs"]["run"] == run.name and data["inputs"]["eval_dataset"] == DS
    assert data["settings"] == eval_settings(config, DS) and data["inputs"]["run_hash"] == read_json(train_info(config, run), "x")["settings_hash"]
    assert data["threads"]["torch_intra_op"] == torch.get_num_threads() and data["ffmpeg"] and data["code"]


# ------------------------------------------------------------------------------------------------
# linear probe


def test_probe_selects_C_on_train_features_only(trained, monkeypatch):
    config, run, _ = trained
    calls = []
    real = probe_module.select_regularisation

    def spy(train_x, train_y, *args, **kwargs):
        calls.append((np.asarray(train_x).copy(), np.asarray(train_y).copy()))
        return real(train_x, train_y, *args, **kwargs)

    monkeypatch.setattr(probe_module, "select_regularisation", spy)
    data = read_metric_file(probe_stage(config, run, DS))
    f = stored(config, run)
    (x, y), = calls
    np.testing.assert_array_equal(x, f["train"]["features"].astype(np.float64))
    np.testing.assert_array_equal(y, f["train"]["labels"])
    assert not any((x == row).all(axis=1).any() for row in f["test"]["features"].astype(np.float64))

    C = data["protocol"]["C"]
    assert C in config["evaluation"]["probe"]["Cs"]
    scaler = StandardScaler().fit(f["train"]["features"].astype(np.float64))
    clf = LogisticRegression(C=C, max_iter=1000).fit(scaler.transform(f["train"]["features"].astype(np.float64)), f["train"]["labels"])
    predicted = clf.predict(scaler.transform(f["test"]["features"].astype(np.float64)))
    assert data["metrics"]["top1"] == pytest.approx(np.mean(predicted == f["test"]["labels"]), abs=1e-12)
    assert data["metrics"]["top5"] == 1.0  # only 4 classes: "top-5" is top-4
    assert data["protocol"]["n_train"] == 16 and data["protocol"]["n_test"] == 8


# ------------------------------------------------------------------------------------------------
# detection


def ground_truth(index) -> list[tuple[str, float, float, int]]:
    return [(v, float(s), float(e), int(c)) for v, s, e, c in index.info["segments"]]


def hand_window_labels(video_ids, starts, ends, truth, n_classes: int, min_overlap: float) -> np.ndarray:
    """Class of the segment covering the largest share (>= min_overlap) of each window, else background."""
    labels = []
    for video, start, end in zip(video_ids, starts, ends):
        best, best_cover = n_classes, 0.0
        for v, s, e, c in truth:
            if v != video:
                continue
            cover = max(0.0, min(end, e) - max(start, s)) / (end - start)
            if cover >= min_overlap and cover > best_cover:
                best, best_cover = c, cover
        labels.append(best)
    return np.array(labels)


def oracle_windows(config, index):
    """Edit: replace the window features by a noisy one-hot of each window's true class."""

    def edit(h5):
        w = h5["windows"]
        ids = w["video_ids"][()].astype(str)
        labels = hand_window_labels(ids, w["start"][()], w["end"][()], ground_truth(index), len(index.classes),
                                    config["evaluation"]["detection"]["min_overlap"])  # fmt: skip
        dim = w["features"].shape[1]
        rng = np.random.default_rng(0)
        feats = rng.normal(0, 0.3, (len(ids), dim))
        feats[np.arange(len(ids)), labels] += 4.0
        del w["features"]
        w["features"] = feats.astype(np.float32)

    return edit


def test_detection_trains_on_train_windows_and_scores_its_detections_file(trained, tmp_path, monkeypatch):
    config, run, index = trained
    config = copy_of_features(config, run, tmp_path, oracle_windows(config, index))
    # the tiny dataset has 2 training videos, too few to hold one out: C is validated on windows
    # (detection.MIN_VIDEOS_FOR_VIDEO_SPLIT; the split by video is tested in test_science.py)
    fits, selections = [], []

    class SpyLogisticRegression(LogisticRegression):
        def fit(self, X, y, *args, **kwargs):
            fits.append((np.asarray(X).copy(), np.asarray(y).copy()))
            return super().fit(X, y, *args, **kwargs)

    real_select = detection_stage.select_regularisation

    def spy_select(x, y, *args, **kwargs):
        selections.append((np.asarray(x).copy(), np.asarray(y).copy()))
        return real_select(x, y, *args, **kwargs)

    monkeypatch.setattr(detection_stage, "LogisticRegression", SpyLogisticRegression)
    monkeypatch.setattr(detection_stage, "select_regularisation", spy_select)
    out = detection_stage.main(config, run, DS)
    data = read_metric_file(out)

    w = stored(config, run)["windows"]
    ids, subsets = w["video_ids"].astype(str), w["subset"].astype(str)
    train_rows = subsets == "train"
    train_videos = set(index.video_id[index.select("train", untrimmed=True)])
    test_videos = set(index.video_id[index.select("test", untrimmed=True)])
    assert set(ids[train_rows]) == train_videos and set(ids[~train_rows]) == test_videos
    truth = ground_truth(index)
    targets = hand_window_labels(ids[train_rows], w["start"][train_rows], w["end"][train_rows], truth, 4, 0.5)
    (x_fit, y_fit), = fits
    np.testing.assert_allclose(x_fit, StandardScaler().fit_transform(w["features"][train_rows]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y_fit, targets)
    (x_sel, y_sel), = selections
    np.testing.assert_array_equal(x_sel, w["features"][train_rows])
    np.testing.assert_array_equal(y_sel, targets)

    detections = read_thumos14_detections(out.with_suffix(".detections.txt"))
    assert detections and {d.video for d in detections} <= test_videos
    test_truth = [Segment(v, s, e, c) for v, s, e, c in truth if v in test_videos]
    tious = config["evaluation"]["detection"]["tious"]
    expected = {t: hand_map(detections, test_truth, t) for t in tious}
    metrics = data["metrics"]
    assert list(metrics) == ["mAP@0.3", "mAP@0.4", "mAP@0.5", "mAP@0.6", "mAP@0.7", "mAP_mean"]
    for t in tious:
        assert metrics[f"mAP@{t:g}"] == pytest.approx(expected[t], abs=1e-12)
    assert metrics["mAP_mean"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
    assert metrics["mAP@0.3"] > 0.5  # oracle features: the test is not 0 == 0
    protocol = data["protocol"]
    assert protocol["n_test_videos"] == 2 and protocol["n_ground_truth"] == len(test_truth)
    assert protocol["n_detections"] == len(detections)


def hand_map(detections: list[Segment], truth: list[Segment], tiou: float) -> float:
    """Detection mAP at one tIoU, written out apart from vididi.evaluation.detection: for each class
    with ground truth, detections by falling score each take the not yet taken ground-truth segment of
    their video with the highest tIoU, if that is >= `tiou`; AP sums, over the true positives, 1/n_gt
    times the best precision at that rank or any later one; mAP averages AP over those classes."""
    aps = []
    for label in sorted({g.label for g in truth}):
        gts = [g for g in truth if g.label == label]
        dets = sorted((d for d in detections if d.label == label), key=lambda d: -d.score)
        taken, hits = set(), []
        for d in dets:
            best, best_iou = None, tiou
            for j, g in enumerate(gts):
                inter = max(0.0, min(d.end, g.end) - max(d.start, g.start))
                iou = inter / (max(d.end, g.end) - min(d.start, g.start))
                if g.video == d.video and j not in taken and iou >= best_iou and (best is None or iou > best_iou):
                    best, best_iou = j, iou
            if best is not None:
                taken.add(best)
            hits.append(best is not None)
        precision = [sum(hits[: r + 1]) / (r + 1) for r in range(len(hits))]
        aps.append(sum(max(precision[r:]) / len(gts) for r in range(len(hits)) if hits[r]))
    return float(np.mean(aps))


def one_line_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_detection_without_untrimmed_videos_is_a_one_line_error(trained, tmp_path):
    config, run, _ = trained

    def drop_windows(h5):
        del h5["windows"]

    other = copy_of_features(config, run, tmp_path, drop_windows)
    with pytest.raises(VididiError) as excinfo:
        detection_stage.main(other, run, DS)
    one_line_error(excinfo, "untrimmed", DS)
    assert not (run_dir(other, run) / "metrics").exists()


def test_detection_needs_untrimmed_videos_in_both_subsets(trained, tmp_path):
    config, run, _ = trained

    def all_train(h5):
        n = len(h5["windows"]["subset"])
        del h5["windows"]["subset"]
        h5["windows"]["subset"] = np.array(["train"] * n, dtype=h5py.string_dtype())

    other = copy_of_features(config, run, tmp_path, all_train)
    with pytest.raises(VididiError) as excinfo:
        detection_stage.main(other, run, DS)
    one_line_error(excinfo, "both train and test")


@pytest.mark.parametrize("stage", ["retrieval", "probe"])
def test_trimmed_metrics_without_trimmed_videos_are_a_one_line_error(trained, tmp_path, stage):
    config, run, _ = trained

    def drop_videos(h5):
        del h5["train"], h5["test"]

    other = copy_of_features(config, run, tmp_path, drop_videos)
    with pytest.raises(VididiError) as excinfo:
        importlib.import_module(f"vididi.stages.{stage}").main(other, run, DS)
    one_line_error(excinfo, "train/test")


def test_missing_features_file_is_a_one_line_error(trained, tmp_path):
    config, run, _ = trained
    other = resolve(deep_update(config, {"results_dir": str(tmp_path / "results")}))
    with pytest.raises(VididiError) as excinfo:
        retrieval_stage(other, run, DS)
    one_line_error(excinfo, "features", "not found")


# ------------------------------------------------------------------------------------------------
# the CLI refuses metrics that do not apply


@pytest.mark.parametrize(
    "stage, eval_dataset, has",
    [("detection", "synthetic", "retrieval, probe"), ("retrieval", "thumos", "detection"), ("probe", "thumos", "detection")],
)
def test_cli_refuses_a_metric_that_does_not_apply(tmp_path, capsys, stage, eval_dataset, has):
    from conftest import TINY
    from vididi.cli import main

    config = deep_update(TINY, {
        "data_dir": str(tmp_path / "data"), "results_dir": str(tmp_path / "results"),
        "datasets": {"synthetic": {"synthetic": {"untrimmed": {"train": 0, "test": 0}}}, "thumos": {"source": "thumos14"}},
        "runs": [{"dataset": "synthetic", "framework": "vicreg", "variant": "base", "backbone": "small3d", "seed": 0,
                  "eval_datasets": ["synthetic", "thumos"]}],
    })  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [stage, "--config", str(path), "--dataset", "synthetic", "--run", "vicreg-base-small3d-s0", "--eval-dataset", eval_dataset]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vididi {stage}: error: {stage} does not apply to {eval_dataset} (it has: {has})"]
    assert not (tmp_path / "results" / "synthetic").exists()
