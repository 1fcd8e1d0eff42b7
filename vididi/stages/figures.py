"""`vididi figures --figure NAME`: the figures of the runs pretrained on a dataset, as PNG + PDF in
results/<dataset>/figures/.

    derivatives  frames and their 1st / 2nd temporal derivatives for a few test videos
    tsne         t-SNE + silhouette of the top test classes, baseline vs ViDiDi (paper Fig. 4)
    attention    Grad-CAM attention: frames | baseline | ViDiDi (paper Fig. 5)
    curves       training loss and its terms per framework x variant (and, for runs trained with
                 `pretrain.monitor_every`, the online kNN monitor's R@1 in a second row)
    bars         Recall@1 / probe top-1 / detection mAP@0.5, baseline vs ViDiDi per framework
    label_efficiency  probe and fine-tuning top-1 against the label fraction: baseline, ViDiDi, random
                 init (frozen: the floor; fine-tuned: scratch); needs several evaluation.label_fractions

The comparison figures use `figures.framework` (default VICReg, as in the paper) with the variants
`figures.baseline` and `figures.vididi`, on the first backbone and seed the config lists for them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np

from .. import config as cfgmod
from .. import layout
from ..config import available_figures, comparison_runs
from ..data.augment import centre_crop
from ..data.clips import figure_videos, middle_clip_frames
from ..data.shards import DatasetIndex, FrameReader
from ..evaluation import inputs
from ..evaluation.analysis import top_classes, tsne_2d
from ..names import FIGURES
from ..plots import (
    attention_figure,
    bars_figure,
    curves_figure,
    derivative_views_figure,
    label_efficiency_figure,
    save_figure,
    tsne_figure,
    use_style,
)
from ..ssl.monitor import COLUMN as MONITOR_COLUMN
from ..utils import VididiError


def main(config: dict, dataset: str, figure: str) -> list[Path]:
    """Draw figure `figure` of the runs pretrained on `dataset` (PNG + PDF, layout.figure_file)."""
    if figure not in available_figures(config, dataset):
        raise VididiError(f"figure {figure!r} needs runs of {config['figures']['framework']} with variants "
                          f"{config['figures']['baseline']!r} and {config['figures']['vididi']!r} on {dataset}")  # fmt: skip
    with use_style():
        fig = DRAW[figure](config, dataset)
        return save_figure(fig, layout.figure_file(config, dataset, figure))


def _derivatives(config: dict, dataset: str):
    index = DatasetIndex.for_dataset(config, dataset)
    clips_cfg = config["datasets"][dataset]["clips"]
    reader = FrameReader(index)
    clips, names = [], []
    for video in figure_videos(index, config["figures"]["derivative_videos"]):
        frames = middle_clip_frames(int(index.n_frames[video]), clips_cfg["frames"] + 2, clips_cfg["stride"])
        clip = centre_crop(reader.read(video, frames), clips_cfg["size"])
        clips.append(clip.float().numpy() / 255)
        names.append(index.classes[int(index.label[video])])
    return derivative_views_figure(np.stack(clips), names, frames_to_show=config["figures"]["frames_to_show"])


def _tsne(config: dict, dataset: str):
    panels, classes = [], None
    top = None
    for run in comparison_runs(config, dataset):
        features, _, _ = inputs.load(config, run, dataset, "attention")  # (checked against the config)
        test, classes = features["test"], features["classes"]
        if top is None:
            top = top_classes(test["labels"], min(config["figures"]["tsne_classes"], len(np.unique(test["labels"]))))
        keep = np.isin(test["labels"], top)
        analysis = layout.read_json(layout.metrics_file(config, run, "attention", dataset), "attention")
        xy = tsne_2d(test["features"][keep], seed=0)
        panels.append((_run_label(run), xy, test["labels"][keep], analysis["metrics"]["silhouette"]))
    return tsne_figure(panels, classes)


def _attention(config: dict, dataset: str):
    cams, frames, names = {}, None, None
    for run in comparison_runs(config, dataset):
        with h5py.File(layout.require(layout.attention_file(config, run, dataset), "attention"), "r") as h5:
            cams[_run_label(run)] = h5["cams"][()]
            frames = h5["clips"][()].astype(np.float32) / 255
            names = [v.rsplit("/", 1)[-1] for v in h5["video_ids"][()].astype(str)]
    return attention_figure(frames, cams, frames_to_show=config["figures"]["frames_to_show"], names=names)


def _curves(config: dict, dataset: str):
    logs, seeds, monitor = {}, {}, {}
    for run in cfgmod.expand_runs(config):
        path = layout.train_log(config, run)
        key = (run.framework, run.variant)
        if run.dataset != dataset or not path.is_file() or seeds.setdefault(key, run.seed) != run.seed:
            continue  # one seed per curve: the first listed
        inputs.require_current_run(config, run)  # the log of the training this config asks for
        rows = list(csv.DictReader(path.open()))
        if not rows:
            continue
        skip = {"step", "epoch", "pair", "lr", "clips_per_s", MONITOR_COLUMN}
        columns = [c for c in rows[0] if c not in skip]
        logs[key] = {"step": np.array([int(r["step"]) for r in rows]),
                     **{c: np.array([float(r[c]) for r in rows]) for c in columns}}  # fmt: skip
        monitored = [r for r in rows if r.get(MONITOR_COLUMN)]  # the monitor's cells are empty between evaluations
        if monitored:
            monitor[key] = (np.array([int(r["step"]) for r in monitored]), np.array([float(r[MONITOR_COLUMN]) for r in monitored]))
    if not logs:
        raise VididiError(f"no training logs for {dataset} yet")
    window = max(1, min(25, len(next(iter(logs.values()))["step"]) // 20))
    return curves_figure(logs, smooth_window=window, monitor=monitor)


def _bars(config: dict, dataset: str):
    path = layout.require(layout.summary_file(config, dataset, ".csv"), "summary")
    rows = [dict(r) for r in csv.DictReader(path.open()) if r["eval_dataset"] == dataset]
    metrics = [m for m in ("R@1", "probe_top1", "det_mAP@0.5") if rows and rows[0].get(m) not in (None, "")]
    for row in rows:
        for m in metrics:
            row[m] = float(row[m]) * 100 if row[m] not in ("", None) else None
    labels = {"R@1": "Retrieval R@1 (%)", "probe_top1": "Linear probe top-1 (%)", "det_mAP@0.5": "Detection mAP@.5 (%)"}
    return bars_figure(rows, metrics, metric_labels=labels)


def _label_efficiency(config: dict, dataset: str):
    """Top-1 of the linear probe and of fine-tuning against the label fraction (summary.csv): the
    baseline and ViDiDi variants of `figures.framework`, and the random encoder (probed: the untrained
    floor; fine-tuned: the scratch baseline)."""
    path = layout.require(layout.summary_file(config, dataset, ".csv"), "summary")
    rows = [r for r in csv.DictReader(path.open()) if r["eval_dataset"] == dataset]
    fig = config["figures"]
    wanted = {(fig["framework"], fig["baseline"]): None, (fig["framework"], fig["vididi"]): None}
    wanted.update({(r["framework"], r["variant"]): None for r in rows if r["framework"] == cfgmod.NO_TRAINING})
    fractions = cfgmod.label_fractions(config)
    panels = {}
    for title, column in (("Linear probe", "probe_top1"), ("Fine-tuning", "finetune_top1")):
        lines = {}
        for framework, variant in wanted:
            group = [r for r in rows if (r["framework"], r["variant"]) == (framework, variant)]
            points = []
            for f in fractions:
                key = column if f == 1.0 else f"{column}@{cfgmod.format_fraction(f)}"
                values = [100 * float(r[key]) for r in group if r.get(key) not in (None, "")]
                if values:
                    points.append((f, float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0))
            if not points:
                continue
            if framework == cfgmod.NO_TRAINING:
                lines["random init (probed: frozen; fine-tuned: scratch)"] = points
            else:
                lines[_run_label(cfgmod.Run(dataset, framework, variant, "", 0, ()))] = points
        if lines:
            panels[title] = lines
    classes = len(DatasetIndex.for_dataset(config, dataset).classes)
    return label_efficiency_figure(panels, chance=100.0 / classes)


def _run_label(run: cfgmod.Run) -> str:
    """The paper's names: VICReg vs ViDiDi-VIC (and likewise for SimCLR, BYOL)."""
    name, short = {"vicreg": ("VICReg", "VIC"), "simclr": ("SimCLR", "SimCLR"), "byol": ("BYOL", "BYOL")}.get(
        run.framework, (run.framework, run.framework))
    if run.variant == "base":
        return name
    if run.variant == "vididi":
        return f"ViDiDi-{short}"
    return f"{name} ({run.variant})"


DRAW = {"derivatives": _derivatives, "tsne": _tsne, "attention": _attention, "curves": _curves, "bars": _bars,
        "label_efficiency": _label_efficiency}
assert tuple(DRAW) == FIGURES, "every figure of names.FIGURES has a drawing function"
