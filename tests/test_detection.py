"""Tests for vididi.evaluation.detection: hand-worked tIoU, window labels, segments, NMS, AP/mAP and file formats."""

import json

import numpy as np
import pytest

from vididi.evaluation.detection import (
    Segment,
    average_precision,
    mean_average_precision,
    nms,
    read_activitynet_detections,
    read_activitynet_ground_truth,
    read_thumos14_annotations,
    read_thumos14_class_list,
    read_thumos14_detections,
    scores_to_segments,
    temporal_iou,
    window_labels,
    write_activitynet_detections,
    write_thumos14_annotations,
    write_thumos14_detections,
)
from vididi.utils import VididiError


def gt(video, start, end, label="A"):
    return Segment(video, start, end, label)


def det(video, start, end, score, label="A"):
    return Segment(video, start, end, label, score)


# ----------------------------------------------------------------------------- temporal IoU


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 1], [1, 2], 0.0),  # touching
        ([2, 5], [2, 5], 1.0),  # identical
        ([0, 10], [2, 4], 0.2),  # containment: 2 / 10
        ([2, 4], [0, 10], 0.2),
        ([0, 4], [2, 6], 2 / 6),  # partial overlap
        ([0, 1], [5, 6], 0.0),  # disjoint
        ([3, 3], [0, 10], 0.0),  # zero-length inside a segment
        ([3, 3], [3, 3], 0.0),  # zero-length with itself
    ],
)
def test_temporal_iou_by_hand(a, b, expected):
    assert float(temporal_iou(a, b)) == pytest.approx(expected)


def test_temporal_iou_shapes_and_pairwise_values():
    a = np.array([[0.0, 4.0], [10.0, 12.0]])
    b = np.array([[2.0, 6.0], [0.0, 4.0], [11.0, 13.0]])
    iou = temporal_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou, [[2 / 6, 1.0, 0.0], [0.0, 0.0, 1 / 3]])
    assert temporal_iou(a[0], b).shape == (3,)
    assert temporal_iou(a, b[0]).shape == (2,)
    with pytest.raises(VididiError, match="end < start"):
        temporal_iou([2, 1], b)


# ----------------------------------------------------------------------------- windows


def test_window_labels_by_hand():
    starts = np.array([0, 1, 2, 3, 4, 8], dtype=float)
    ends = starts + 2
    segments = [gt("v", 1.5, 4.0, "A"), gt("v", 4.5, 9.5, "B")]
    # Coverage of A / B per window: [.25/0, .75/0, 1/0, .5/.25, 0/.75, 0/.75]; background is 2.
    labels = window_labels(starts, ends, segments, classes=["A", "B"])
    assert labels.tolist() == [2, 0, 0, 0, 1, 1]
    labels = window_labels(starts, ends, segments, classes=["A", "B"], min_overlap=0.8)
    assert labels.tolist() == [2, 2, 0, 2, 2, 2]
    assert window_labels(starts, ends, [], classes=["A", "B"]).tolist() == [2] * 6


def test_window_labels_prefers_the_larger_coverage_and_checks_inputs():
    # Window [0, 4] is covered 0.5 by A and 0.75 by B: B wins, whatever the list order.
    segments = [gt("v", 0, 2, "A"), gt("v", 1, 4, "B")]
    for ordered in (segments, segments[::-1]):
        assert window_labels([0.0], [4.0], ordered, ["A", "B"], min_overlap=0.3).tolist() == [1]
    with pytest.raises(VididiError, match="one video"):
        window_labels([0.0], [4.0], [gt("v", 0, 2), gt("w", 0, 2)], classes=["A"])
    with pytest.raises(VididiError, match="not in classes"):
        window_labels([0.0], [4.0], [gt("v", 0, 2, "C")], classes=["A", "B"])


def test_scores_to_segments_on_a_hand_made_curve():
    starts = np.arange(10, dtype=float)
    ends = starts + 2
    scores = np.zeros((10, 2))
    scores[:, 0] = [0.1, 0.6, 0.8, 0.7, 0.2, 0.9, 0.1, 0.6, 0.6, 0.5]
    scores[:, 1] = [0.5] * 10  # equal to the threshold, never above it
    segments = scores_to_segments(starts, ends, scores, threshold=0.5, video="v", classes=["A", "B"])
    assert [(s.start, s.end, s.label) for s in segments] == [(1, 5, "A"), (5, 7, "A"), (7, 10, "A")]
    assert [s.score for s in segments] == pytest.approx([0.7, 0.9, 0.6])
    assert all(s.video == "v" for s in segments)

    longer = scores_to_segments(starts, ends, scores, threshold=0.5, min_windows=2)
    assert [(s.start, s.end, s.label) for s in longer] == [(1, 5, 0), (7, 10, 0)]

    scores[9, 0] = 0.95  # a run that reaches the last window
    last = scores_to_segments(starts, ends, scores, threshold=0.5)[-1]
    assert (last.start, last.end) == (7, 11)
    assert last.score == pytest.approx((0.6 + 0.6 + 0.95) / 3)


