"""Where every artifact of the pipeline lives, and the small readers of those artifacts.

The one owner of the file layout: stages, the Snakemake rules (workflow/rules/common.smk) and the
tests build paths with these functions and spell none themselves (`tests/test_structure.py` checks).
Torch-free (PyYAML, jsonschema, h5py, numpy), so the Snakefile and the light stages can use it.

Data folders are named after `config.data_owner(dataset)`: datasets that differ only in their split
(e.g. configs/scene-bias.yaml's out-of-context `_ooc` datasets) read one copy of the videos and shards.

    <data_dir>/raw/<dataset>/                       generated videos or an unpacked download
               raw/<dataset>/.downloaded            download complete (registry datasets)
               raw/<dataset>/objects.h5             object masks of synthetic videos (attention)
               downloads/<dataset>/                 archives + checksums.lock.json
               shards/<dataset>/manifest.json       listed videos and the shard each goes to
               shards/<dataset>/shard-00000.h5      decoded frames of up to shard_size videos
               shards/<dataset>/index.tsv           one row per readable video
               shards/<dataset>/dataset.json        classes, segments, derivative scales per split
               shards/<dataset>/bad_videos.tsv      missing or undecodable videos, and why
               logs/<dataset>/<stage>.log, bad_videos.tsv  (a copy that outlives a failed index job)
    <results_dir>/config.resolved.yaml              the validated config of the last invocation
                  .configs/config-<hash>.yaml       the one each invocation's jobs read ($VIDIDI_CONFIG)
                  <dataset>/runs/<run>/checkpoints/{last,final}.pt
                                      train_log.csv, train_info.json, .train.lock
                                      features/<eval_dataset>.h5
                                      metrics/<stage>-<eval_dataset>.json (+ .detections.txt)
                                      metrics/labels-<f>/{probe,finetune}-<eval_dataset>.json
                                      finetune/[labels-<f>/]<eval_dataset>/checkpoints/last.pt, train_log.csv
                                      export/<run>.pt, export/<run>.json (encoder + card)
                                      analysis/attention-<eval_dataset>.h5
                                      logs/<name>.log, benchmarks/<name>.tsv
                  <dataset>/summary.{csv,md}
                  <dataset>/figures/<figure>.{png,pdf}
                  <dataset>/logs/<name>.log

Every function takes the resolved config first; a run is anything with `.dataset` and `.name`
(`config.Run`, or `RunRef("{dataset}", "{run}")` for Snakemake wildcard patterns). Names may be
wildcard patterns too ("{dataset}", "{shard}").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import data_owner, format_fraction
from .utils import VididiError

SHARD_NAME = "shard-{:05d}.h5"
# file names inside a run's folder, for code that already holds the folder (the trainer's helpers)
FINAL_CHECKPOINT, LAST_CHECKPOINT = "final.pt", "last.pt"
TRAIN_LOG, TRAIN_INFO = "train_log.csv", "train_info.json"
OBJECTS_FILE = "objects.h5"  # inside a synthetic dataset's folder (data.synthetic builds it elsewhere first)


@dataclass(frozen=True)
class RunRef:
    """What a path needs of a run: its pretraining dataset and its name."""

    dataset: str
    name: str


# --------------------------------------------------------------------------------------------------
# data_dir


def _data(config: dict) -> Path:
    return Path(config["data_dir"])


def raw_dir(config: dict, dataset: str) -> Path:
    """The dataset's videos: the user's `root`, else data_dir/raw/<dataset> (<dataset> is always
    `config.data_owner`: datasets that differ only in their split share their data folders)."""
    root = config.get("datasets", {}).get(dataset, {}).get("root")
    return Path(root) if root else _data(config) / "raw" / data_owner(config, dataset)


def download_marker(config: dict, dataset: str) -> Path:
    return raw_dir(config, dataset) / ".downloaded"


def objects_file(config: dict, dataset: str) -> Path:
    """Object masks of a synthetic dataset's videos (written by data.synthetic.generate)."""
    return raw_dir(config, dataset) / OBJECTS_FILE


def downloads_dir(config: dict, dataset: str) -> Path:
    return _data(config) / "downloads" / data_owner(config, dataset)


