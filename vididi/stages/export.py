"""`vididi export`: a run's encoder as a standard checkpoint, with a JSON card beside it.

    results/<dataset>/runs/<run>/export/<run>.pt    the encoder's state dict: tensors only, loadable with
                                                     torch.load(weights_only=True); for r3d_18 / r2plus1d_18 /
                                                     mc3_18 the keys of torchvision.models.video.<backbone>
                                                     (load_state_dict strict except its head fc.*)
    results/<dataset>/runs/<run>/export/<run>.json   the card: backbone, input normalisation, settings,
                                                     metrics, provenance (machine, dates, code versions, data)

The encoder is exported as every evaluation sees it: its BatchNorm statistics re-estimated on order-0
clips of the run's training data (`evaluation.bn_recalibration`), so `vididi.load_encoder(<run>.pt)`
embeds clips exactly as the features stage does, and an external run of the file evaluates exactly as
the run itself. (safetensors is not a dependency of the pinned stack, so the file is a `.pt`.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .. import __version__, layout
from .. import config as cfgmod
from ..data.shards import DatasetIndex
from ..ssl.encoder import HEAD_PREFIXES, prepare_encoder, read_encoder_file, resolve_device
from ..utils import atomic_path, code_version, machine, versions, write_json

TORCHVISION = {"r3d_18", "r2plus1d_18", "mc3_18", "s3d"}  # backbones whose keys are torchvision's
SCALING_TEXT = {
    "dataset": "x = (rgb / 255 - mean) / sigma[0]  (mean per channel, sigma[0] one number)",
    "none": "x = rgb / 255 - mean  (mean per channel)",
    "per_clip": "x = rgb / 255 - mean, then each clip standardised on its own (zero mean, unit std)",
}


def main(config: dict, run: cfgmod.Run) -> Path:
    """Write `layout.export_file` and its card (`layout.export_card`); return the encoder file."""
    device = resolve_device(config["device"])
    frame_encoder, note = prepare_encoder(config, run, device)
    state = {k: v.detach().cpu().contiguous() for k, v in frame_encoder.encoder.state_dict().items()}
    out = layout.export_file(config, run)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    backbone = read_encoder_file(layout.final_checkpoint(config, run)).backbone
    settings = cfgmod.export_settings(config, run)
    clips = config["datasets"][run.dataset]["clips"]
    stats, scaling = frame_encoder.stats, frame_encoder.scaling
    name = backbone["name"]
    card = {
        "format": cfgmod.EXPORT_FORMAT,
        "file": out.name, "sha256": cfgmod.file_digest(out),
        "run": run.name, "framework": run.framework, "variant": run.variant, "seed": run.seed,
        "backbone": backbone,
        "loads_into": (f"torchvision.models.video.{name}(): load_state_dict(state, strict=True) once its head "
                       f"({', '.join(p + '*' for p in HEAD_PREFIXES)}) is dropped or replaced" if name in TORCHVISION
                       else f"vididi.ssl.models.build_backbone({name!r}, **options of 'backbone')"),
        "load": f"import vididi; encoder = vididi.load_encoder({out.name!r})  # features = encoder(uint8 clips (B, 3, T, H, W))",
        "normalisation": {"mean": stats["mean"], "sigma": stats["sigma"], "scaling": scaling,
                          "formula": SCALING_TEXT[scaling],
                          "input": f"RGB clips (B, 3, T, H, W) in [0, 255]; trained on T={clips['frames']} frames at "
                                   f"stride {clips['stride']}, {clips['size']}x{clips['size']} crops"},
        "batchnorm": {k: v for k, v in note.items() if k != "checkpoint"},
        "metrics": _metrics(config, run),
        "settings_hash": cfgmod.settings_hash(settings), "settings": settings,
        "provenance": {"training": _training(config, run),
                       "export": {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "code": code_version(),
                                  "versions": versions()},
                       "data": _data(config, run.dataset)},
        "citation": f"vididi {__version__} (CITATION.cff): Chen, Choi, Zhao, Han, Qu, Liu, \"Unfolding Videos "
                    "Dynamics via Taylor Expansion\", arXiv:2409.02371",
    }  # fmt: skip
    write_json(layout.export_card(out), card)
    return out


def _metrics(config: dict, run: cfgmod.Run) -> dict:
    """{eval_dataset: {stage (stage@fraction below all labels): metrics}} of the run's metric files."""
    out: dict = {}
    for stage, eval_dataset, fraction in cfgmod.run_evaluations(config, run):
        path = layout.metrics_file(config, run, stage, eval_dataset, fraction)
        if path.is_file():
            key = layout.metrics_stem(stage) + ("" if fraction == 1.0 else f"@{cfgmod.format_fraction(fraction)}")
            out.setdefault(eval_dataset, {})[key] = layout.read_metrics(path)
    return out


def _training(config: dict, run: cfgmod.Run) -> dict:
    path = layout.train_info(config, run)
    info = json.loads(path.read_text()) if path.is_file() else {}
    return {k: info.get(k) for k in ("machine", "finished", "code", "steps", "wall_seconds", "device", "processes")}


def _data(config: dict, dataset: str) -> dict:
    ds = config["datasets"][dataset]
    index = DatasetIndex.for_dataset(config, dataset)
    return {"dataset": dataset, "source": ds["source"], "split": ds["split"], "classes": index.classes,
            "train_videos": int(len(index.select("train"))), "stats": index.stats}  # fmt: skip