def test_scores_to_segments_rejects_unsorted_windows():
    with pytest.raises(VididiError, match="sorted"):
        scores_to_segments([2.0, 0.0], [4.0, 2.0], np.ones((2, 1)), threshold=0.5)


# ----------------------------------------------------------------------------- NMS


def test_nms_removes_the_lower_scoring_overlap_and_keeps_the_rest():
    segments = [
        det("v", 1, 10, 0.8),  # tIoU 0.9 with the one below: suppressed
        det("v", 0, 10, 0.9),
        det("v", 20, 30, 0.7),  # no overlap: kept
        det("v", 0, 10, 0.95, label="B"),  # other class: kept
        det("w", 2, 9, 0.5),  # other video: kept
    ]
    kept = nms(segments, iou_threshold=0.5)
    assert kept == [segments[3], segments[1], segments[2], segments[4]]


def test_nms_is_greedy():
    x, y, z = det("v", 0, 10, 0.9), det("v", 5, 15, 0.8), det("v", 8, 18, 0.7)
    # tIoU(x, y) = 5/15, tIoU(x, z) = 2/18, tIoU(y, z) = 7/13 > 0.5: z goes because y is kept.
    assert nms([z, x, y], iou_threshold=0.5) == [x, y]
    assert nms([z, x, y], iou_threshold=0.6) == [x, y, z]


# ----------------------------------------------------------------------------- AP and mAP


def test_perfect_detections_give_ap_one():
    truth = [gt("v1", 0, 5), gt("v1", 10, 20), gt("v2", 3, 4)]
    detections = [det(s.video, s.start, s.end, score) for s, score in zip(truth, (0.3, 0.9, 0.5))]
    for tiou in (0.3, 0.5, 0.7):
        assert average_precision(detections, truth, tiou) == 1.0


def test_one_missed_segment_out_of_two_gives_ap_half():
    truth = [gt("v", 0, 5), gt("v", 10, 20)]
    assert average_precision([det("v", 0, 5, 0.9)], truth, 0.5) == pytest.approx(0.5)


def test_duplicates_are_false_positives():
    truth = [gt("v", 0, 10), gt("v", 20, 30)]
    detections = [
        det("v", 0, 10, 0.9),  # TP  P=1    R=.5
        det("v", 0, 10, 0.8),  # FP (duplicate)  P=1/2  R=.5
        det("v", 20, 30, 0.7),  # TP  P=2/3  R=1
    ]
    # Envelope: 1 up to recall .5, then 2/3 up to recall 1 -> AP = .5 * 1 + .5 * 2/3.
    assert average_precision(detections, truth, 0.5) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # A false positive ranked first: P = 0, 1/2, 1/3, 1/2 at R = 0, .5, .5, 1 -> envelope 1/2 -> AP 0.5.
    detections.append(det("v", 50, 60, 0.95))
    assert average_precision(detections, truth, 0.5) == pytest.approx(0.5)


def test_detection_overlapping_two_ground_truths_matches_the_higher_tiou():
    truth = [gt("v", 0, 10), gt("v", 5, 13)]
    # The first detection has tIoU 6/12 = .5 with [0, 10] and 7/8 with [5, 13]: it takes [5, 13].
    # The second then only overlaps the taken [5, 13] enough (5/13 < .5 with [0, 10]): false positive.
    detections = [det("v", 4, 12, 0.9), det("v", 5, 13, 0.8)]
    assert average_precision(detections, truth, 0.5) == pytest.approx(0.5)


def test_detection_falls_back_to_the_next_unmatched_ground_truth():
    truth = [gt("v", 0, 10), gt("v", 2, 12)]
    # The second detection has tIoU 8/11 with [0, 10] and 9/10 with the already matched [2, 12].
    detections = [det("v", 2, 12, 0.9), det("v", 2, 11, 0.8)]
    assert average_precision(detections, truth, 0.7) == pytest.approx(1.0)
    assert average_precision(detections, truth, 0.75) == pytest.approx(0.5)


