"""`vididi features`: frozen-encoder features of one run on one evaluation dataset.

The encoder sees ORIGINAL frames only (order 0, scaled as in training), centre-cropped. Before any
feature is computed, every BatchNorm's running statistics are re-estimated on order-0 clips of the
run's TRAINING dataset (METHOD.md: statistics accumulated on a mix of orders 0/1/2 do not describe
frames and collapse a ViDiDi encoder's features); `evaluation.bn_recalibration: false` keeps the
as-trained statistics, and the choice is recorded in the output.

Output results/<dataset>/runs/<run>/features/<eval_dataset>.h5:
    train/, test/     features (N, D) float32 = mean over K uniformly spaced clips, labels, video_ids
    windows/          sliding-window features over untrimmed videos with video_ids, subset ("train" for
                      the detection classifier, "test" for evaluation), start/end in seconds
    attrs             checkpoint, settings hash, bn_recalibrated, clips per video, feature_dim
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from . import config as cfgmod
from .data.loader import EvalClips, WindowClips, loader
from .data.shards import DatasetIndex
from .derivatives import derivative_view, to_float
from .train import load_encoder, resolve_device
from .utils import VididiError, atomic_path, get_logger, progress

log = get_logger()


class FrameEncoder:
    """Order-0 features of uint8 clips (B, 3, T, S, S) with a frozen encoder (no grad, bf16 on GPU)."""

    def __init__(self, encoder: nn.Module, stats: dict, scaling: str, device: torch.device):
        self.encoder, self.stats, self.scaling, self.device = encoder, stats, scaling, device
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def inputs(self, clips: torch.Tensor) -> torch.Tensor:
        x = to_float(clips.to(self.device, non_blocking=True), self.stats["mean"])
        view = derivative_view(x, 0, x.shape[2], self.scaling, self.stats["sigma"])
        return view.contiguous(memory_format=torch.channels_last_3d)

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return self.encoder(self.inputs(clips)).float()


def recalibrate_batchnorm(frame_encoder: FrameEncoder, batches) -> int:
    """Re-estimate every BatchNorm's running mean/var as the plain average over `batches` of
    order-0 clips (train-mode forward, no gradient); returns the number of clips seen."""
    encoder = frame_encoder.encoder
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches, whatever a backbone's momentum
    encoder.train()
    seen = 0
    try:
        for clips, *_ in batches:
            clips = clips.flatten(0, 1) if clips.ndim == 6 else clips
            frame_encoder(clips)
            seen += len(clips)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        encoder.eval()
    return seen


def prepare_encoder(config: dict, run: cfgmod.Run, device: torch.device, which: str = "encoder") -> tuple[FrameEncoder, dict]:
    """The run's frozen encoder (`which`: "encoder", or a BYOL run's "target_encoder"), BatchNorm
    statistics re-estimated on order-0 training clips when `evaluation.bn_recalibration` is on.
    Returns the encoder and a note of what was done."""
    ckpt = cfgmod.run_dir(config, run) / "checkpoints" / "final.pt"
    encoder, backbone, stats = load_encoder(ckpt, device, which)
    encoder = encoder.to(memory_format=torch.channels_last_3d)
    scaling = config["variants"][run.variant]["scaling"]
    frame_encoder = FrameEncoder(encoder, stats, scaling, device)
    ev = config["evaluation"]
    note = {"checkpoint": str(ckpt), "bn_recalibrated": False, "bn_recalibration_clips": 0, "scaling": scaling}
    if ev["bn_recalibration"]:
        index = DatasetIndex.for_dataset(config, run.dataset)
        clips_cfg = config["datasets"][run.dataset]["clips"]
        train = index.select("train")
        k = clips_cfg["eval_clips"]
        n_videos = min(len(train), -(-ev["bn_recalibration_clips"] // k))
        chosen = np.random.default_rng([run.seed, 4242]).choice(train, size=n_videos, replace=False)
        clips = EvalClips(index, np.sort(chosen), clips_cfg, k=k)
        seen = recalibrate_batchnorm(frame_encoder, loader(clips, ev["num_workers"], batch_size=max(1, ev["batch_size"] // k)))
        note.update(bn_recalibrated=seen > 0, bn_recalibration_clips=seen)  # 0: the encoder has no BatchNorm
    return frame_encoder, note


def extract_features(config: dict, run: cfgmod.Run, eval_dataset: str) -> Path:
    device = resolve_device(config["device"])
    frame_encoder, note = prepare_encoder(config, run, device)
    index = DatasetIndex.for_dataset(config, eval_dataset)
    clips_cfg = config["datasets"][eval_dataset]["clips"]
    ev = config["evaluation"]
    out = cfgmod.run_dir(config, run) / "features" / f"{eval_dataset}.h5"
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(
            run=run.name, eval_dataset=eval_dataset, classes=json.dumps(index.classes),
            settings_hash=cfgmod.settings_hash(cfgmod.pretrain_settings(config, run)),
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


def read_features(path: str | Path) -> dict:
    """Everything in a features file as numpy arrays: {'train': {...}, 'test': {...}, 'windows': {...}, 'attrs': {...}}."""
    path = Path(path)
    if not path.is_file():
        raise VididiError(f"{path} not found: run the features stage first")
    out: dict = {}
    with h5py.File(path, "r") as h5:
        out["attrs"] = dict(h5.attrs)
        out["classes"] = json.loads(h5.attrs["classes"])
        for name in ("train", "test", "windows", "target_train", "target_test"):
            if name in h5:
                group = {k: h5[name][k][()] for k in h5[name]}
                for k in ("video_ids", "subset"):
                    if k in group:
                        group[k] = group[k].astype(str)
                out[name] = group
    return out
