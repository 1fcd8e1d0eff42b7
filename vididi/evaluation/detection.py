"""Temporal action localisation: window labels, window scores -> segments, NMS, and THUMOS14 mAP.

Pipeline (docs/method.md): sliding-window features of untrimmed videos -> per-window class scores from a
classifier trained on the train split with an extra background class (`window_labels` makes its
targets) -> segments (`scores_to_segments`) -> per-class NMS (`nms`) -> mAP at temporal IoU
0.3:0.1:0.7 (`mean_average_precision`), evaluated as in THUMOS14 / ActivityNet:

* Per class, detections are sorted by score, highest first (stable: equal scores keep input order).
* Each detection is matched to the not-yet-matched ground truth of its class in the same video with
  the highest tIoU, provided that tIoU >= the threshold (ties in tIoU go to the ground truth listed
  first); otherwise it is a false positive. A second detection of an already matched ground truth is
  therefore a false positive, and so is any detection in a video without ground truth of its class.
* AP is the area under the precision-recall curve after replacing each precision by the highest
  precision at any equal or higher recall (the interpolated envelope of ActivityNet's
  `interpolated_prec_rec`), summed over the recall steps.
* A class with ground truth but no detections has AP 0. A class without ground truth has no defined
  AP; it is left out of the mean and listed under "classes_without_ground_truth".

This is the ActivityNet evaluation that most recent THUMOS14 results use. The official THUMOS14
MATLAB toolkit (TH14evalDet) differs in details, so its numbers can differ slightly: it assigns each
ground truth its best-overlapping free detection (overlap strictly above the threshold), it drops
false positives that overlap an "Ambiguous" span, and it has its own AP summation.

Times are seconds. Labels are class names (str) or class indices (int); a run must use one kind.

File formats (for real data as well as ours):
* THUMOS14 temporal annotations: one file `{Class}_{subset}.txt` per class (subset "val" or "test"),
  lines `video_name start end`. `Ambiguous_{subset}.txt` marks ambiguous spans, which are not a class:
  it is ignored here, so a detection on an ambiguous span is an ordinary false positive.
* THUMOS14 detections: lines `video_name start end class_index score`.
* ActivityNet detections JSON: {"version", "results": {video: [{"label", "segment": [s, e],
  "score"}]}, "external_data": {}}; ActivityNet ground truth JSON: {"database": {video: {"subset",
  "duration", "annotations": [{"label", "segment": [s, e]}]}}}.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

from vididi.utils import VididiError, atomic_path, write_json

DEFAULT_TIOUS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
AMBIGUOUS_CLASS = "Ambiguous"


@dataclass(frozen=True)
class Segment:
    """A labelled time span of one video; `score` is set for detections, None for ground truth."""

    video: str
    start: float
    end: float
    label: str | int
    score: float | None = None

    def __post_init__(self) -> None:
        # Store plain Python types: numpy scalars would break JSON keys and mixed-type comparisons.
        label = self.label
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (str, int, np.integer)):
            raise VididiError(f"segment label must be a class name or index, got {label!r}")
        object.__setattr__(self, "label", str(label) if isinstance(label, str) else int(label))
        object.__setattr__(self, "video", str(self.video))
        object.__setattr__(self, "start", float(self.start))
        object.__setattr__(self, "end", float(self.end))
        if not (math.isfinite(self.start) and math.isfinite(self.end)) or self.end < self.start:
            raise VididiError(
                f"segment of video {self.video!r} must have finite start <= end, "
                f"got [{self.start}, {self.end}]"
            )
        if self.score is not None:
            object.__setattr__(self, "score", float(self.score))
            if math.isnan(self.score):
                raise VididiError(f"segment of video {self.video!r} has a NaN score")


# ----------------------------------------------------------------------------- geometry


def temporal_iou(a, b) -> np.ndarray:
    """Temporal IoU |a ∩ b| / |a ∪ b| of intervals given as [start, end] rows.

    `a` is (2,) or (N, 2), `b` is (2,) or (M, 2); the result is pairwise, shaped (N, M), (M,), (N,)
    or () accordingly. Touching intervals ([0, 1], [1, 2]) have IoU 0. A zero-length interval has
    IoU 0 with everything, itself included (it has no extent to overlap).
    """
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    for name, arr in (("a", a_arr), ("b", b_arr)):
        if arr.ndim not in (1, 2) or arr.shape[-1] != 2:
            raise VididiError(f"temporal_iou: {name} must have shape (2,) or (n, 2), got {arr.shape}")
        if np.any(arr[..., 1] < arr[..., 0]):
            raise VididiError(f"temporal_iou: {name} has an interval with end < start")
    a2, b2 = np.atleast_2d(a_arr), np.atleast_2d(b_arr)
    inter = _overlap(a2[:, 0], a2[:, 1], b2[:, 0], b2[:, 1])
    union = (a2[:, 1] - a2[:, 0])[:, None] + (b2[:, 1] - b2[:, 0])[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if a_arr.ndim == 1:
        iou = iou[0]
    if b_arr.ndim == 1:
        iou = iou[..., 0]
    return iou


def _overlap(a_start, a_end, b_start, b_end) -> np.ndarray:
    """Pairwise overlap length |[a_start, a_end] ∩ [b_start, b_end]|, shaped (len(a), len(b))."""
    length = np.minimum(a_end[:, None], b_end[None, :]) - np.maximum(a_start[:, None], b_start[None, :])
    return np.clip(length, 0.0, None)


# ----------------------------------------------------------------------------- windows


def window_labels(
    window_starts,
    window_ends,
    segments_of_video: Sequence[Segment],
    classes: Sequence[Hashable],
    min_overlap: float = 0.5,
) -> np.ndarray:
    """Training target of each window: a class index in [0, len(classes)], len(classes) = background.

    A window takes the class of the ground-truth segment that covers the largest fraction of the
    window's length, if that fraction is >= `min_overlap` (coverage = |window ∩ segment| / |window|);
    otherwise it is background, labelled len(classes). Each segment counts on its own (overlapping
    segments are not merged); equal coverage goes to the segment listed first. All segments must
    belong to one video, and their labels must be in `classes`.
    """
    starts, ends = _check_windows(window_starts, window_ends)
    if not 0.0 < min_overlap <= 1.0:
        raise VididiError(f"min_overlap must be in (0, 1], got {min_overlap}")
    class_index = {label: i for i, label in enumerate(classes)}
    background = len(class_index)
    labels = np.full(starts.shape[0], background, dtype=np.int64)
    if not segments_of_video:
        return labels
    videos = {seg.video for seg in segments_of_video}
    if len(videos) > 1:
        raise VididiError(f"window_labels takes the segments of one video, got videos {sorted(videos)}")
    unknown = {seg.label for seg in segments_of_video} - class_index.keys()
    if unknown:
        raise VididiError(f"segment labels {sorted(map(str, unknown))} are not in classes")
    seg_bounds = np.array([[seg.start, seg.end] for seg in segments_of_video])
    seg_class = np.array([class_index[seg.label] for seg in segments_of_video])
    coverage = _overlap(starts, ends, seg_bounds[:, 0], seg_bounds[:, 1]) / (ends - starts)[:, None]
    best = np.argmax(coverage, axis=1)  # first maximum -> segment listed first wins ties
    covered = coverage[np.arange(starts.shape[0]), best] >= min_overlap
    labels[covered] = seg_class[best[covered]]
    return labels


def scores_to_segments(
    window_starts,
    window_ends,
    class_scores,
    threshold: float,
    min_windows: int = 1,
    video: str = "",
    classes: Sequence[str | int] | None = None,
) -> list[Segment]:
    """Turn per-window class scores of one video into scored segments (a simple proposal method).

    `class_scores` is (n_windows, n_classes) for the foreground classes only (drop the background
    column first). Windows must be sorted by time (starts and ends non-decreasing). For each class,
    every maximal run of consecutive windows whose score is strictly above `threshold` becomes one
    segment from the start of its first window to the end of its last window (a run spans any gaps
    between windows), scored by the MEAN window score of the run: a mean rewards runs that are
    confidently above threshold throughout, where a max would let one spiking window decide. Runs of
    fewer than `min_windows` windows are dropped. Labels are `classes[j]` for column j, or j when
    `classes` is None. Output: grouped by class (column order), then by time.
    """
    starts, ends = _check_windows(window_starts, window_ends)
    scores = np.asarray(class_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != starts.shape[0]:
        raise VididiError(
            f"class_scores must have shape (n_windows={starts.shape[0]}, n_classes), got {scores.shape}"
        )
    if np.isnan(scores).any():
        raise VididiError("class_scores contain NaN")
    if np.any(np.diff(starts) < 0) or np.any(np.diff(ends) < 0):
        raise VididiError("windows must be sorted by time: starts and ends must be non-decreasing")
    if min_windows < 1:
        raise VididiError(f"min_windows must be >= 1, got {min_windows}")
    if classes is not None and len(classes) != scores.shape[1]:
        raise VididiError(
            f"classes has {len(classes)} names but class_scores has {scores.shape[1]} columns"
        )
    segments = []
    for j in range(scores.shape[1]):
        label = classes[j] if classes is not None else j
        above = np.concatenate([[False], scores[:, j] > threshold, [False]])
        edges = np.flatnonzero(np.diff(above.astype(np.int8)))
        for first, stop in zip(edges[0::2], edges[1::2]):  # run = windows first .. stop-1
            if stop - first >= min_windows:
                score = float(np.mean(scores[first:stop, j]))
                segments.append(Segment(video, starts[first], ends[stop - 1], label, score))
    return segments


def nms(segments: Iterable[Segment], iou_threshold: float) -> list[Segment]:
    """Greedy 1-D non-maximum suppression, separately for each (video, label).

    Repeatedly keep the highest-scoring remaining segment (equal scores: input order) and drop every
    remaining segment of the same video and label whose tIoU with it is strictly above
    `iou_threshold`. Returns the kept segments sorted by score, highest first (stable).
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise VididiError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    segments = list(segments)
    _require_scores(segments, "nms")
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, seg in enumerate(segments):
        groups[(seg.video, seg.label)].append(i)
    kept: list[int] = []
    for members in groups.values():
        order = sorted(members, key=lambda i: -segments[i].score)  # stable sort keeps input order
        bounds = np.array([[segments[i].start, segments[i].end] for i in order])
        alive = np.ones(len(order), dtype=bool)
        for pos in range(len(order)):
            if not alive[pos]:
                continue
            kept.append(order[pos])
            rest = np.arange(pos + 1, len(order))
            alive[rest[temporal_iou(bounds[pos], bounds[rest]) > iou_threshold]] = False
    kept.sort(key=lambda i: (-segments[i].score, i))
    return [segments[i] for i in kept]


