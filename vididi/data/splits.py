"""Video listings with labels and official splits for UCF101, HMDB51, Kinetics-400, THUMOS14 and user folders.

Every parser returns a `DatasetListing`: the class names, one `VideoEntry` per video file found on disk,
and the temporal ground truth of untrimmed videos. Files that the annotations name but that are not on
disk are never an error (real downloads lose videos); they go to `DatasetListing.missing` as
`(path, reason)` so the caller can report them. `list_dataset(source, root, **options)` dispatches on
the source name and returns `(listing, missing)`.

Conventions shared by all parsers:
- `video_id` is the file path relative to the dataset root, '/'-separated, without extension.
- `splits` maps a split name ("1", "2", "3") to "train" or "test"; a split the video is not part of is absent.
- Videos are listed in `video_id` order and segments in (video_id, start, end, label) order, so a listing
  of the same files is identical on every machine.
"""

from __future__ import annotations

import csv
import inspect
import itertools
import posixpath
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from vididi.utils import VididiError

VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv"}
)

# THUMOS14's 20 detection classes (all are UCF101 class names), in the benchmark's alphabetical order.
THUMOS14_CLASSES = (
    "BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving",
    "CricketBowling", "CricketShot", "Diving", "FrisbeeCatch", "GolfSwing",
    "HammerThrow", "HighJump", "JavelinThrow", "LongJump", "PoleVault",
    "Shotput", "SoccerPenalty", "TennisSwing", "ThrowDiscus", "VolleyballSpiking",
)  # fmt: skip

TRAIN, TEST = "train", "test"
Missing = tuple[str, str]  # (path relative to the dataset root, reason)


@dataclass(frozen=True)
class VideoEntry:
    video_id: str  # path relative to the dataset root without extension, '/'-separated
    path: str  # file path relative to the dataset root
    label: int  # 0-based index into DatasetListing.classes; -1 for untrimmed videos
    splits: dict[str, str]  # split name -> "train" | "test"; absent = not in that split
    untrimmed: bool = False  # detection video (THUMOS14 style)


@dataclass(frozen=True)
class Segment:
    video_id: str
    start: float  # seconds
    end: float  # seconds
    label: int  # index into DatasetListing.classes


@dataclass
class DatasetListing:
    classes: list[str]
    videos: list[VideoEntry]
    segments: list[Segment]  # ground truth of untrimmed videos (empty if none)
    missing: list[Missing] = field(default_factory=list)  # annotated files absent on disk
    class_origin: dict[str, str] = field(default_factory=dict)  # class -> where its name comes from ("file:line")


# ---------------------------------------------------------------------------------------------------------
# small shared helpers


def _require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise VididiError(f"{what} {path} is not a directory")
    return path


def _is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def _video_id(rel_path: str) -> str:
    return posixpath.splitext(rel_path)[0]


def _class_folders(root: Path, exclude: Iterable[str] = ()) -> dict[str, list[Path]]:
    """`<root>/<class>/**/<video>` -> {class: sorted video files}; folders without videos are not classes."""
    skip = set(exclude)
    found: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in skip or folder.name.startswith("."):
            continue
        videos = sorted(p for p in folder.rglob("*") if _is_video(p) and not _has_hidden_part(p, root))
        if videos:
            found[folder.name] = videos
    return found


def _has_hidden_part(path: Path, root: Path) -> bool:
    # extraction leftovers (".partial-*") and editor files are not dataset content
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _index_by_id(root: Path, files: Iterable[Path]) -> dict[str, str]:
    """video_id -> relative path; two files differing only by extension are ambiguous."""
    index: dict[str, str] = {}
    for file in files:
        rel = file.relative_to(root).as_posix()
        vid = _video_id(rel)
        if vid in index:
            raise VididiError(f"two video files for the same video id '{vid}': {index[vid]} and {rel}")
        index[vid] = rel
    return index


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines, stripped, with their 1-based numbers; tolerates CRLF and a UTF-8 BOM."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _path_and_code(line: str) -> tuple[str, str | None]:
    """'<path> <number>' -> (path, number); a line without a trailing number is all path (may hold spaces)."""
    parts = line.rsplit(None, 1)
    if len(parts) == 2 and parts[1].isdigit():
        return parts[0], parts[1]
    return line, None