def test_detections_in_other_videos_are_false_positives_and_no_detections_give_zero():
    truth = [gt("v", 0, 10)]
    assert average_precision([det("w", 0, 10, 0.9)], truth, 0.5) == 0.0
    assert average_precision([], truth, 0.5) == 0.0


def test_mean_average_precision_by_hand():
    truth = [gt("v", 0, 10, "A"), gt("v", 20, 30, "B"), gt("w", 0, 4, "C")]
    detections = [
        det("v", 0, 5.5, 0.9, "A"),  # tIoU .55: TP at .3 .4 .5, FP at .6 .7
        det("v", 20, 30, 0.8, "B"),  # perfect
        det("v", 40, 50, 0.7, "D"),  # class without ground truth: ignored
        # class C: no detections -> AP 0
    ]
    result = mean_average_precision(detections, truth)
    assert result["per_class"]["A"] == pytest.approx({0.3: 1, 0.4: 1, 0.5: 1, 0.6: 0, 0.7: 0})
    assert result["per_class"]["B"] == pytest.approx({t: 1.0 for t in (0.3, 0.4, 0.5, 0.6, 0.7)})
    assert result["per_class"]["C"] == pytest.approx({t: 0.0 for t in (0.3, 0.4, 0.5, 0.6, 0.7)})
    assert result["map"] == pytest.approx({0.3: 2 / 3, 0.4: 2 / 3, 0.5: 2 / 3, 0.6: 1 / 3, 0.7: 1 / 3})
    assert result["average_map"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 3) / 5)
    assert result["n_classes"] == 3
    assert result["classes_without_ground_truth"] == ["D"]
    json.dumps(result)  # JSON-ready


def reference_ap(detections, truth, tiou):
    """Independent AP: explicit loops, AP = (1/n_gt) * sum over TPs of the best precision at or after it."""
    order = sorted(range(len(detections)), key=lambda i: (-detections[i].score, i))
    used = [False] * len(truth)
    hits = []
    for i in order:
        d = detections[i]
        best, best_iou = None, -1.0
        for g, t in enumerate(truth):
            if used[g] or t.video != d.video:
                continue
            inter = max(0.0, min(d.end, t.end) - max(d.start, t.start))
            union = (d.end - d.start) + (t.end - t.start) - inter
            iou = inter / union if union > 0 else 0.0
            if iou >= tiou and iou > best_iou:
                best, best_iou = g, iou
        if best is not None:
            used[best] = True
        hits.append(best is not None)
    precisions = [sum(hits[: n + 1]) / (n + 1) for n in range(len(hits))]
    total = 0.0
    for n, hit in enumerate(hits):
        if hit:
            total += max(precisions[n:])
    return total / len(truth)


def test_random_case_matches_a_reference_written_with_loops():
    rng = np.random.default_rng(0)
    truth, detections = [], []
    for video in ("a", "b", "c"):
        for _ in range(4):
            start = rng.uniform(0, 100)
            truth.append(gt(video, start, start + rng.uniform(2, 15)))
        for _ in range(12):
            start = rng.uniform(0, 100)
            detections.append(det(video, start, start + rng.uniform(2, 15), rng.uniform()))
    # Near-copies of ground truth so that every threshold has true positives.
    for t in truth[::2]:
        jitter = rng.uniform(-1, 1, size=2)
        detections.append(det(t.video, t.start + jitter[0], t.end + jitter[1], rng.uniform()))
    for tiou in (0.1, 0.3, 0.5, 0.7):
        expected = reference_ap(detections, truth, tiou)
        assert average_precision(detections, truth, tiou) == pytest.approx(expected)
    assert 0.0 < reference_ap(detections, truth, 0.5) < 1.0


def test_evaluation_rejects_mixed_label_kinds_and_missing_scores():
    with pytest.raises(VididiError, match="all class names"):
        mean_average_precision([det("v", 0, 1, 0.5, label=3)], [gt("v", 0, 1, "A")])
    with pytest.raises(VididiError, match="no score"):
        mean_average_precision([gt("v", 0, 1)], [gt("v", 0, 1)])
    with pytest.raises(VididiError, match="one class"):
        average_precision([det("v", 0, 1, 0.5, "B")], [gt("v", 0, 1, "A")], 0.5)


def test_segment_normalises_types_and_validates():
    s = Segment(np.str_("v"), np.float32(1.5), 2, np.int64(3), np.float64(0.25))
    assert type(s.label) is int and type(s.start) is float and type(s.score) is float
    with pytest.raises(VididiError, match="start <= end"):
        Segment("v", 2.0, 1.0, "A")
    with pytest.raises(VididiError, match="label"):
        Segment("v", 0.0, 1.0, 1.5)


