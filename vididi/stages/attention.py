"""`vididi attention`: the analysis numbers of one run on one evaluation dataset.

- silhouette: cosine silhouette of the full-dimensional test features of the `figures.tsne_classes`
  classes with the most test videos (paper Fig. 4), from the features stage.
- object attention (synthetic data, where object masks exist): Grad-CAM on the encoder's last
  convolutional block for the middle clip of every test video. An SSL encoder has no classifier, so
  with `analysis.cam_target: probe_logit` (the default) the target is the linear probe's logit of the
  video's true class (the probe refitted on the train features exactly as the probe stage fits it):
  the map shows where the evidence for the class lies. The share of attention mass inside the
  object's mask dilated by one pixel, averaged over the test videos whose map is not all zero, asks
  whether that evidence is the moving object or the background. `object_attention_uniform`, the
  share a constant map gets on the same clips (the dilated mask's area share), is chance; the random
  encoder's run is the floor. `feature_norm` (the squared norm of the pooled embedding, the target
  before 0.1.0) has channel weights that are never negative, so its map is activation energy.

Writes `layout.metrics_file(..., "attention", ...)` (metrics/analysis-<eval_dataset>.json) and
`layout.attention_file` (analysis/attention-<eval_dataset>.h5: the clips and maps of the first
`figures.attention_videos` test videos, one per class, for the attention figure).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from .. import config as cfgmod
from .. import layout
from ..data.augment import centre_crop
from ..data.clips import figure_videos, middle_clip_frames
from ..data.shards import DatasetIndex, FrameReader
from ..evaluation import inputs
from ..evaluation.analysis import attention_share, feature_norm_target, grad_cam, probe_logit_targets, silhouette, top_classes
from ..evaluation.probe import fit_probe
from ..ssl.encoder import prepare_encoder, resolve_device
from ..utils import VididiError, atomic_hdf5, progress, write_metrics

MASK_DILATION = 1


def object_masks(config: dict, dataset: str, index: DatasetIndex, video: int, frames: np.ndarray, size: int) -> torch.Tensor | None:
    """Object masks (T, size, size) of a synthetic video's clip, resized and cropped like the frames."""
    path = layout.objects_file(config, dataset)
    if config["datasets"][dataset]["source"] != "synthetic" or not path.is_file():
        return None
    with h5py.File(path, "r") as h5:
        masks = torch.from_numpy(h5[str(index.video_id[video])]["masks"][np.asarray(frames)])
    height, width = int(index.height[video]), int(index.width[video])
    if masks.shape[-2:] != (height, width):
        masks = F.interpolate(masks[:, None].float(), size=(height, width), mode="nearest")[:, 0] > 0.5
    masks = masks[:, None].expand(-1, 3, -1, -1).to(torch.uint8)  # (T, 3, H, W): crop like a clip
    return centre_crop(masks, size)[0].bool()


def cam_targets(config: dict, run: cfgmod.Run, features: dict):
    """(label -> Grad-CAM target function, protocol note) for `analysis.cam_target`."""
    choice = config["analysis"]["cam_target"]
    if choice == "feature_norm":
        return (lambda label: feature_norm_target), {"cam_target": choice}
    train = features.get("train")
    if train is None:
        raise VididiError("analysis.cam_target probe_logit needs train features to fit the probe")
    pcfg = config["evaluation"]["probe"]
    model = fit_probe(train["features"], train["labels"], Cs=pcfg["Cs"], val_fraction=pcfg["val_fraction"], seed=run.seed,
                      **inputs.probe_solver(config))  # fmt: skip
    return probe_logit_targets(model), {"cam_target": choice, "probe_C": model.C}


def main(config: dict, run: cfgmod.Run, eval_dataset: str) -> Path:
    """Write the attention stage's metric file and attention maps (see the module docstring)."""
    out = layout.metrics_file(config, run, "attention", eval_dataset)
    fig_cfg = config["figures"]
    features, _, _ = inputs.load(config, run, eval_dataset, "attention")
    if "test" not in features:
        raise VididiError(f"{eval_dataset}: no test video features to analyse")
    test = features["test"]
    k = min(fig_cfg["tsne_classes"], len(np.unique(test["labels"])))
    top = top_classes(test["labels"], k)
    keep = np.isin(test["labels"], top)
    sil = silhouette(test["features"][keep], test["labels"][keep], metric="cosine")

    device = resolve_device(config["device"])
    frame_encoder, note = prepare_encoder(config, run, device)
    index = DatasetIndex.for_dataset(config, eval_dataset)
    clips_cfg = config["datasets"][eval_dataset]["clips"]
    reader = FrameReader(index)
    shown = set(figure_videos(index, fig_cfg["attention_videos"]))
    encoder = frame_encoder.encoder
    target_for, target_note = cam_targets(config, run, features)
    shares, uniform, figure = [], [], {"video_ids": [], "clips": [], "cams": [], "masks": []}
    for video in progress(index.select("test"), desc=f"attention {eval_dataset}", unit="video"):
        frames = middle_clip_frames(int(index.n_frames[video]), clips_cfg["frames"], clips_cfg["stride"])
        clip = centre_crop(reader.read(video, frames), clips_cfg["size"])  # (3, T, S, S) uint8
        cam = grad_cam(encoder, encoder.last_block, frame_encoder.inputs(clip[None]),
                       target_fn=target_for(int(index.label[video])))[0].cpu()  # fmt: skip
        masks = object_masks(config, eval_dataset, index, video, frames, clips_cfg["size"])
        if masks is not None:
            shares.append(float(attention_share(cam[None], masks[None], dilation=MASK_DILATION)[0]))
            if np.isfinite(shares[-1]):  # the level of a constant map on the same clip
                uniform.append(float(attention_share(torch.ones_like(cam)[None], masks[None], dilation=MASK_DILATION)[0]))
        if video in shown:
            figure["video_ids"].append(str(index.video_id[video]))
            figure["clips"].append(clip.numpy())
            figure["cams"].append(cam.numpy())
            figure["masks"].append(masks.numpy() if masks is not None else np.zeros(cam.shape, bool))
    reader.close()
    with atomic_hdf5(layout.attention_file(config, run, eval_dataset)) as h5:
        h5["video_ids"] = np.asarray(figure["video_ids"], dtype=h5py.string_dtype())
        for key in ("clips", "cams", "masks"):
            h5[key] = np.stack(figure[key])
    finite = [s for s in shares if np.isfinite(s)]
    metrics = {"silhouette": sil, "object_attention": float(np.mean(finite)) if finite else None,
               "object_attention_uniform": float(np.mean(uniform)) if uniform else None,
               "object_attention_videos": len(finite) if shares else None}  # fmt: skip
    protocol = {
        "silhouette": {"classes": [features["classes"][c] for c in top], "metric": "cosine",
                       "features": "full-dimensional test features", "n": int(keep.sum())},
        "object_attention": {"method": "Grad-CAM on the last convolutional block, target = " + (
                                 "squared norm of the pooled embedding" if target_note["cam_target"] == "feature_norm"
                                 else "the linear probe's logit of the true class"), **target_note,
                             "uniform": "object_attention_uniform = share of a constant map on the same clips (chance level)",
                             "clip": "middle clip of each test video, centre crop", "mask_dilation_px": MASK_DILATION,
                             "n_videos": len(finite), "available": bool(finite)},
        **note,
    }  # fmt: skip
    write_metrics(out, metrics, protocol, **inputs.record(config, run, eval_dataset, features, cfgmod.attention_settings(config, eval_dataset)))
    return out