# ----------------------------------------------------------------------------- evaluation


def average_precision(
    detections: Sequence[Segment], ground_truth: Sequence[Segment], tiou: float
) -> float:
    """Interpolated AP of the detections of ONE class at one tIoU threshold (see module docstring)."""
    detections, ground_truth = list(detections), list(ground_truth)
    labels = {seg.label for seg in detections} | {seg.label for seg in ground_truth}
    if len(labels) > 1:
        raise VididiError(f"average_precision takes one class; got labels {sorted(map(str, labels))}")
    if not ground_truth:
        raise VididiError("average precision is undefined without ground truth")
    return float(_class_average_precisions(detections, ground_truth, (float(tiou),))[0])


def mean_average_precision(
    detections: Sequence[Segment],
    ground_truth: Sequence[Segment],
    tious: Sequence[float] = DEFAULT_TIOUS,
) -> dict:
    """THUMOS14-style detection mAP.

    Returns {"per_class": {label: {tiou: AP}}, "map": {tiou: mean AP over classes with ground truth},
    "average_map": mean of "map" over the tIoUs, "n_classes": classes with ground truth,
    "classes_without_ground_truth": labels that have detections but no ground truth (not scored)}.
    """
    detections, ground_truth = list(detections), list(ground_truth)
    tious = tuple(float(t) for t in tious)
    if not tious or not all(0.0 < t <= 1.0 for t in tious):
        raise VididiError(f"tious must be a non-empty list of numbers in (0, 1], got {tious}")
    _require_scores(detections, "mean_average_precision")
    if not ground_truth:
        raise VididiError("mean_average_precision needs at least one ground-truth segment")
    label_kinds = {type(seg.label).__name__ for seg in [*detections, *ground_truth]}
    if len(label_kinds) > 1:
        # Typical mistake: detections labelled by class index, ground truth by class name.
        raise VididiError(
            "detection and ground-truth labels must be all class names (str) or all class indices "
            f"(int), got a mix of {sorted(label_kinds)}"
        )
    dets_by_class: dict = defaultdict(list)
    for seg in detections:
        dets_by_class[seg.label].append(seg)
    gts_by_class: dict = defaultdict(list)
    for seg in ground_truth:
        gts_by_class[seg.label].append(seg)
    per_class = {}
    for label in sorted(gts_by_class):
        aps = _class_average_precisions(dets_by_class.get(label, []), gts_by_class[label], tious)
        per_class[label] = {t: float(ap) for t, ap in zip(tious, aps)}
    map_per_tiou = {t: float(np.mean([per_class[c][t] for c in per_class])) for t in tious}
    return {
        "per_class": per_class,
        "map": map_per_tiou,
        "average_map": float(np.mean(list(map_per_tiou.values()))),
        "n_classes": len(per_class),
        "classes_without_ground_truth": sorted(set(dets_by_class) - set(gts_by_class)),
    }


