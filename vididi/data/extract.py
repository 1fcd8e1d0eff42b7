"""The extraction stages: list the videos (manifest), decode each shard's videos with ffmpeg into an
HDF5 shard, then index the shards (index.tsv, dataset.json with the derivative scales, bad_videos.tsv).

    data/shards/<dataset>/manifest.json     every listed video and the shard it goes to
    data/shards/<dataset>/shard-00000.h5    frames of up to `shard_size` videos (see shards.py)
    data/shards/<dataset>/index.tsv         one row per readable video: shard, first frame, count, ...
    data/shards/<dataset>/dataset.json      classes, untrimmed segments, stats (mean, sigma_0..2)
    data/shards/<dataset>/bad_videos.tsv    every video that was missing or could not be decoded, and why

A shard is the unit of work (never a single video), written under a temporary name and renamed when
complete. A video that cannot be decoded (zero bytes, truncated, not a video) is skipped and listed
with its reason; the index stage fails only when more than `max_bad_fraction` of videos are bad.

Each stage checks the stamps of what it reads (vididi/stamps.py): the manifest's and every shard's
`settings_hash` must be the config's data settings. dataset.json records `content`, a digest of every
indexed frame (the shards' per-video digests) and of the measured scales: the runs' identity includes
it, so a rebuilt shard with the same frames re-trains nothing, and changed frames re-train.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from .. import config as cfgmod
from .. import layout, stamps
from ..layout import read_manifest
from ..utils import VididiError, atomic_hdf5, config_hash, progress, write_json, write_text
from .ffmpeg import decode, ffmpeg_version
from .shards import LIBVER, DatasetIndex, FrameReader, ShardWriter, format_splits, read_video_table
from .splits import list_dataset

log = logging.getLogger("vididi")
TRUNCATION_TOLERANCE = 0.9  # fewer decoded frames than this share of the header's count = truncated


def dataset_root(config: dict, dataset: str) -> Path:
    """Where the listing starts: the user's `root`, the generated folder, or the unpacked download."""
    ds = config["datasets"][dataset]
    if ds["root"] or ds["source"] in ("synthetic", "folder"):
        return layout.raw_dir(config, dataset)
    from .download import load_registry

    return layout.raw_dir(config, dataset) / load_registry()[ds["source"]].root


def download(config: dict, dataset: str) -> Path:
    """Fetch and unpack a registry dataset (resumable, verified); mark the raw folder complete."""
    import os

    from .archives import Limits
    from .download import fetch_dataset

    ds = config["datasets"][dataset]
    if ds["source"] in ("synthetic", "folder"):
        raise VididiError(f"dataset {dataset} ({ds['source']}) has nothing to download")
    downloads = layout.downloads_dir(config, dataset)
    raw = layout.raw_dir(config, dataset)
    fetch_dataset(ds["source"], downloads, raw, lock_file=layout.checksums_lock(config, dataset),
                  password=os.environ.get("VIDIDI_ARCHIVE_PASSWORD"), limits=Limits.from_config(ds["unpack"]))  # fmt: skip
    marker = layout.download_marker(config, dataset)
    write_text(marker, f"{ds['source']}\n")
    return marker


def write_manifest(config: dict, dataset: str) -> Path:
    """List the dataset's videos and assign them to shards, in a stable order."""
    ds = config["datasets"][dataset]
    root = dataset_root(config, dataset)
    if not root.is_dir():
        raise VididiError(f"dataset {dataset}: video folder {root} not found")
    source = "ucf101" if ds["source"] == "synthetic" else ds["source"]
    listing, missing = list_dataset(source, root, **ds["listing"])
    if not listing.videos:
        raise VididiError(f"dataset {dataset}: no videos found under {root}")
    _require_every_class(dataset, listing, root)
    size = ds["extract"]["shard_size"]
    videos = [
        {
            "video_id": v.video_id, "path": v.path, "label": v.label, "untrimmed": v.untrimmed,
            "splits": format_splits(v.splits), "shard": i // size,
        }
        for i, v in enumerate(listing.videos)
    ]  # fmt: skip
    manifest = {
        "dataset": dataset,
        "root": str(root),
        "classes": listing.classes,
        "n_shards": math.ceil(len(videos) / size),
        "videos": videos,
        "segments": [[s.video_id, s.start, s.end, s.label] for s in listing.segments],
        "missing": [list(m) for m in missing],
        "settings_hash": cfgmod.settings_hash(cfgmod.data_settings(config, dataset)),
        "settings": cfgmod.data_settings(config, dataset),
    }
    out = layout.manifest_file(config, dataset)
    write_json(out, manifest)
    log.info("%s: %d videos in %d shards (%d listed but missing)", dataset, len(videos), manifest["n_shards"], len(missing))
    return out


