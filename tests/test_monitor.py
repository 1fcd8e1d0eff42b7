"""The online kNN monitor (vididi/ssl/monitor.py) and its place in `vididi pretrain`.

What is checked, and against what:
- groups from UCF101-style ids, the training videos it uses (never a test or validation video);
- leave-one-group-out R@1 against a small example worked by hand;
- a run with the monitor reaches bit for bit the weights, optimiser state and log of the same run
  without it (the monitor changes no random stream, mode or buffer), and its logged values are the
  R@1 of the encoder at those steps, recomputed independently from the final checkpoint.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from vididi.config import expand_runs
from vididi.data.augment import centre_crop
from vididi.data.clips import middle_clip_frames
from vididi.data.shards import DatasetIndex, FrameReader
from vididi.layout import run_dir, shard_dir
from vididi.ssl.encoder import FrameEncoder, load_encoder, recalibrate_batchnorm
from vididi.ssl.monitor import COLUMN, leave_one_group_out_r1, monitor_videos, video_group
from vididi.ssl.trainer import pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_video_group_reads_ucf101_style_ids():
    assert video_group("Accelerating/v_Accelerating_g01_c02") == "v_Accelerating_g1"
    assert video_group("v_ApplyEyeMakeup_g08_c01") == video_group("other/v_ApplyEyeMakeup_g8_c05")
    assert video_group("v_ApplyEyeMakeup_g08_c01") != video_group("v_ApplyEyeMakeup_g09_c01")
    assert video_group("clips/walk_0001") == "walk_0001"  # no group in the name: its own group


def test_leave_one_group_out_r1_by_hand():
    # rows 0 and 1 share a group (identical features: each would find the other first); row 2 is
    # close to them with class 1; row 3 points the other way with class 0.
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1], [-1.0, 0.2]])
    labels = np.array([0, 0, 1, 0])
    groups = ["a", "a", "b", "c"]
    # 0 -> 2 (class 1: miss), 1 -> 2 (miss), 2 -> 0 (class 0: miss; ties with 1 go to the lower index),
    # 3 -> nearest outside c: cos(3, 2) > cos(3, 0) -> 2 (miss)
    assert leave_one_group_out_r1(features, labels, groups) == 0.0
    labels = np.array([1, 1, 1, 0])
    # 0 -> 2 hit, 1 -> 2 hit, 2 -> 0 hit, 3 -> 2 miss
    assert leave_one_group_out_r1(features, labels, groups) == 0.75
    # without groups (each row its own), 0 and 1 find each other
    # (0 -> 1 hit, 1 -> 0 hit, 2 -> 0 miss, 3 -> 2 hit)
    assert leave_one_group_out_r1(features, np.array([0, 0, 1, 1]), ["a", "b", "c", "d"]) == 0.75


def test_monitor_videos_are_a_seeded_subset_of_the_training_split(tiny_data):
    config, _ = tiny_data
    for split in ("1", "2"):
        index = DatasetIndex.load(shard_dir(config, "synthetic"), split)
        train = index.select("train")
        assert np.array_equal(monitor_videos(index, 1000, seed=0), train)
        subset = monitor_videos(index, 5, seed=3)
        assert len(subset) == 5 and set(subset) <= set(train) and list(subset) == sorted(subset)
        assert np.array_equal(subset, monitor_videos(index, 5, seed=3))
        assert not set(subset) & set(index.select("test"))
    split2 = DatasetIndex.load(shard_dir(config, "synthetic"), "2")
    validation = set(split2.select("test"))
    assert validation and not validation & set(monitor_videos(split2, 1000, seed=0))


def _config(tmp_path, tiny_data, **pretrain_opts):
    from conftest import tiny_config

    return tiny_config(
        tmp_path, data_dir=tiny_data[0]["data_dir"], device="cpu", threads=1,
        runs=[{"dataset": "synthetic", "framework": "byol", "variant": "vididi", "backbone": "small3d", "seed": 0}],
        pretrain={"steps": 8, "batch_size": 8, "lr": 0.03, "warmup_steps": 2, "checkpoint_every": 4, "log_every": 1,
                  "num_workers": 0, **pretrain_opts},
    )  # fmt: skip


def _outputs(config):
    (run,) = expand_runs(config)
    out = run_dir(config, run)
    final = torch.load(out / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    last = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    with (out / "train_log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return final, last, rows


def _independent_r1(config, encoder_path) -> float:
    """R@1 recomputed outside the monitor: the final encoder, BatchNorm re-estimated on the same
    centre clips of every training video, then a brute-force leave-one-group-out search."""
    index = DatasetIndex.for_dataset(config, "synthetic")
    clips_cfg = config["datasets"]["synthetic"]["clips"]
    videos = index.select("train")
    reader = FrameReader(index)
    clips = torch.stack([centre_crop(reader.read(int(v), middle_clip_frames(int(index.n_frames[v]), clips_cfg["frames"],
                                                                           clips_cfg["stride"])), clips_cfg["size"])
                         for v in videos])  # fmt: skip
    encoder, _, stats = load_encoder(encoder_path)
    frame_encoder = FrameEncoder(encoder, stats, "dataset", torch.device("cpu"))
    recalibrate_batchnorm(frame_encoder, [(clips[i : i + 32],) for i in range(0, len(clips), 32)])
    features = torch.nn.functional.normalize(frame_encoder(clips).double(), dim=1).numpy()
    groups = [v.rsplit("_c", 1)[0] for v in index.video_id[videos]]
    hits = []
    for i in range(len(videos)):
        candidates = [j for j in range(len(videos)) if groups[j] != groups[i]]
        best = max(candidates, key=lambda j: (features[i] @ features[j], -j))
        hits.append(index.label[videos[best]] == index.label[videos[i]])
    return float(np.mean(hits))


def test_monitor_changes_nothing_in_training_and_logs_the_encoders_r1(tmp_path, tiny_data):
    plain = _config(tmp_path / "plain", tiny_data)
    monitored = _config(tmp_path / "monitored", tiny_data, monitor_every=3)
    for config in (plain, monitored):
        pretrain(config, expand_runs(config)[0])
    final_a, last_a, rows_a = _outputs(plain)
    final_b, last_b, rows_b = _outputs(monitored)

    assert final_a["settings_hash"] == final_b["settings_hash"]
    for key in ("encoder", "target_encoder"):
        assert final_a[key].keys() == final_b[key].keys()
        assert all(torch.equal(final_a[key][k], final_b[key][k]) for k in final_a[key]), key
    assert all(torch.equal(last_a["model"][k], last_b["model"][k]) for k in last_a["model"])  # heads, BN buffers
    assert torch.equal(last_a["rng_torch"], last_b["rng_torch"])
    state_a, state_b = last_a["optimizer"]["state"], last_b["optimizer"]["state"]
    assert all(torch.equal(state_a[i][k], state_b[i][k]) for i in state_a for k in state_a[i])

    assert COLUMN not in rows_a[0] and list(rows_b[0]) == [*rows_a[0], COLUMN]
    for a, b in zip(rows_a, rows_b, strict=True):
        assert all(a[k] == b[k] for k in a if k != "clips_per_s")
    logged = {int(r["step"]): float(r[COLUMN]) for r in rows_b if r[COLUMN]}
    assert sorted(logged) == [2, 5, 7]  # after steps 3 and 6 and the last one (8 steps done)
    assert all(0.0 <= v <= 1.0 for v in logged.values())
    (run,) = expand_runs(monitored)
    assert logged[7] == pytest.approx(_independent_r1(monitored, run_dir(monitored, run) / "checkpoints" / "final.pt"))