def _class_average_precisions(
    detections: Sequence[Segment], ground_truth: Sequence[Segment], tious: tuple[float, ...]
) -> np.ndarray:
    """AP of one class at each threshold in `tious` (matching done once per detection)."""
    n_gt = len(ground_truth)
    if not detections:
        return np.zeros(len(tious))
    _require_scores(detections, "average_precision")
    gt_by_video: dict[str, list[int]] = defaultdict(list)
    for i, seg in enumerate(ground_truth):
        gt_by_video[seg.video].append(i)
    gt_bounds = {v: np.array([[ground_truth[i].start, ground_truth[i].end] for i in idx])
                 for v, idx in gt_by_video.items()}
    matched = {v: np.zeros((len(tious), len(idx)), dtype=bool) for v, idx in gt_by_video.items()}
    order = sorted(range(len(detections)), key=lambda i: -detections[i].score)  # stable
    true_positive = np.zeros((len(tious), len(order)), dtype=bool)
    for rank, i in enumerate(order):
        det = detections[i]
        if det.video not in gt_bounds:
            continue  # no ground truth of this class in the video: false positive at every tIoU
        ious = temporal_iou([det.start, det.end], gt_bounds[det.video])
        candidates = np.argsort(-ious, kind="stable")  # highest tIoU first, ties: listed first
        for t, threshold in enumerate(tious):
            for g in candidates:
                if ious[g] < threshold:
                    break
                if not matched[det.video][t, g]:
                    matched[det.video][t, g] = True
                    true_positive[t, rank] = True
                    break
    tp = np.cumsum(true_positive, axis=1)
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / n_gt
    return np.array([_interpolated_area(precision[t], recall[t]) for t in range(len(tious))])