# ----------------------------------------------------------------------------- files


def test_read_thumos14_annotations_from_hand_written_files(tmp_path):
    (tmp_path / "BaseballPitch_test.txt").write_text(
        "video_test_0000004  0.2 1.1\nvideo_test_0000004 2.3 3.0\n\n"
    )
    (tmp_path / "HighJump_test.txt").write_text("video_test_0000007 10.5 14.0\n")
    (tmp_path / "Ambiguous_test.txt").write_text("video_test_0000004 5.0 6.0\n")
    (tmp_path / "HighJump_val.txt").write_text("video_validation_0000001 1 2\n")
    segments = read_thumos14_annotations(tmp_path, subset="test")
    assert segments == [
        Segment("video_test_0000004", 0.2, 1.1, "BaseballPitch"),
        Segment("video_test_0000004", 2.3, 3.0, "BaseballPitch"),
        Segment("video_test_0000007", 10.5, 14.0, "HighJump"),
    ]
    assert read_thumos14_annotations(tmp_path, subset="val") == [
        Segment("video_validation_0000001", 1.0, 2.0, "HighJump")
    ]
    (tmp_path / "Broken_test.txt").write_text("video 1.0\n")
    with pytest.raises(VididiError, match="Broken_test.txt:1"):
        read_thumos14_annotations(tmp_path, subset="test")


def test_thumos14_annotations_round_trip(tmp_path):
    segments = [Segment("v1", 0.1, 2.25, "Diving"), Segment("v2", 1 / 3, 7.0, "Shotput"),
                Segment("v1", 4.0, 5.0, "Diving")]
    paths = write_thumos14_annotations(tmp_path, segments, subset="val")
    assert sorted(p.name for p in paths) == ["Diving_val.txt", "Shotput_val.txt"]
    assert sorted(read_thumos14_annotations(tmp_path, "val"), key=repr) == sorted(segments, key=repr)


def test_thumos14_detections_round_trip(tmp_path):
    (tmp_path / "detclasslist.txt").write_text("7 BaseballPitch\n9 BasketballDunk\n")
    names = read_thumos14_class_list(tmp_path / "detclasslist.txt")
    assert names == {7: "BaseballPitch", 9: "BasketballDunk"}
    detections = [
        Segment("video_test_0000004", 0.1, 2.5, "BaseballPitch", 0.875),
        Segment("video_test_0000011", 1 / 3, 12.0, "BasketballDunk", 1e-7),
    ]
    path = tmp_path / "dets.txt"
    write_thumos14_detections(path, detections, class_index={v: k for k, v in names.items()})
    assert path.read_text().splitlines()[0] == "video_test_0000004 0.1 2.5 7 0.875"
    assert read_thumos14_detections(path, class_names=names) == detections
    assert [s.label for s in read_thumos14_detections(path)] == [7, 9]
    with pytest.raises(VididiError, match="class_index"):
        write_thumos14_detections(path, detections)


def test_activitynet_detections_round_trip(tmp_path):
    detections = [
        Segment("v_a", 0.5, 3.0, "Long jump", 0.9),
        Segment("v_b", 1.0, 2.0, "Discus throw", 0.1),
        Segment("v_a", 4.0, 9.5, "Discus throw", 0.4),
    ]
    path = tmp_path / "results.json"
    write_activitynet_detections(path, detections, version="VERSION 1.3")
    data = json.loads(path.read_text())
    assert data["version"] == "VERSION 1.3" and data["external_data"] == {}
    assert data["results"]["v_a"][0] == {"label": "Long jump", "segment": [0.5, 3.0], "score": 0.9}
    assert sorted(read_activitynet_detections(path), key=repr) == sorted(detections, key=repr)


def test_read_activitynet_ground_truth(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({
        "version": "VERSION 1.3",
        "database": {
            "vid1": {"subset": "testing", "duration": 30.0,
                     "annotations": [{"label": "HighJump", "segment": [1.0, 4.5]}]},
            "vid2": {"subset": "validation", "duration": 12.0,
                     "annotations": [{"label": "Diving", "segment": [0.0, 2.0]}]},
            "vid3": {"subset": "testing", "duration": 8.0, "annotations": []},
        },
    }))
    expected = [Segment("vid1", 1.0, 4.5, "HighJump")]
    assert read_activitynet_ground_truth(path, subset="testing") == expected
    assert len(read_activitynet_ground_truth(path)) == 2
    path.write_text('{"database": {"vid1": {"annotations": [{"label": "X"}]}}}')
    with pytest.raises(VididiError, match="malformed annotation"):
        read_activitynet_ground_truth(path)