def _sorted_listing(
    classes: list[str], videos: list[VideoEntry], segments: list[Segment], missing: list[Missing],
    class_origin: dict[str, str] | None = None,
) -> DatasetListing:
    return DatasetListing(
        classes=classes,
        videos=sorted(videos, key=lambda v: v.video_id),
        segments=sorted(segments, key=lambda s: (s.video_id, s.start, s.end, s.label)),
        missing=sorted(set(missing)),
        class_origin=class_origin or {},
    )


# ---------------------------------------------------------------------------------------------------------
# UCF-style split lists (UCF101, and optionally user folders)

_UCF_LIST = re.compile(r"^(train|test)list(\d+)\.txt$", re.IGNORECASE)


def _find_ucf_list_dir(root: Path) -> Path | None:
    for candidate in (root, root / "ucfTrainTestlist"):
        if (candidate / "classInd.txt").is_file() or any(_UCF_LIST.match(p.name) for p in _files(candidate)):
            return candidate
    return None


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def read_class_index(path: str | Path) -> list[str]:
    """classInd.txt (`<1-based index> <name>` per line; names may hold spaces) -> class names in index order."""
    return list(_read_class_index(path))


def _read_class_index(path: str | Path) -> dict[str, int]:
    """classInd.txt -> {class name: its line}, in index order."""
    path = Path(path)
    by_index: dict[int, str] = {}
    line_of: dict[str, int] = {}
    for n, line in _read_lines(path):
        fields = line.split(None, 1)
        if len(fields) != 2 or not fields[0].isdigit():
            raise VididiError(f"{path}:{n}: expected '<index> <class name>', got {line!r}")
        index, name = int(fields[0]), fields[1].strip()
        if index in by_index:
            raise VididiError(f"{path}:{n}: index {index} is given twice")
        if name in line_of:
            raise VididiError(f"{path}:{n}: class '{name}' is already listed on line {line_of[name]}")
        by_index[index], line_of[name] = name, n
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise VididiError(f"{path}: class indices must be 1..{len(by_index)} without gaps")
    return {by_index[i]: line_of[by_index[i]] for i in range(1, len(by_index) + 1)}


def _class_list(folders: dict[str, list[Path]], index_file: Path | None) -> tuple[list[str], str, dict[str, str]]:
    """(class names in label order, where they come from, where each comes from): classInd.txt when
    there is one, else the sorted class folders."""
    if index_file is not None and index_file.is_file():
        lines = _read_class_index(index_file)
        return list(lines), str(index_file), {name: f"{index_file}:{n}" for name, n in lines.items()}
    return sorted(folders), "the sorted class folders (no classInd.txt)", {}


def _read_ucf_split_lists(
    list_files: Sequence[Path], classes: list[str], class_source: str
) -> tuple[dict[str, dict[str, str]], dict[str, tuple[str, str]]]:
    """UCF-style lists -> ({video_id: {split: train|test}}, {video_id: (listed path, first "file:line")}).

    Train lines are `<class>/<file> [<1-based label>]`, test lines `<class>/<file>`. Entries are matched by
    video id (path without extension) because the real lists say `.avi` while re-encoded copies are `.mp4`.
    A label column must agree with the class folder, and no video may be in train and test of one split.
    """
    splits: dict[str, dict[str, str]] = {}
    named_in: dict[str, tuple[str, str]] = {}
    for list_file in sorted(list_files, key=lambda p: p.name.lower()):
        match = _UCF_LIST.match(list_file.name)
        if match is None:
            raise VididiError(f"split file {list_file} is not named trainlistNN.txt or testlistNN.txt")
        subset, split = match.group(1).lower(), str(int(match.group(2)))
        for n, line in _read_lines(list_file):
            rel, code = _path_and_code(line)
            rel = rel.replace("\\", "/")
            vid = _video_id(rel)
            if code is not None:
                folder = rel.split("/", 1)[0]
                label = int(code) - 1
                if not 0 <= label < len(classes):
                    raise VididiError(f"{list_file}:{n}: label {code} is not a class of {class_source} (1..{len(classes)})")
                if classes[label] != folder:
                    raise VididiError(
                        f"{list_file}:{n}: label {code} is '{classes[label]}' in {class_source}, but the video is in folder '{folder}'"
                    )
            previous = splits.setdefault(vid, {}).get(split)
            if previous is not None and previous != subset:
                raise VididiError(f"{list_file}:{n}: '{rel}' is in both the train and test list of split {split}")
            splits[vid][split] = subset
            named_in.setdefault(vid, (rel, f"{list_file.name}:{n}"))
    return splits, named_in