def _interpolated_area(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision envelope: sum over recall steps of step width x envelope precision."""
    prec = np.concatenate([[0.0], precision, [0.0]])
    rec = np.concatenate([[0.0], recall, [1.0]])
    envelope = np.maximum.accumulate(prec[::-1])[::-1]  # best precision at this or any later rank
    steps = np.flatnonzero(rec[1:] != rec[:-1]) + 1
    return float(np.sum((rec[steps] - rec[steps - 1]) * envelope[steps]))


# ----------------------------------------------------------------------------- window classifier targets, detections


def window_targets(windows: dict, is_train: np.ndarray, ground_truth: list[Segment], n_classes: int,
                    min_overlap: float) -> np.ndarray:  # fmt: skip
    """Window labels of the TRAIN windows (`is_train`) of each video: its class, or `n_classes` (background)."""
    labels = np.empty(int(is_train.sum()), np.int64)
    rows = np.flatnonzero(is_train)
    vids = windows["video_ids"][rows]
    for video in np.unique(vids):
        mask = vids == video
        segs = [g for g in ground_truth if g.video == video]
        labels[mask] = window_labels(windows["start"][rows[mask]], windows["end"][rows[mask]], segs,
                                     classes=list(range(n_classes)), min_overlap=min_overlap)  # fmt: skip
    return labels


def detect(windows: dict, rows_mask: np.ndarray, scores: np.ndarray, dcfg: dict) -> list[Segment]:
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


# ----------------------------------------------------------------------------- files


def read_thumos14_annotations(folder: str | os.PathLike, subset: str = "test") -> list[Segment]:
    """Ground truth from a THUMOS14 annotation folder: every `{Class}_{subset}.txt` except Ambiguous."""
    folder = Path(folder)
    suffix = f"_{subset}.txt"
    files = sorted(p for p in folder.glob(f"*{suffix}") if p.name != f"{AMBIGUOUS_CLASS}{suffix}")
    if not files:
        raise VididiError(f"no THUMOS14 annotation files '*{suffix}' in {folder}")
    segments = []
    for path in files:
        label = path.name[: -len(suffix)]
        for lineno, fields in _read_fields(path):
            if len(fields) != 3:
                raise VididiError(
                    f"{path}:{lineno}: expected 'video start end', got {' '.join(fields)!r}"
                )
            start, end = _parse_floats(path, lineno, fields[1:])
            segments.append(_segment(path, lineno, fields[0], start, end, label))
    return segments


def write_thumos14_annotations(
    folder: str | os.PathLike, segments: Iterable[Segment], subset: str = "test"
) -> list[Path]:
    """Write ground truth as THUMOS14 annotation files `{label}_{subset}.txt`; returns the paths."""
    by_class: dict[str, list[Segment]] = defaultdict(list)
    for seg in segments:
        if not isinstance(seg.label, str) or not seg.label or any(c in seg.label for c in "/\\ "):
            raise VididiError(
                f"THUMOS14 annotation files need class names usable as file names, got {seg.label!r}"
            )
        _check_video_name(seg.video)
        by_class[seg.label].append(seg)
    paths = []
    for label in sorted(by_class):
        path = Path(folder) / f"{label}_{subset}.txt"
        lines = [f"{seg.video} {seg.start!r} {seg.end!r}\n" for seg in by_class[label]]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(lines))
        paths.append(path)
    return paths


def read_thumos14_class_list(path: str | os.PathLike) -> dict[int, str]:
    """THUMOS14 `detclasslist.txt`-style file, lines `class_index ClassName`, as {index: name}."""
    path = Path(path)
    classes = {}
    for lineno, fields in _read_fields(path):
        if len(fields) != 2 or not fields[0].lstrip("-").isdigit():
            raise VididiError(
                f"{path}:{lineno}: expected 'class_index ClassName', got {' '.join(fields)!r}"
            )
        classes[int(fields[0])] = fields[1]
    return classes


def write_thumos14_detections(
    path: str | os.PathLike,
    detections: Iterable[Segment],
    class_index: Mapping[str, int] | None = None,
) -> None:
    """Write `video start end class_index score` lines; `class_index` maps names to indices if needed."""
    lines = []
    for seg in detections:
        _require_scores([seg], "write_thumos14_detections")
        _check_video_name(seg.video)
        if isinstance(seg.label, int):
            index = seg.label
        elif class_index is not None and seg.label in class_index:
            index = int(class_index[seg.label])
        else:
            raise VididiError(
                f"no class index for label {seg.label!r}: pass class_index={{name: index}}"
            )
        lines.append(f"{seg.video} {seg.start!r} {seg.end!r} {index} {seg.score!r}\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines))


def read_thumos14_detections(
    path: str | os.PathLike, class_names: Mapping[int, str] | None = None
) -> list[Segment]:
    """Read THUMOS14 detections; labels are class indices, or names via `class_names` when given."""
    path = Path(path)
    segments = []
    for lineno, fields in _read_fields(path):
        if len(fields) != 5 or not fields[3].lstrip("-").isdigit():
            raise VididiError(
                f"{path}:{lineno}: expected 'video start end class_index score', "
                f"got {' '.join(fields)!r}"
            )
        start, end, score = _parse_floats(path, lineno, [fields[1], fields[2], fields[4]])
        label: str | int = int(fields[3])
        if class_names is not None:
            if label not in class_names:
                raise VididiError(f"{path}:{lineno}: class index {label} is not in class_names")
            label = class_names[label]
        segments.append(_segment(path, lineno, fields[0], start, end, label, score))
    return segments


def write_activitynet_detections(
    path: str | os.PathLike,
    detections: Iterable[Segment],
    version: str = "VERSION 1.3",
    external_data: Mapping | None = None,
) -> None:
    """Write detections as an ActivityNet results JSON (videos in first-seen order)."""
    results: dict[str, list[dict]] = {}
    for seg in detections:
        _require_scores([seg], "write_activitynet_detections")
        results.setdefault(seg.video, []).append(
            {"label": seg.label, "segment": [seg.start, seg.end], "score": seg.score}
        )
    write_json(
        path, {"version": version, "results": results, "external_data": dict(external_data or {})}
    )


def read_activitynet_detections(path: str | os.PathLike) -> list[Segment]:
    """Read an ActivityNet results JSON into scored segments."""
    results = _load_json_key(path, "results")
    segments = []
    for video, entries in results.items():
        for entry in entries:
            try:
                (start, end), label, score = entry["segment"], entry["label"], entry["score"]
            except (KeyError, TypeError, ValueError):
                raise VididiError(
                    f"{path}: malformed detection for video {video!r}: {entry!r}"
                ) from None
            segments.append(_segment(path, None, video, start, end, label, score))
    return segments


def read_activitynet_ground_truth(
    path: str | os.PathLike, subset: str | None = None
) -> list[Segment]:
    """Read ActivityNet-style ground truth; keep only videos of `subset` (e.g. "testing") when given."""
    database = _load_json_key(path, "database")
    segments = []
    for video, info in database.items():
        if subset is not None and info.get("subset") != subset:
            continue
        for entry in info.get("annotations", []):
            try:
                (start, end), label = entry["segment"], entry["label"]
            except (KeyError, TypeError, ValueError):
                raise VididiError(
                    f"{path}: malformed annotation for video {video!r}: {entry!r}"
                ) from None
            segments.append(_segment(path, None, video, start, end, label))
    return segments


# ----------------------------------------------------------------------------- helpers


def _check_windows(window_starts, window_ends) -> tuple[np.ndarray, np.ndarray]:
    starts = np.asarray(window_starts, dtype=np.float64)
    ends = np.asarray(window_ends, dtype=np.float64)
    if starts.ndim != 1 or starts.shape != ends.shape:
        raise VididiError(
            "window_starts and window_ends must be 1-D of equal length, "
            f"got {starts.shape} and {ends.shape}"
        )
    if not (np.isfinite(starts).all() and np.isfinite(ends).all()) or np.any(ends <= starts):
        raise VididiError("every window must have finite bounds with end > start")
    return starts, ends


def _require_scores(segments: Iterable[Segment], where: str) -> None:
    for seg in segments:
        if seg.score is None:
            raise VididiError(f"{where}: detection in video {seg.video!r} has no score")


def _check_video_name(video: str) -> None:
    if not video or any(c.isspace() for c in video):
        raise VididiError(f"video name {video!r} cannot be written to a whitespace-separated file")


def _read_fields(path: Path) -> Iterable[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of each non-blank line."""
    try:
        text = path.read_text()
    except OSError as err:
        raise VididiError(f"cannot read {path}: {err.strerror}") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield lineno, line.split()


def _parse_floats(path: Path, lineno: int, fields: Sequence[str]) -> list[float]:
    try:
        return [float(f) for f in fields]
    except ValueError:
        raise VididiError(f"{path}:{lineno}: not a number in {' '.join(fields)!r}") from None


def _segment(path, lineno: int | None, video, start, end, label, score=None) -> Segment:
    """Build a Segment, turning a bad value into an error that names the file (and line)."""
    try:
        return Segment(video, start, end, label, score)
    except (VididiError, TypeError, ValueError) as err:
        where = f"{path}:{lineno}" if lineno is not None else str(path)
        raise VididiError(f"{where}: {err}") from None


def _load_json_key(path: str | os.PathLike, key: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as err:
        raise VididiError(f"cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise VididiError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise VididiError(f"{path} has no {key!r} object")
    return data[key]