def checksums_lock(config: dict, dataset: str) -> Path:
    return downloads_dir(config, dataset) / "checksums.lock.json"


def shard_dir(config: dict, dataset: str) -> Path:
    return _data(config) / "shards" / data_owner(config, dataset)


def manifest_file(config: dict, dataset: str) -> Path:
    return shard_dir(config, dataset) / "manifest.json"


def shard_name(shard: int | str) -> str:
    """`shard-00012.h5`; a string (a wildcard such as "{shard}") is used as it is."""
    return SHARD_NAME.format(shard) if isinstance(shard, int) else f"shard-{shard}.h5"


def shard_file(config: dict, dataset: str, shard: int | str) -> Path:
    return shard_dir(config, dataset) / shard_name(shard)


def index_file(config: dict, dataset: str) -> Path:
    return index_files(shard_dir(config, dataset))[0]


def info_file(config: dict, dataset: str) -> Path:
    return index_files(shard_dir(config, dataset))[1]


def bad_videos_file(config: dict, dataset: str) -> Path:
    return shard_dir(config, dataset) / "bad_videos.tsv"


def index_files(folder: str | Path) -> tuple[Path, Path]:
    """(index.tsv, dataset.json) of a shard folder (shards.DatasetIndex.load reads any folder)."""
    folder = Path(folder)
    return folder / "index.tsv", folder / "dataset.json"


def data_log_dir(config: dict, dataset: str) -> Path:
    """The data stage's logs; Snakemake keeps them when a job fails (and deletes the job's outputs)."""
    return _data(config) / "logs" / data_owner(config, dataset)


def data_log(config: dict, dataset: str, name: str) -> Path:
    return data_log_dir(config, dataset) / f"{name}.log"


def kept_bad_videos_file(config: dict, dataset: str) -> Path:
    """The copy of bad_videos.tsv beside the logs: it outlives a failed index job."""
    return data_log_dir(config, dataset) / "bad_videos.tsv"


# --------------------------------------------------------------------------------------------------
# results_dir


def _results(config: dict) -> Path:
    return Path(config["results_dir"])


def resolved_config(config: dict) -> Path:
    """The validated config of the last Snakemake invocation, for people to read."""
    return _results(config) / "config.resolved.yaml"


def job_config(config: dict, digest: str) -> Path:
    """The validated config the jobs of one invocation read ($VIDIDI_CONFIG), named by the hash of its
    content: a later invocation with other settings (a dry run, another --config) writes its own file
    and never changes what jobs that are still running read."""
    return _results(config) / ".configs" / f"config-{digest}.yaml"


def run_dir(config: dict, run) -> Path:
    return _results(config) / run.dataset / "runs" / run.name


def checkpoint_dir(config: dict, run) -> Path:
    return run_dir(config, run) / "checkpoints"


def final_checkpoint(config: dict, run) -> Path:
    return checkpoint_dir(config, run) / FINAL_CHECKPOINT


def last_checkpoint(config: dict, run) -> Path:
    return checkpoint_dir(config, run) / LAST_CHECKPOINT


def train_lock(config: dict, run) -> Path:
    """Held by the one process training the run (utils.exclusive_lock); outside checkpoints/, which a
    change of settings moves aside."""
    return run_dir(config, run) / ".train.lock"


def train_log(config: dict, run) -> Path:
    return run_dir(config, run) / TRAIN_LOG


def train_info(config: dict, run) -> Path:
    return run_dir(config, run) / TRAIN_INFO


def features_file(config: dict, run, eval_dataset: str) -> Path:
    return run_dir(config, run) / "features" / f"{eval_dataset}.h5"


def metrics_file(config: dict, run, stage: str, eval_dataset: str, fraction: float | str = 1.0) -> Path:
    """metrics/<stage>-<eval_dataset>.json; the attention stage writes `analysis-...`. With a label
    fraction below 1 (a probe or fine-tuning on part of the labels): metrics/labels-<f>/<stage>-...;
    `fraction` may be a wildcard ("{fraction}")."""
    return run_dir(config, run) / "metrics" / labels_folder(fraction) / f"{metrics_stem(stage)}-{eval_dataset}.json"


