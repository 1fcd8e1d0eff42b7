"""A trained encoder, ready for evaluation: device choice, loading `final.pt`, frozen order-0
features (`FrameEncoder`) and BatchNorm recalibration on order-0 training clips.

The features and attention stages both start from `prepare_encoder`.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
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


# heads of torchvision's video classifiers: not part of an encoder, ignored when an encoder file is read
HEAD_PREFIXES = ("fc.", "classifier.")
DEFAULT_SCALING = "dataset"  # every built-in variant's; used when a file does not record its own


@dataclass
class EncoderFile:
    """An encoder file as read: its state dict and what it says about itself (None where it is silent).
    `kind`: "run" (a vididi run's final checkpoint), "export" (`vididi export`, with its card) or "state dict" (bare)."""

    state: dict
    backbone: dict | None
    stats: dict | None
    scaling: str | None
    kind: str


def read_encoder_file(path: str | Path, which: str = "encoder") -> EncoderFile:
    """Read a vididi final.pt (`which` = "target_encoder": a BYOL run's EMA target), an exported
    encoder (a plain state dict with its card, `layout.export_card`) or a bare torchvision-format state
    dict, always with `weights_only=True` (no code in a file runs)."""
    path = Path(path)
    if not path.is_file():
        raise VididiError(f"{path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickles with code, truncated files: one line, never a traceback
        raise VididiError(f"{path}: not an encoder file loadable with weights_only=True ({str(exc).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and "encoder" in state and "backbone" in state:  # a vididi final.pt
        if which not in state:
            raise VididiError(f"{path} has no {which!r} (only BYOL runs trained since 0.1.0 keep their target; retrain it)")
        return EncoderFile(state[which], json.loads(state["backbone"]), json.loads(state["stats"]),
                           state.get("scaling"), "run")  # fmt: skip
    if which != "encoder":
        raise VididiError(f"{path} is a plain state dict: it holds one encoder, no {which!r}")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(list(map(str, state))[:5]) if isinstance(state, dict) else type(state).__name__
        raise VididiError(f"{path}: neither a vididi run's checkpoint nor a state dict of tensors (it holds: {keys})")
    card_path = layout.export_card(path)
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if card.get("format") != cfgmod.EXPORT_FORMAT:
        return EncoderFile(state, None, None, None, "state dict")
    norm = card["normalisation"]
    return EncoderFile(state, card["backbone"], {"mean": norm["mean"], "sigma": norm["sigma"]}, norm["scaling"], "export")


def load_weights(encoder: nn.Module, state: dict, path: str | Path, backbone: str) -> None:
    """Load `state` into `encoder` (heads `HEAD_PREFIXES` ignored); keys or shapes that do not match
    the backbone end in ONE line that lists them."""
    expected = encoder.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    problems = [f"{what} ({len(keys)}): {_some(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)) if keys]  # fmt: skip
    if problems:
        raise VididiError(f"{path} does not fit backbone {backbone!r}: " + "; ".join(problems))
    encoder.load_state_dict(state)


def _some(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def encoder_from_file(file: EncoderFile, path: str | Path, backbone: dict | None = None) -> nn.Module:
    """The backbone (`backbone` settings, else the file's own) with the file's weights, in eval mode.
    A file that names another backbone than `backbone` is refused in one line."""
    if backbone is None and file.backbone is None:
        raise VididiError(f"{path} is a bare state dict: say which backbone it is (a run entry's `backbone`), "
                          f"or export it with `vididi export` so its card says so")  # fmt: skip
    if backbone is not None and file.backbone is not None and file.backbone != backbone:
        raise VididiError(f"{path} holds backbone {file.backbone}, not {backbone}")
    backbone = backbone or file.backbone
    encoder = build_backbone(backbone["name"], **{k: v for k, v in backbone.items() if k != "name"})
    load_weights(encoder, file.state, path, backbone["name"])
    return encoder.eval()


def load_encoder(path: str | Path, device: torch.device | str = "cpu", which: str = "encoder"):
    """(encoder in eval mode, backbone settings, dataset stats) from a final.pt or an exported encoder;
    `which` = "target_encoder" loads a BYOL run's EMA target instead of the online encoder."""
    file = read_encoder_file(path, which)
    return encoder_from_file(file, path).to(device), file.backbone, file.stats


def frame_encoder_from_file(path: str | Path, device: torch.device | str = "cpu") -> FrameEncoder:
    """`vididi.load_encoder`: a final.pt or an exported encoder, ready to embed uint8 clips with the
    input normalisation it was trained with (the features stage's: centred by the dataset's mean
    colour, order 0 scaled as its variant scales it)."""
    device = torch.device(device)
    file = read_encoder_file(path)
    encoder = encoder_from_file(file, path).to(device, memory_format=torch.channels_last_3d)
    return FrameEncoder(encoder, file.stats, file.scaling or DEFAULT_SCALING, device)


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
    file = read_encoder_file(ckpt, which)
    encoder = encoder_from_file(file, ckpt).to(device, memory_format=torch.channels_last_3d)
    stats = file.stats
    # an external run's variant is a label: its final.pt says how its inputs are scaled
    external = run.framework == cfgmod.EXTERNAL
    scaling = (file.scaling or DEFAULT_SCALING) if external else config["variants"][run.variant]["scaling"]
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
