"""A trained encoder, ready for evaluation: device choice, loading `final.pt`, frozen order-0
features (`FrameEncoder`) and BatchNorm recalibration on order-0 training clips.

The features and attention stages both start from `prepare_encoder`.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import config as cfgmod
from .. import layout
from ..data.loader import EvalClips, loader
from ..data.shards import DatasetIndex
from ..utils import VididiError
from .derivatives import derivative_view, to_float
from .models import build_backbone


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VididiError("device: cuda was asked for but no GPU is visible (set device: auto or cpu)")
    return torch.device(name)


def load_encoder(path: str | Path, device: torch.device | str = "cpu", which: str = "encoder"):
    """(encoder in eval mode, backbone settings, dataset stats) from a final.pt; `which` =
    "target_encoder" loads a BYOL run's EMA target instead of the online encoder."""
    path = Path(path)
    if not path.is_file():
        raise VididiError(f"{path} not found: run the pretrain stage first")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if which not in state:
        raise VididiError(f"{path} has no {which!r} (only BYOL runs trained since issue 13 keep their target; retrain it)")
    backbone = json.loads(state["backbone"])
    encoder = build_backbone(backbone["name"], **{k: v for k, v in backbone.items() if k != "name"})
    encoder.load_state_dict(state[which])
    return encoder.to(device).eval(), backbone, json.loads(state["stats"])


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
    ckpt = layout.final_checkpoint(config, run)
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
