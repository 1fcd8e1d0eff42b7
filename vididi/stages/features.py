"""`vididi features`: frozen-encoder features of one run on one evaluation dataset.

The encoder sees ORIGINAL frames only (order 0, scaled as in training), centre-cropped. Before any
feature is computed, every BatchNorm's running statistics are re-estimated on order-0 clips of the
run's TRAINING dataset (docs/method.md: statistics accumulated on a mix of orders 0/1/2 do not describe
frames and collapse a ViDiDi encoder's features); `evaluation.bn_recalibration: false` keeps the
as-trained statistics, and the choice is recorded in the output.

Output results/<dataset>/runs/<run>/features/<eval_dataset>.h5:
    train/, test/     features (N, D) float32 = mean over K uniformly spaced clips, labels, video_ids
    windows/          sliding-window features over untrimmed videos with video_ids, subset ("train" for
                      the detection classifier, "test" for evaluation), start/end in seconds
    target_train/, target_test/  with `evaluation.target_encoder` on a BYOL run: the same videos
                      through its EMA target encoder (features, labels), for target_R@k / target_top1
    attrs             checkpoint, run_hash (of the final.pt), settings_hash (evaluation settings and the
                      evaluation data's content: evaluation.inputs.features_settings), bn_recalibrated,
                      clips per video, feature_dim
                      (and target_bn_recalibrated)
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .. import config as cfgmod
from .. import layout
from ..data.loader import EvalClips, WindowClips, loader
from ..data.shards import DatasetIndex
from ..evaluation.inputs import features_settings, require_current_run
from ..ssl.encoder import prepare_encoder, resolve_device
from ..utils import VididiError, atomic_hdf5, get_logger, progress

log = get_logger()


def main(config: dict, run: cfgmod.Run, eval_dataset: str) -> Path:
    """Write the features file of `run` on `eval_dataset` (layout.features_file)."""
    device = resolve_device(config["device"])
    run_hash = require_current_run(config, run)
    frame_encoder, note = prepare_encoder(config, run, device)
    index = DatasetIndex.for_dataset(config, eval_dataset)
    clips_cfg = config["datasets"][eval_dataset]["clips"]
    ev = config["evaluation"]
    out = layout.features_file(config, run, eval_dataset)
    with atomic_hdf5(out) as h5:
        h5.attrs.update(
            run=run.name, eval_dataset=eval_dataset, classes=json.dumps(index.classes),
            run_hash=run_hash, settings_hash=cfgmod.settings_hash(features_settings(config, eval_dataset)),
            eval_clips=clips_cfg["eval_clips"], **{k: v for k, v in note.items()},
        )  # fmt: skip
        for subset in ("train", "test"):
            videos = index.select(subset)
            if len(videos):
                feats = _video_features(frame_encoder, index, videos, clips_cfg, ev, f"{eval_dataset} {subset}")
                group = h5.create_group(subset)
                group["features"] = feats
                group["labels"] = index.label[videos]
                group["video_ids"] = np.asarray(index.video_id[videos], dtype=h5py.string_dtype())
                h5.attrs["feature_dim"] = feats.shape[1]
        untrimmed = [(s, index.select(s, untrimmed=True)) for s in ("train", "test")]
        if any(len(v) for _, v in untrimmed):
            _window_features(h5, frame_encoder, index, untrimmed, clips_cfg, ev, eval_dataset)
        if ev["target_encoder"] and run.framework == "byol":
            _target_features(h5, config, run, device, index, clips_cfg, ev, eval_dataset)
    return out


def _target_features(h5, config, run, device, index, clips_cfg, ev, eval_dataset) -> None:
    """target_train/, target_test/: the same videos through a BYOL run's EMA target encoder (its
    BatchNorm statistics re-estimated like the online encoder's), for target_R@k / target_top1."""
    frame_encoder, note = prepare_encoder(config, run, device, which="target_encoder")
    for subset in ("train", "test"):
        videos = index.select(subset)
        if len(videos):
            group = h5.create_group(f"target_{subset}")
            group["features"] = _video_features(frame_encoder, index, videos, clips_cfg, ev, f"{eval_dataset} target {subset}")
            group["labels"] = index.label[videos]
    h5.attrs["target_bn_recalibrated"] = note["bn_recalibrated"]


def _video_features(frame_encoder, index, videos, clips_cfg, ev, desc) -> np.ndarray:
    k = clips_cfg["eval_clips"]
    batches = loader(EvalClips(index, videos, clips_cfg), ev["num_workers"], batch_size=max(1, ev["batch_size"] // k))
    out = []
    for clips, _, _ in progress(batches, desc=f"features {desc}", unit="batch"):
        b = clips.shape[0]
        out.append(frame_encoder(clips.flatten(0, 1)).view(b, k, -1).mean(dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _window_features(h5, frame_encoder, index, untrimmed, clips_cfg, ev, desc) -> None:
    feats, vids, subsets, starts, ends = [], [], [], [], []
    step = ev["detection"]["window_step"]
    for subset, videos in untrimmed:
        if not len(videos):
            continue
        windows = WindowClips(index, videos, clips_cfg, step)
        for clips, video, start, end in progress(loader(windows, ev["num_workers"], batch_size=ev["batch_size"]),
                                                 desc=f"windows {desc} {subset}", unit="batch"):  # fmt: skip
            feats.append(frame_encoder(clips).cpu().numpy())
            fps = index.fps[video.numpy()]
            vids += list(index.video_id[video.numpy()])
            subsets += [subset] * len(video)
            starts.append(start.numpy() / fps)
            ends.append(end.numpy() / fps)
    if not feats:
        raise VididiError(f"{desc}: untrimmed videos produced no windows")
    group = h5.create_group("windows")
    group["features"] = np.concatenate(feats).astype(np.float32)
    group["video_ids"] = np.asarray(vids, dtype=h5py.string_dtype())
    group["subset"] = np.asarray(subsets, dtype=h5py.string_dtype())
    group["start"] = np.concatenate(starts)
    group["end"] = np.concatenate(ends)
    group.attrs["window_step"] = step