def _trimmed_entries(
    root: Path, folders: dict[str, list[Path]], classes: list[str], class_source: str, splits: dict[str, dict[str, str]]
) -> list[VideoEntry]:
    class_index = {name: i for i, name in enumerate(classes)}
    entries = []
    for folder, files in folders.items():
        if folder not in class_index:
            raise VididiError(f"video folder '{folder}' under {root} is not a class of {class_source}")
        for vid, rel in _index_by_id(root, files).items():
            entries.append(VideoEntry(vid, rel, class_index[folder], dict(splits.get(vid, {}))))
    return entries


def _missing_from_lists(on_disk: set[str], named_in: dict[str, tuple[str, str]]) -> list[Missing]:
    return [(rel, f"listed in {where} but not on disk") for vid, (rel, where) in named_in.items() if vid not in on_disk]


def list_ucf101_layout(root: str | Path) -> DatasetListing:
    """UCF101 (and the embedded synthetic dataset, which is written in the same layout).

    `<root>/<Class>/<video>` with any video extension; classInd.txt and trainlistNN.txt/testlistNN.txt in
    `<root>` or `<root>/ucfTrainTestlist/` (only the split files present are read). The class of a video is
    its folder's index in classInd.txt (sorted folder names when there is no classInd.txt). Videos on disk
    that no list names get no split; list entries without a file go to `missing`.
    If `<root>/untrimmed/` exists it is read with the THUMOS14 rules (`list_thumos14`), its annotation
    classes mapped onto the same class list, its ids prefixed with `untrimmed/`.
    """
    root = _require_dir(root, "UCF101 root")
    folders = _class_folders(root, exclude={"untrimmed"})
    list_dir = _find_ucf_list_dir(root)
    classes, class_source, origin = _class_list(folders, list_dir / "classInd.txt" if list_dir else None)
    list_files = [p for p in _files(list_dir) if _UCF_LIST.match(p.name)] if list_dir else []
    splits, named_in = _read_ucf_split_lists(list_files, classes, class_source)
    videos = _trimmed_entries(root, folders, classes, class_source, splits)
    missing = _missing_from_lists({v.video_id for v in videos}, named_in)
    segments: list[Segment] = []
    if (root / "untrimmed").is_dir():
        untrimmed = _untrimmed_part(root, root / "untrimmed", classes, annotated_only=False)
        videos += untrimmed.videos
        segments = untrimmed.segments
        missing += untrimmed.missing
    return _sorted_listing(classes, videos, segments, missing, origin)


# ---------------------------------------------------------------------------------------------------------
# HMDB51

_HMDB_SPLIT = re.compile(r"^(.+)_test_split(\d+)\.txt$")
_HMDB_CODES = {"0": None, "1": TRAIN, "2": TEST}


def list_hmdb51(root: str | Path, splits_dir: str | Path | None = None) -> DatasetListing:
    """HMDB51: `<root>/<class>/<name>.avi`, split files `<class>_test_split{1,2,3}.txt` in `splits_dir`.

    Split lines are `<name>.avi <code>` with code 1 = train, 2 = test, 0 = not in that split.
    `splits_dir` defaults to `<root>/testTrainMulti_7030_splits` (the folder in test_train_splits.rar),
    else `<root>`. Classes = sorted union of split-file classes and class folders.
    """
    root = _require_dir(root, "HMDB51 root")
    if splits_dir is None:
        official = root / "testTrainMulti_7030_splits"
        splits_dir = official if official.is_dir() else root
    splits_dir = _require_dir(root / splits_dir, "HMDB51 splits_dir")
    split_files = [(p, _HMDB_SPLIT.match(p.name)) for p in _files(splits_dir)]
    split_files = [(p, m.group(1), str(int(m.group(2)))) for p, m in split_files if m]
    folders = _class_folders(root, exclude={splits_dir.name} if splits_dir != root else ())
    classes = sorted({cls for _, cls, _ in split_files} | set(folders))
    origin = {cls: str(path) for path, cls, _ in reversed(split_files)}  # the first split file of the class

    splits: dict[str, dict[str, str]] = {}
    named_in: dict[str, tuple[str, str]] = {}
    for path, cls, split in split_files:
        for n, line in _read_lines(path):
            name, code = _path_and_code(line)
            if code not in _HMDB_CODES:
                raise VididiError(f"{path}:{n}: expected '<video>.avi <0|1|2>', got {line!r}")
            vid = f"{cls}/{_video_id(name)}"
            subset = _HMDB_CODES[code]
            named_in.setdefault(vid, (f"{cls}/{name}", f"{path.name}:{n}"))
            splits.setdefault(vid, {})
            if subset is not None:
                splits[vid][split] = subset
    videos = _trimmed_entries(root, folders, classes, "the HMDB51 class folders", splits)
    missing = _missing_from_lists({v.video_id for v in videos}, named_in)
    return _sorted_listing(classes, videos, [], missing, origin)


