"""The online kNN monitor's R@1 (`pretrain.monitor_every`) of every run under a results folder, as a
Markdown table: one row per run, one column per asked step (the value logged at the last monitored
step at or before it), plus the last value and the step it was logged at.

    .venv/bin/python scripts/monitor_table.py results/byol-tuning/synthetic/runs --steps 100,300,1000,3000

It reads train_log.csv only (column `monitor_R@1`), so it also shows runs that are still training.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

COLUMN = "monitor_R@1"  # vididi.ssl.monitor.COLUMN (not imported: this script needs no torch)


def monitored(path: Path) -> list[tuple[int, float]]:
    """(step + 1, R@1 in %) of each monitored row: the monitor runs after the step it is logged at."""
    with path.open() as f:
        return [(int(r["step"]) + 1, 100 * float(r[COLUMN])) for r in csv.DictReader(f) if r.get(COLUMN)]


def table(runs_dir: Path, steps: list[int]) -> str:
    lines = ["| run | " + " | ".join(f"step {s}" for s in steps) + " | last (step) |",
             "|---|" + "---|" * (len(steps) + 1)]  # fmt: skip
    for log in sorted(runs_dir.glob("*/train_log.csv")):
        values = monitored(log)
        if not values:
            continue
        cells = []
        for s in steps:
            before = [v for step, v in values if step <= s]
            cells.append(f"{before[-1]:.1f}" if before and values[-1][0] >= s else "-")
        cells.append(f"{values[-1][1]:.1f} ({values[-1][0]})")
        lines.append(f"| {log.parent.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, help="a results/<...>/<dataset>/runs folder")
    parser.add_argument("--steps", default="300", help="comma-separated steps (default 300)")
    args = parser.parse_args()
    print(table(args.runs_dir, [int(s) for s in args.steps.split(",")]), end="")


if __name__ == "__main__":
    main()
