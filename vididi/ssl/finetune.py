"""End-to-end fine-tuning of a run's encoder with a new linear head (the `finetune` stage).

The recipe (docs/method.md, "Fine-tuning"; every number is a key of the `finetune` section):
- the encoder starts as every evaluation sees it: the run's final.pt with its BatchNorm statistics
  re-estimated on order-0 clips (`prepare_encoder`), so an exported copy of a run fine-tunes to the
  same weights as the run itself; a new linear head (seeded by the run's seed) sits on its pooled
  features, with dropout before it;
- training uses the labelled TRAIN split of the evaluation dataset, or the per-class subset of a label
  fraction (evaluation/labels.py), one clip of T frames per video with random resized crop and
  horizontal flip (`config.finetune_augment`), order 0 scaled as the run's evaluation scales it;
- AdamW (or SGD) with the head at `lr` and the encoder at `lr * encoder_lr_ratio`, linear warm-up and
  cosine decay, cross-entropy with label smoothing; BatchNorm in train mode (batch statistics), as
  fine-tuning recipes do;
- the same machinery as pretraining (ssl/trainer.py): device, precision, channels_last, torch.compile,
  torchrun / DDP with synchronised BatchNorm, atomic checkpoints every `checkpoint_every` steps and
  resume; the batch of step k is a pure function of (seed, k) and dropout is reseeded from (seed, k),
  so a resumed CPU run reproduces an uninterrupted one bit for bit;
- evaluation: video-level top-1 / top-5 on the TEST split, logits averaged over the K uniformly
  spaced centre clips of each video (`clips.eval_clips`), BatchNorm in eval mode.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .. import config as cfgmod
from .. import layout
from ..data.loader import EvalClips, StepBatches, TrainClips, loader
from ..data.shards import DatasetIndex
from ..evaluation.labels import label_subset, subset_digest
from ..evaluation.probe import top_k_accuracy
from ..utils import VididiError, progress
from .distributed import convert_sync_batchnorm, is_main, world
from .encoder import FrameEncoder, prepare_encoder
from .frameworks import Supervised, build_framework
from .trainer import (
    StepInput,
    Trainer,
    TrainLog,
    compile_model,
    finish_distributed,
    init_distributed,
    lr_factor,
    make_optimizer,
    rank_device,
    resume_checkpoint,
    train_loop,
)


class FineTuner(Trainer):
    """The training step of fine-tuning: one order-0 view per video (batches of (clip, colour,
    label)); torch's generator (dropout) is reseeded from (seed, step, rank) before every step."""

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed

    def views(self, batch, step: int):
        clip, colour, _ = batch
        return self.view(clip, colour, 0), None, (0, 0)

    def step(self, step: int, batch):
        torch.manual_seed(int(np.random.SeedSequence([self.seed, step, world()[0]]).generate_state(1)[0]))
        return super().step(step, batch)