# ---------------------------------------------------------------------------------------------------------
# Kinetics-400

_KINETICS_SUBSETS = {"train": TRAIN, "val": TEST, "validate": TEST, "validation": TEST}


def kinetics_file_stem(youtube_id: str, time_start: float, time_end: float) -> str:
    """The clip file name used by the official downloader and the CVDF mirror: `<id>_<start:06d>_<end:06d>`."""
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}"


def _youtube_id_of(stem: str) -> str | None:
    # YouTube ids are 11 characters; a stem is either the bare id or the id followed by "_<start>_<end>"
    return stem[:11] if len(stem) == 11 or (len(stem) > 11 and stem[11] == "_") else None


def _kinetics_file_index(folder: Path, root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Files under `folder` (any depth) -> ({stem: rel path}, {youtube id: rel path})."""
    by_stem: dict[str, str] = {}
    by_youtube_id: dict[str, str] = {}
    if not folder.is_dir():
        return by_stem, by_youtube_id
    for file in sorted(folder.rglob("*")):
        if not _is_video(file) or _has_hidden_part(file, root):
            continue
        rel = file.relative_to(root).as_posix()
        if file.stem in by_stem:
            raise VididiError(f"two files for the Kinetics clip '{file.stem}': {by_stem[file.stem]} and {rel}")
        by_stem[file.stem] = rel
        youtube_id = _youtube_id_of(file.stem)
        if youtube_id is not None:
            by_youtube_id.setdefault(youtube_id, rel)
    return by_stem, by_youtube_id


@dataclass(frozen=True)
class _KineticsRow:
    label: str
    youtube_id: str
    start: float
    end: float


def _read_kinetics_csv(path: Path) -> list[_KineticsRow]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        required = {"label", "youtube_id", "time_start", "time_end"}
        if reader.fieldnames is None or not required <= set(reader.fieldnames):
            raise VididiError(
                f"{path}: Kinetics annotation CSV needs the columns {sorted(required)}, has {reader.fieldnames}"
            )
        return [
            _KineticsRow(
                row["label"],
                row["youtube_id"],
                _seconds(row["time_start"], path, reader.line_num),
                _seconds(row["time_end"], path, reader.line_num),
            )
            for row in reader
        ]


def _default_kinetics_csvs(root: Path) -> dict[str, Path]:
    for train, val in (
        ("annotations/train.csv", "annotations/val.csv"),  # CVDF mirror layout
        ("kinetics400/train.csv", "kinetics400/validate.csv"),  # DeepMind annotation tarball
    ):
        if (root / train).is_file() and (root / val).is_file():
            return {"train": root / train, "val": root / val}
    raise VididiError(
        f"no Kinetics annotation CSVs under {root} (looked for annotations/{{train,val}}.csv and "
        "kinetics400/{train,validate}.csv); pass annotations_csv_by_subset"
    )


def _select_classes(all_classes: list[str], classes: Sequence[str] | int | None) -> list[str]:
    if classes is None:
        return all_classes
    if isinstance(classes, int):
        if not 1 <= classes <= len(all_classes):
            raise VididiError(f"classes={classes} must be between 1 and the {len(all_classes)} annotated classes")
        return all_classes[:classes]
    unknown = [c for c in classes if c not in set(all_classes)]
    if unknown:
        raise VididiError(f"classes {unknown} are not in the Kinetics annotations")
    return list(classes)


def list_kinetics(
    root: str | Path,
    annotations_csv_by_subset: dict[str, str | Path] | None = None,
    classes: Sequence[str] | int | None = None,
    videos_per_class: int | None = None,
    replacement_dir: str | Path | None = "replacement",
) -> DatasetListing:
    """Kinetics-400 from the official CSVs (`label,youtube_id,time_start,time_end,split[,is_cc]`).

    `annotations_csv_by_subset` maps a subset name to its CSV; the subset name is also its video folder
    `<root>/<subset>/` (clips found at any depth: flat or `<label>/` folders). Subset "train" is split "1"
    train; "val"/"validate" is split "1" test; other subsets (the unlabelled test set) are refused.
    Default CSVs: `annotations/{train,val}.csv` (CVDF mirror) or `kinetics400/{train,validate}.csv`.
    A clip file is `<youtube_id>_<start:06d>_<end:06d>.<ext>` (or `<youtube_id>.<ext>`); files in
    `<root>/<replacement_dir>` (CVDF's re-encoded replacements for corrupted clips) take precedence.
    Rows without a file go to `missing` (about 5% of Kinetics is gone from YouTube).
    `classes`: a list of names (label order as given) or a count N (the first N class names in sorted order).
    `videos_per_class`: per subset and class, rows are taken in (youtube_id, time_start) order, which is
    unrelated to content since YouTube ids are random, until that many clips with a file are found.
    """
    root = _require_dir(root, "Kinetics root")
    csvs = {k: root / v for k, v in (annotations_csv_by_subset or _default_kinetics_csvs(root)).items()}
    for subset, path in csvs.items():
        if subset not in _KINETICS_SUBSETS:
            raise VididiError(
                f"Kinetics subset '{subset}' has no split role (use one of {sorted(_KINETICS_SUBSETS)})"
            )
        if not path.is_file():
            raise VididiError(f"Kinetics annotation CSV for subset '{subset}' not found: {path}")
    if videos_per_class is not None and videos_per_class < 1:
        raise VididiError(f"videos_per_class must be >= 1, got {videos_per_class}")

    rows_by_subset = {subset: _read_kinetics_csv(path) for subset, path in csvs.items()}
    all_classes = sorted({row.label for rows in rows_by_subset.values() for row in rows})
    chosen = _select_classes(all_classes, classes)
    class_index = {name: i for i, name in enumerate(chosen)}

    replacements = ({}, {})
    if replacement_dir is not None:
        replacements = _kinetics_file_index(root / replacement_dir, root)
    videos: dict[str, VideoEntry] = {}
    missing: list[Missing] = []
    for subset, rows in rows_by_subset.items():
        by_stem, by_youtube_id = _kinetics_file_index(root / subset, root)
        rows = sorted((r for r in rows if r.label in class_index), key=lambda r: (r.youtube_id, r.start))
        taken: dict[str, int] = {}
        for row in rows:
            if videos_per_class is not None and taken.get(row.label, 0) >= videos_per_class:
                continue
            stem = kinetics_file_stem(row.youtube_id, row.start, row.end)
            rel = (
                replacements[0].get(stem)
                or replacements[1].get(row.youtube_id)
                or by_stem.get(stem)
                or by_youtube_id.get(row.youtube_id)
            )
            if rel is None:
                reason = f"listed in {csvs[subset].name} (label '{row.label}') but no file"
                missing.append((f"{subset}/{stem}.mp4", reason))
                continue
            entry = VideoEntry(_video_id(rel), rel, class_index[row.label], {"1": _KINETICS_SUBSETS[subset]})
            previous = videos.get(entry.video_id)
            if previous is not None and previous != entry:
                raise VididiError(f"Kinetics clip {rel} is annotated twice with different label or subset")
            videos[entry.video_id] = entry
            taken[row.label] = taken.get(row.label, 0) + 1
    labels_in = {subset: {row.label for row in rows} for subset, rows in rows_by_subset.items()}
    origin = {name: " and ".join(str(csvs[s]) for s in sorted(csvs) if name in labels_in[s]) for name in chosen}
    return _sorted_listing(chosen, list(videos.values()), [], missing, origin)


# ---------------------------------------------------------------------------------------------------------
# THUMOS14 (untrimmed detection videos)

_THUMOS_VIDEO = re.compile(r"^video_(validation|test)_\d+$")
_THUMOS_ANNOTATION = re.compile(r"^(.+)_(val|test)\.txt$")
_THUMOS_SUBSETS = {"validation": TRAIN, "val": TRAIN, "test": TEST}


def _thumos_annotation_files(root: Path) -> list[tuple[Path, str]]:
    """`<Class>_val.txt` / `<Class>_test.txt` in any folder under root whose name starts with 'annotation'.

    That one rule covers the official zips (`TH14_Temporal_annotations_validation/annotation/`,
    `TH14_Temporal_Annotations_Test/annotations/annotation/`), a plain `annotation/` folder and the
    synthetic dataset's `annotation_val/` and `annotation_test/`. `Ambiguous_*` files are skipped.
    """
    found = []
    for path in sorted(root.rglob("*.txt")):
        match = _THUMOS_ANNOTATION.match(path.name)
        if match and path.parent.name.lower().startswith("annotation") and not _has_hidden_part(path, root):
            if match.group(1) != "Ambiguous":
                found.append((path, match.group(1)))
    return found


def _untrimmed_part(
    dataset_root: Path, root: Path, class_order: Sequence[str] | None, annotated_only: bool
) -> DatasetListing:
    """THUMOS14-style videos and segments under `root`, ids relative to `dataset_root`."""
    files = [p for p in sorted(root.rglob("*")) if _THUMOS_VIDEO.match(p.stem) and _is_video(p)]
    files = [p for p in files if not _has_hidden_part(p, root)]
    by_name: dict[str, Path] = {}
    for file in files:
        if file.stem in by_name:
            raise VididiError(f"two files for the THUMOS14 video '{file.stem}': {by_name[file.stem]} and {file}")
        by_name[file.stem] = file

    annotation_files = _thumos_annotation_files(root)
    found_classes = {cls for _, cls in annotation_files}
    if class_order is not None:
        classes = list(class_order)
    elif found_classes <= set(THUMOS14_CLASSES):
        classes = list(THUMOS14_CLASSES)  # stable indices even when only some annotation files exist
    else:
        classes = sorted(found_classes)
    unknown = sorted(found_classes - set(classes))
    if unknown:
        raise VididiError(f"annotation classes {unknown} under {root} are not in the class list")
    class_index = {name: i for i, name in enumerate(classes)}

    segments: list[Segment] = []
    missing: list[Missing] = []
    annotated: set[str] = set()
    for path, cls in annotation_files:
        for n, line in _read_lines(path):
            fields = line.split()
            if len(fields) != 3:
                raise VididiError(f"{path}:{n}: expected '<video name> <start> <end>', got {line!r}")
            name, start, end = fields[0], _seconds(fields[1], path, n), _seconds(fields[2], path, n)
            if end < start:
                raise VididiError(f"{path}:{n}: segment ends ({end}) before it starts ({start})")
            if name not in by_name:
                missing.append((name, f"annotated in {path.name} but no video file under {root}"))
                continue
            annotated.add(name)
            vid = _video_id(by_name[name].relative_to(dataset_root).as_posix())
            segments.append(Segment(vid, start, end, class_index[cls]))

    videos = []
    for name, file in by_name.items():
        if annotated_only and name not in annotated:
            continue
        rel = file.relative_to(dataset_root).as_posix()
        subset = _THUMOS_VIDEO.match(name).group(1)
        videos.append(VideoEntry(_video_id(rel), rel, -1, {"1": _THUMOS_SUBSETS[subset]}, untrimmed=True))
    return DatasetListing(classes, videos, segments, missing)


def _seconds(text: str, path: Path, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise VididiError(f"{path}:{line}: {text!r} is not a time in seconds") from None


def list_thumos14(
    root: str | Path, class_order: Sequence[str] | None = None, annotated_only: bool = True
) -> DatasetListing:
    """THUMOS14 untrimmed videos with their temporal ground truth.

    Videos: any file under root named `video_validation_<n>` or `video_test_<n>` with a video extension, at
    any depth (so `validation/`, `test/`, `TH14_test_set_mp4/` or flat all work); validation -> split "1"
    train, test -> split "1" test; label -1, untrimmed=True. Annotations: see `_thumos_annotation_files`;
    lines `<video name> <start s> <end s>`. Classes: `class_order` if given (the caller's mapping, e.g. to
    UCF101 indices), else the 20 THUMOS14 classes when the annotation classes are among them, else the
    sorted annotation classes. With `annotated_only` (the detection protocol: 200 validation and 213 test
    videos) videos without a non-ambiguous segment are left out; segments are kept as annotated, including
    THUMOS14's CliffDiving instances that are also annotated as Diving.
    """
    root = _require_dir(root, "THUMOS14 root")
    part = _untrimmed_part(root, root, class_order, annotated_only)
    return _sorted_listing(part.classes, part.videos, part.segments, part.missing)


# ---------------------------------------------------------------------------------------------------------
# user folders


def list_folder(
    root: str | Path,
    split_files: str | Path | Sequence[str | Path] | None = None,
    seed: int = 0,
    train_fraction: float = 0.7,
) -> DatasetListing:
    """Any `<class>/<video>` tree (videos at any depth inside the class folder).

    Classes (and so labels, and the order of classes in reports) follow a UCF-style `classInd.txt`
    when there is one: beside the split files, else in `root`; without it, the sorted folder names.
    `split_files`: a folder holding UCF-style `trainlistNN.txt`/`testlistNN.txt`, or a list of such files
    (entries `<class>/<path>` relative to root, train lines optionally with a 1-based label). Without them split "1" is a per-class random split: the
    class's video ids, sorted, are shuffled by `random.Random(f"{seed}:{class}")` (string seeds are stable
    across Python runs) and the first round(train_fraction * n) are train, the rest test; a class with at
    least 2 videos keeps at least one video on each side.
    """
    root = _require_dir(root, "folder dataset root")
    if not 0.0 < train_fraction < 1.0:
        raise VididiError(f"train_fraction must be in (0, 1), got {train_fraction}")
    folders = _class_folders(root)
    if not folders:
        raise VididiError(f"no videos found in class folders under {root} (extensions {sorted(VIDEO_EXTENSIONS)})")
    missing: list[Missing] = []
    files: list[Path] = []
    if split_files is not None:
        if isinstance(split_files, (str, Path)):
            list_dir = _require_dir(root / split_files, "split_files folder")
            files = [p for p in _files(list_dir) if _UCF_LIST.match(p.name)]
            if not files:
                raise VididiError(f"no trainlistNN.txt/testlistNN.txt files in {list_dir}")
        else:
            files = [root / p for p in split_files]
            absent = [str(p) for p in files if not p.is_file()]
            if absent:
                raise VididiError(f"split files not found: {absent}")
    beside_lists = [f.parent / "classInd.txt" for f in files if (f.parent / "classInd.txt").is_file()]
    classes, class_source, origin = _class_list(folders, (beside_lists or [root / "classInd.txt"])[0])
    if files:
        splits, named_in = _read_ucf_split_lists(files, classes, class_source)
        videos = _trimmed_entries(root, folders, classes, class_source, splits)
        missing = _missing_from_lists({v.video_id for v in videos}, named_in)
    else:
        videos = []
        for label, entries in itertools.groupby(
            sorted(_trimmed_entries(root, folders, classes, class_source, {}), key=lambda e: (e.label, e.video_id)),
            key=lambda e: e.label,
        ):
            order = list(entries)
            random.Random(f"{seed}:{classes[label]}").shuffle(order)
            n_train = round(train_fraction * len(order))
            if len(order) >= 2:
                n_train = min(max(n_train, 1), len(order) - 1)
            for i, e in enumerate(order):
                videos.append(VideoEntry(e.video_id, e.path, label, {"1": TRAIN if i < n_train else TEST}))
    return _sorted_listing(classes, videos, [], missing, origin)


# ---------------------------------------------------------------------------------------------------------
# dispatcher

LISTERS: dict[str, Callable[..., DatasetListing]] = {
    "synthetic": list_ucf101_layout,
    "ucf101": list_ucf101_layout,
    "hmdb51": list_hmdb51,
    "kinetics400": list_kinetics,
    "thumos14": list_thumos14,
    "folder": list_folder,
}


def list_dataset(source: str, root: str | Path, **options) -> tuple[DatasetListing, list[Missing]]:
    """Dispatch to the parser of `source` (see LISTERS); returns (listing, files annotated but missing)."""
    lister = LISTERS.get(source)
    if lister is None:
        raise VididiError(f"unknown dataset source '{source}' (known: {', '.join(sorted(LISTERS))})")
    accepted = list(inspect.signature(lister).parameters)[1:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise VididiError(f"unknown option(s) {unknown} for dataset source '{source}' (accepted: {accepted})")
    listing = lister(root, **options)
    return listing, listing.missing
