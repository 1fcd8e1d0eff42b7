"""`vididi finetune`: end-to-end fine-tuning of a run's encoder on one evaluation dataset (ssl/finetune.py).

A new linear head on the encoder (BatchNorm recalibrated, as every evaluation sees it), trained end to
end on the labelled train split, or on the per-class subset of `--label-fraction` of it
(evaluation/labels.py); video-level top-1 / top-5 on the test split, logits averaged over the K uniform
clips of each video. Resumable like pretraining: an interrupted job continues from its last.pt.
The scratch baseline is the `random` run fine-tuned: the same network from its seeded random init.

Writes `layout.metrics_file(config, run, "finetune", eval_dataset, fraction)` (metrics/finetune-E.json,
metrics/labels-<f>/finetune-E.json), and under `layout.finetune_dir` the checkpoints and train_log.csv.
Under torchrun every process runs this stage; rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path

from .. import config as cfgmod
from .. import layout
from ..evaluation import inputs
from ..ssl.finetune import finetune
from ..utils import write_metrics


def main(config: dict, run: cfgmod.Run, eval_dataset: str, label_fraction: float = 1.0) -> Path:
    """Fine-tune `run` on `eval_dataset` with `label_fraction` of its labels; write its metric file."""
    out = layout.metrics_file(config, run, "finetune", eval_dataset, label_fraction)
    run_hash = inputs.require_current_run(config, run)  # a final.pt of other settings is refused in one line
    result = finetune(config, run, eval_dataset, label_fraction)
    if result is None:  # not the main process
        return out
    ft = config["finetune"]
    protocol = {
        "model": "the run's encoder (BatchNorm recalibrated) + dropout + a new linear head, trained end to end",
        "train": f"{result['n_train']} of the {result['n_train_split']} labelled train videos "
                 f"(label fraction {label_fraction:g}, per class, label_seed {config['evaluation']['label_seed']})",
        "augment": "random resized crop + horizontal flip, one clip of T frames per video (order 0)",
        "optimizer": f"{ft['optimizer']}: head lr {ft['lr']:g}, encoder lr {ft['lr'] * ft['encoder_lr_ratio']:g}, "
                     f"{ft['warmup_steps']} warm-up steps then cosine to x{ft['min_lr_ratio']:g}",
        "loss": f"cross-entropy, label smoothing {ft['label_smoothing']:g}; dropout {ft['dropout']:g}",
        "batchnorm": "train mode while fine-tuning, eval mode at test",
        "test": f"video-level: logits averaged over {config['datasets'][eval_dataset]['clips']['eval_clips']} uniform centre clips",
        **{k: result[k] for k in ("top5_k", "n_train", "n_train_split", "n_test", "n_classes", "label_subset", "steps",
                                  "seconds", "segments")},
        **result["start"],
    }  # fmt: skip
    metrics = {"top1": result["top1"], "top5": result["top5"]}
    write_metrics(out, metrics, protocol, inputs.stage_settings(config, run, "finetune", eval_dataset, label_fraction),
                  {"run": run.name, "eval_dataset": eval_dataset, "run_hash": run_hash})
    return out