def current_manifest(config: dict, dataset: str) -> dict:
    """The manifest, after checking that it was made with the config's data settings."""
    manifest = read_manifest(config, dataset)
    expected = cfgmod.data_settings(config, dataset)
    stamps.require(layout.manifest_file(config, dataset), manifest.get("settings_hash"), cfgmod.settings_hash(expected),
                   manifest.get("settings"), expected, what="data settings")  # fmt: skip
    return manifest


def _require_every_class(dataset: str, listing, root: Path) -> None:
    """A class without a single video (a classInd.txt line without its folder, a Kinetics label whose
    clips are all gone) would silently shrink every table; stop, naming it and where it comes from."""
    if all(v.untrimmed for v in listing.videos):
        return  # detection-only data (THUMOS14): its classes are those of the segments
    present = {v.label for v in listing.videos if not v.untrimmed}
    empty = [name for label, name in enumerate(listing.classes) if label not in present]
    if empty:
        name = empty[0]
        origin = listing.class_origin.get(name, "a class folder")
        listed = sum(1 for path, _ in listing.missing if path.split("/", 1)[0] == name)
        why = f" (its {listed} listed videos are not on disk)" if listed else ""
        more = f"; {len(empty) - 1} more classes neither: {', '.join(empty[1:4])}{', ...' if len(empty) > 4 else ''}" if len(empty) > 1 else ""
        raise VididiError(f"dataset {dataset}: class {name!r} (from {origin}) has no video under {root}{why}{more}; "
                          "add its videos or remove the class")  # fmt: skip


def _require_readable_classes(dataset: str, manifest: dict, readable_labels: set, bad_report: Path) -> None:
    """Every class keeps at least one readable video after the bad ones are left out."""
    trimmed = [v for v in manifest["videos"] if not v["untrimmed"]]
    if not trimmed:
        return
    for label, name in enumerate(manifest["classes"]):
        if label not in readable_labels:
            count = sum(1 for v in trimmed if v["label"] == label)
            raise VididiError(f"dataset {dataset}: class {name!r} has no readable video: all {count} of its videos "
                              f"are unreadable; see {bad_report}")  # fmt: skip


def extract_shard(config: dict, dataset: str, shard: int) -> Path:
    """Decode the videos of one shard into `shard-NNNNN.h5` (atomically)."""
    manifest = current_manifest(config, dataset)
    if not 0 <= shard < manifest["n_shards"]:
        raise VididiError(f"dataset {dataset} has shards 0..{manifest['n_shards'] - 1}, not {shard}")
    ext = config["datasets"][dataset]["extract"]
    root = Path(manifest["root"])
    entries = [v for v in manifest["videos"] if v["shard"] == shard]
    out = layout.shard_file(config, dataset, shard)
    with atomic_hdf5(out, libver=LIBVER) as h5:
        h5.attrs.update(dataset=dataset, shard=shard, settings_hash=manifest["settings_hash"], ffmpeg=ffmpeg_version())
        writer = ShardWriter(h5, ext["encoding"], ext["jpeg_quality"])
        for entry in progress(entries, desc=f"{dataset} shard {shard}", unit="video"):
            meta = {k: entry[k] for k in ("video_id", "path", "splits", "label", "untrimmed")}
            try:
                video = decode(root / entry["path"], fps=ext["fps"], short_side=ext["short_side"])
                count = writer.add_video(meta, video.frames, video.height, video.width, video.fps or 0.0)
                if count == 0:
                    raise VididiError("no frames decoded")
                if video.expected_frames and count < TRUNCATION_TOLERANCE * video.expected_frames:
                    raise VididiError(f"truncated: decoded {count} of {video.expected_frames} frames")
            except VididiError as exc:
                if writer.rows["video_id"] and writer.rows["video_id"][-1] == entry["video_id"]:
                    writer.drop_last_video()
                reason = str(exc).removeprefix(f"{root / entry['path']}: ")
                writer.add_bad(entry["video_id"], entry["path"], reason)
                log.warning("bad video %s: %s", entry["path"], reason)
        writer.close()
    return out


INDEX_COLUMNS = ("video_id", "shard", "frame_start", "n_frames", "height", "width", "fps", "label", "untrimmed", "splits",
                 "digest")  # fmt: skip