def finetune(config: dict, run: cfgmod.Run, eval_dataset: str, fraction: float = 1.0) -> dict | None:
    """Fine-tune `run`'s encoder on `eval_dataset` (resuming if possible) and evaluate it on test.
    Returns (on the main process; None elsewhere) the metrics and what the metric file records."""
    settings = cfgmod.finetune_settings(config, run, eval_dataset, fraction)
    settings_hash = cfgmod.settings_hash(settings)
    ft = {**config["pretrain"], **config["finetune"]}  # the recipe; device, precision, workers: pretraining's
    ckpt_dir = layout.finetune_checkpoint_dir(config, run, eval_dataset, fraction)
    rank, world_size = init_distributed()
    device = rank_device(config["device"], rank)
    started = time.time()
    index = DatasetIndex.for_dataset(config, eval_dataset)
    clips_cfg = config["datasets"][eval_dataset]["clips"]
    train = index.select("train")
    if len(train) == 0:
        raise VididiError(f"{eval_dataset}: no labelled training videos to fine-tune on")
    subset = train[label_subset(index.label[train], fraction, config["evaluation"]["label_seed"])]

    frame_encoder, start = prepare_encoder(config, run, device)  # BatchNorm recalibrated, as evaluated
    torch.manual_seed(run.seed)  # the new head's initialisation
    options = {"num_classes": len(index.classes), "dropout": ft["dropout"], "label_smoothing": ft["label_smoothing"]}
    model = build_framework("supervised", frame_encoder.encoder, options).to(device)
    if ft["precision"] == "fp64":
        model = model.double()
    if ft["channels_last"]:
        model = model.to(memory_format=torch.channels_last_3d)
    if world_size > 1:
        model = convert_sync_batchnorm(model)
    compile_model(model, device, ft["compile"])
    optimizer = make_optimizer(model, ft, device, encoder_lr_ratio=ft["encoder_lr_ratio"])
    total = ft["steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, ft["warmup_steps"], ft["min_lr_ratio"])
    )
    # resume only a fine-tuning of the same start: the run's weights are an input file, not in `settings`
    resume_hash = cfgmod.settings_hash([settings_hash, cfgmod.settings_hash(cfgmod.pretrain_settings(config, run))])
    start_step, segments = resume_checkpoint(ckpt_dir, resume_hash, total, model, optimizer, scheduler)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    stats, scaling = frame_encoder.stats, frame_encoder.scaling
    trainer = FineTuner(model, optimizer, scheduler, None, StepInput(stats["mean"], stats["sigma"], clips_cfg["frames"], scaling),
                        device, ft["precision"], ft["channels_last"], ft["grad_clip"], total, seed=run.seed)  # fmt: skip
    sampler = StepBatches(subset, ft["batch_size"], run.seed, start_step, total, rank, world_size)
    clips = TrainClips(index, clips_cfg, cfgmod.finetune_augment(config), views=1, extra_frames=0)
    batches = loader(clips, ft["num_workers"], batch_sampler=sampler)
    log_path = layout.finetune_log(config, run, eval_dataset, fraction)
    logger = TrainLog(log_path, start_step, len(subset), ft["batch_size"], clips_per_sample=1) if is_main() else None
    train_loop(trainer, batches, start_step, segments, ckpt_dir, resume_hash, logger, ft,
               f"finetune {run.name} {eval_dataset}", started)  # fmt: skip
    result = None
    if is_main():
        core = model.module if hasattr(model, "module") else model
        test = index.select("test")
        logits = video_logits(core, FrameEncoder(core.encoder, stats, scaling, device), index, test, clips_cfg,
                              config["evaluation"], f"finetune {eval_dataset} test")  # fmt: skip
        labels, classes = index.label[test], np.arange(len(index.classes))
        top5_k = min(5, len(classes))
        result = {
            "top1": top_k_accuracy(logits, classes, labels, 1), "top5": top_k_accuracy(logits, classes, labels, top5_k),
            "top5_k": top5_k, "n_train": int(len(subset)), "n_train_split": int(len(train)), "n_test": int(len(test)),
            "n_classes": len(classes), "steps": total, "seconds": round(sum(s["seconds"] for s in segments), 1),
            "segments": segments, "start": start,
            "label_subset": {"videos": int(len(subset)), "digest": subset_digest(index.video_id[subset])},
        }  # fmt: skip
    finish_distributed()
    return result


@torch.no_grad()
def video_logits(model: Supervised, frame_encoder: FrameEncoder, index: DatasetIndex, videos: np.ndarray, clips_cfg: dict,
                 ev: dict, desc: str) -> np.ndarray:  # fmt: skip
    """(videos, classes) logits averaged over each video's K uniformly spaced centre clips, eval mode."""
    model.eval()
    k = clips_cfg["eval_clips"]
    dtype = next(model.parameters()).dtype
    out = []
    for clips, _, _ in progress(loader(EvalClips(index, videos, clips_cfg), ev["num_workers"], batch_size=max(1, ev["batch_size"] // k)),
                                desc=desc, unit="batch"):  # fmt: skip
        b = clips.shape[0]
        with frame_encoder.autocast:
            logits = model.logits(frame_encoder.inputs(clips.flatten(0, 1)).to(dtype))
        out.append(logits.float().view(b, k, -1).mean(dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)