def labels_folder(fraction: float | str) -> str:
    """"" for all labels (1.0), else labels-<f> (0.1 -> labels-0.1; a wildcard string is kept)."""
    if not isinstance(fraction, str) and float(fraction) == 1.0:
        return ""
    return f"labels-{format_fraction(fraction)}"


def finetune_dir(config: dict, run, eval_dataset: str, fraction: float | str = 1.0) -> Path:
    """finetune/[labels-<f>/]<eval_dataset>/: checkpoints/last.pt (resume) and train_log.csv of a fine-tuning."""
    return run_dir(config, run) / "finetune" / labels_folder(fraction) / eval_dataset


def finetune_checkpoint_dir(config: dict, run, eval_dataset: str, fraction: float | str = 1.0) -> Path:
    """A fine-tuning's checkpoints/ (last.pt: the full training state, for resuming)."""
    return finetune_dir(config, run, eval_dataset, fraction) / "checkpoints"


def finetune_log(config: dict, run, eval_dataset: str, fraction: float | str = 1.0) -> Path:
    """A fine-tuning's train_log.csv (one row per step, as pretraining's)."""
    return finetune_dir(config, run, eval_dataset, fraction) / TRAIN_LOG


def export_file(config: dict, run) -> Path:
    """export/<run>.pt: the run's encoder as a plain (torchvision-format) state dict; its card beside it."""
    return run_dir(config, run) / "export" / f"{run.name}.pt"


def export_card(encoder_file: str | Path) -> Path:
    """The JSON card beside an exported encoder file (<name>.json): backbone, normalisation, settings,
    metrics, provenance."""
    return Path(encoder_file).with_suffix(".json")


def metrics_stem(stage: str) -> str:
    # the attention stage's numbers (silhouette, object-attention share) keep their file and summary
    # name "analysis", so results written before the stage was renamed stay valid
    return "analysis" if stage == "attention" else stage


def detections_file(config: dict, run, eval_dataset: str) -> Path:
    """The detection stage's detections in the THUMOS14 evaluation format, next to its metrics."""
    return metrics_file(config, run, "detection", eval_dataset).with_suffix(".detections.txt")


def attention_file(config: dict, run, eval_dataset: str) -> Path:
    return run_dir(config, run) / "analysis" / f"attention-{eval_dataset}.h5"


def run_log(config: dict, run, name: str) -> Path:
    return run_dir(config, run) / "logs" / f"{name}.log"


def run_benchmark(config: dict, run, name: str) -> Path:
    """Snakemake's `benchmark:` file of a run's job (the summary reads its wall time)."""
    return run_dir(config, run) / "benchmarks" / f"{name}.tsv"


def summary_file(config: dict, dataset: str, suffix: str = ".csv") -> Path:
    return _results(config) / dataset / f"summary{suffix}"


def figure_file(config: dict, dataset: str, name: str, suffix: str = "") -> Path:
    """results/<dataset>/figures/<name><suffix> (no suffix: the stem plots.save_figure completes)."""
    return _results(config) / dataset / "figures" / f"{name}{suffix}"


def dataset_log(config: dict, dataset: str, name: str) -> Path:
    return _results(config) / dataset / "logs" / f"{name}.log"


# --------------------------------------------------------------------------------------------------
# readers


def require(path: str | Path, stage: str) -> Path:
    """`path` if it exists, else a one-line error naming it and the stage that writes it."""
    path = Path(path)
    if not path.is_file():
        raise VididiError(f"{path} not found: run the {stage} stage first")
    return path


def read_json(path: str | Path, stage: str) -> dict:
    return json.loads(require(path, stage).read_text())


def read_manifest(config: dict, dataset: str) -> dict:
    path = manifest_file(config, dataset)
    if not path.is_file():
        raise VididiError(f"{path} not found: run `vididi manifest --dataset {dataset}` first")
    return json.loads(path.read_text())


def read_metrics(path: str | Path) -> dict:
    """The `metrics` mapping of a metric file (utils.write_metrics)."""
    return json.loads(Path(path).read_text())["metrics"]


def read_features(path: str | Path) -> dict:
    """Everything in a features file as numpy arrays: {'train': {...}, 'test': {...}, 'windows': {...}, 'attrs': {...}},
    plus 'target_train' / 'target_test' when it holds a BYOL run's EMA-target features."""
    import h5py

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