def build_index(config: dict, dataset: str) -> Path:
    """Merge shard tables into index.tsv, collect bad videos, measure mean and derivative scales."""
    manifest = current_manifest(config, dataset)
    ds = config["datasets"][dataset]
    folder = layout.shard_dir(config, dataset)
    rows = []
    decoders = set()
    bad = [(Path(path).with_suffix("").as_posix(), path, f"missing: {reason}") for path, reason in manifest["missing"]]
    for shard in range(manifest["n_shards"]):
        path = layout.shard_file(config, dataset, shard)
        if not path.is_file():
            raise VididiError(f"{path} not found: run `vididi extract --dataset {dataset} --shard {shard}`")
        table, shard_bad, attrs = read_video_table(path)
        stamps.require(path, attrs.get("settings_hash"), manifest["settings_hash"], what="data settings")
        decoders.add(str(attrs.get("ffmpeg")))
        bad += shard_bad
        for i in range(len(table["video_id"])):
            rows.append([table["video_id"][i], shard] + [table[k][i] for k in INDEX_COLUMNS[2:]])

    report = "video_id\tpath\treason\n" + "".join(f"{v}\t{p}\t{r}\n" for v, p, r in bad)
    # the copy beside the logs outlives a failure: Snakemake deletes a failed job's outputs, not its logs
    kept_report = layout.kept_bad_videos_file(config, dataset)
    write_text(kept_report, report)
    total = len(rows) + len(bad)
    limit = ds["extract"]["max_bad_fraction"]
    if total == 0 or len(bad) > limit * total:
        raise VididiError(
            f"dataset {dataset}: {len(bad)} of {total} videos are missing or unreadable "
            f"(more than max_bad_fraction={limit}); see {kept_report}"
        )
    _require_readable_classes(dataset, manifest, {int(r[INDEX_COLUMNS.index("label")]) for r in rows}, kept_report)
    write_text(layout.bad_videos_file(config, dataset), report)
    lines = ["\t".join(INDEX_COLUMNS)]
    for r in rows:
        lines.append("\t".join(_cell(x) for x in r))
    write_text(layout.index_file(config, dataset), "\n".join(lines) + "\n")

    settings = cfgmod.index_settings(config, dataset)
    info = {
        "dataset": dataset,
        "source": ds["source"],
        "classes": manifest["classes"],
        "segments": manifest["segments"],
        "n_videos": len(rows),
        "n_bad": len(bad),
        "settings_hash": cfgmod.settings_hash(settings),
        "settings": settings,
        "ffmpeg": sorted(decoders),  # the decoders of the shards (provenance)
        "stats": None,
    }
    index = DatasetIndex.load(folder, info=info)  # reads clips through the new index.tsv
    info["stats"] = {split: measure_stats(dataclasses.replace(index, split=split), ds["clips"], seed=ds["seed"])
                     for split in index.split_names()}  # fmt: skip
    # the frames (each video's digest is a column of index.tsv), labels, splits, classes, segments and
    # scales: what a model trained or evaluated on this data is a function of
    info["content"] = config_hash([lines, info["classes"], info["segments"], info["stats"]])
    write_json(layout.info_file(config, dataset), info)
    log.info("%s: indexed %d videos (%d bad); stats %s", dataset, len(rows), len(bad), info["stats"])
    return layout.index_file(config, dataset)


def _cell(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def measure_stats(index: DatasetIndex, clips: dict, seed: int) -> dict:
    """Per-channel mean of frames and sigma_k = std of the k-th derivative over random training clips.

    Measured on frames in [0, 1], centred by the mean, at the dataset's clip length and stride
    (docs/method.md: scaling by these constants keeps speed differences between videos).
    """

    from ..ssl.derivatives import measure_sigma
    from .clips import clip_frame_numbers

    train = index.select("train")
    if len(train) == 0:
        raise VididiError(f"{index.root}: no training videos to measure derivative scales on")
    rng = np.random.default_rng([seed, 31337])
    reader = FrameReader(index)
    length = clips["frames"] + 2
    batch = []
    for video in rng.choice(train, size=clips["sigma_clips"], replace=True):
        n = int(index.n_frames[video])
        frames = clip_frame_numbers(n, length, clips["stride"], start=None, rng=rng)
        batch.append(reader.read(video, frames))
    reader.close()
    # float64 sums: the mean of many uint8 frames must not lose digits; one thread: a parallel sum's
    # order (hence its last digit) depends on the thread count, and the scales are part of the data
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clips_f = [b.permute(1, 0, 2, 3).double() / 255 for b in batch]  # (C, L, H, W)
        pixels = sum(c[0].numel() for c in clips_f)
        mean = sum(c.sum(dim=(1, 2, 3)) for c in clips_f) / pixels
        sigma = measure_sigma((c - mean[:, None, None, None] for c in clips_f), clips["frames"])
    finally:
        torch.set_num_threads(threads)
    return {"mean": [float(m) for m in mean], "sigma": [float(s) for s in sigma], "clips": len(batch)}
