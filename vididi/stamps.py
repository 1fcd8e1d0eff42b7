"""Stamps: each output records the hash of the settings it was made with, and every stage checks the
stamps of its inputs before it uses them.

Snakemake re-runs a job when its rule's settings hash (a parameter) changed, but it cannot see an
output that was replaced outside it: a stage run by hand with `--set`, an older version's file, a
copy from another machine. So the outputs carry their own record:

    manifest.json, dataset.json   `settings_hash`, `settings` (dataset.json also `content`: a digest
                                  of every frame, which the runs' identity includes)
    shard-NNNNN.h5                attrs `settings_hash` (the manifest's)
    final.pt, last.pt,            `settings_hash` = config.run_hash(settings, data content)
      train_info.json             (+ `settings`)
    features/<E>.h5               attrs `settings_hash` (evaluation settings + the data's content),
                                  `run_hash` (the final.pt it was computed from)
    metrics/*.json                `config_hash` (the stage's settings), `inputs.run_hash`

and a consumer that finds a stamp other than the one the config asks for stops with one line naming
the file, what differs, and how to remake it. The summary does the same for every row. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .utils import VididiError

ARROW = "→"


def differences(recorded: Any, expected: Any, prefix: str = "") -> list[str]:
    """The settings that differ, as `key.sub: recorded → expected` (nested mappings by dotted key)."""
    if isinstance(recorded, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(recorded) | set(expected), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in recorded:
                out.append(f"{name}: (none) {ARROW} {_short(expected[key])}")
            elif key not in expected:
                out.append(f"{name}: {_short(recorded[key])} {ARROW} (none)")
            else:
                out += differences(recorded[key], expected[key], name)
        return out
    if isinstance(recorded, list) and isinstance(expected, list) and len(recorded) == len(expected):
        return [d for i, (a, b) in enumerate(zip(recorded, expected)) for d in differences(a, b, f"{prefix}[{i}]")]
    return [] if recorded == expected else [f"{prefix or 'settings'}: {_short(recorded)} {ARROW} {_short(expected)}"]


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def require(path: str | Path, recorded_hash: Any, expected_hash: str, recorded: Any = None, expected: Any = None,
            what: str = "settings") -> None:  # fmt: skip
    """Stop with one line unless `path` was made with `expected_hash` (the config's settings).

    `recorded` / `expected` are the settings behind the two hashes, when known: the line then names the
    keys that differ, e.g. `pretrain.steps: 3 → 6`."""
    if recorded_hash == expected_hash:
        return
    changes = differences(recorded, expected) if recorded is not None and expected is not None else []
    if not changes:
        changes = [f"{what} {recorded_hash or '(not recorded)'} {ARROW} {expected_hash}"]
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    raise VididiError(f"{path} was made with other {what} than this config's ({shown}): remake it with "
                      f"`snakemake --forcerun {path}`, or delete it")  # fmt: skip


def read_json_stamp(path: str | Path) -> dict:
    """A JSON output's record (manifest.json, dataset.json, train_info.json, metric files)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VididiError(f"{path}: unreadable ({exc}); remake it with `snakemake --forcerun {path}`") from exc
