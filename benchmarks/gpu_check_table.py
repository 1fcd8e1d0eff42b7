"""The one table of benchmarks/gpu_check.sh, from the JSON files its parts wrote (a part that failed,
timed out or did not run is marked so). Markdown, with the machine, date, commit and threads.

    python benchmarks/gpu_check_table.py OUTDIR DEVICE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TRAINER_SHARE_TARGET = 0.90  # the trainer at >= 90% of the compiled bare step
H200_TRAINER_TARGET = 1230  # clips/s: 90% of the 1,368 clips/s compiled bare step measured on an H200


def load(out: Path, name: str):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def status(out: Path, name: str) -> str:
    rc_file = out / f"{name}.rc"
    if not rc_file.is_file():
        return "not run"
    rc = int(rc_file.read_text())
    seconds = (out / f"{name}.seconds").read_text().strip()
    if rc == 0:
        return f"ok ({seconds} s)"
    return f"TIMED OUT ({seconds} s)" if rc == 124 else f"FAILED (exit {rc}, {seconds} s; see {name}.txt)"


def main(out: Path, device: str) -> str:
    rows = []

    def row(part: str, what: str, figure: str, target: str = "", verdict: str = "") -> None:
        rows.append(f"| {part} | {what} | {figure} | {target} | {verdict} |")

    train = load(out, "train")
    if train:
        rates = train["clips_per_s"]
        for name in ("bare", "bare compiled", "trainer", "trainer compiled"):
            if name in rates:
                row("train", f"{name} step, clips/s ({train['backbone']}, batch {train['batch']})", f"{rates[name]:.0f}")
        if "trainer compiled" in rates:
            share = rates["trainer compiled"] / rates["bare compiled"]
            ok = share >= TRAINER_SHARE_TARGET
            row("train", "compiled trainer / compiled bare step", f"{100 * share:.1f}%", ">= 90%", "PASS" if ok else "MISS")
            h200 = rates["trainer compiled"] >= H200_TRAINER_TARGET
            row("train", "compiled trainer, clips/s", f"{rates['trainer compiled']:.0f}", ">= 1,230 (H200)",
                ("PASS" if h200 else "MISS") + " (if this is an H200)")
    row("train", "part", status(out, "train"))

    data = load(out, "data")
    if data:
        for enc, r in data.items():
            row("data", f"{enc} shards: loader path / device path, samples/s",
                f"{r['loader_samples_per_s']:.0f} / {r['device_samples_per_s']:.0f} "
                f"({r['device_samples_per_s'] / r['loader_samples_per_s']:.2f}x)")
            row("data", f"{enc} shards: device augmentation of one batch, ms of device time", f"{r['device_augment_ms_per_batch']:.1f}")
            ok = r["max_grey_levels"] <= 1
            row("data", f"{enc} shards: device path vs loader path clips, same draws",
                f"max {r['max_grey_levels']:.0f} grey levels, {100 * r['share_differing']:.1f}% of values differ", "<= 1 grey level",
                "PASS" if ok else "MISS" + (" (nvJPEG vs libjpeg-turbo)" if enc == "jpeg" else ""))
    row("data", "part", status(out, "data"))

    probe = load(out, "probe")
    if probe:
        for r in probe:
            peak = f", device peak {r['device_peak_bytes'] / 2**30:.1f} GiB" if r.get("device_peak_bytes") else ""
            row("probe", f"torch probe, whole protocol (7 C + refit), N={r['n']}",
                f"{r['seconds']:.1f} s, top-1 {r['top1']:.3f}, C={r['C']:g}{peak}", "hours, not days")
    row("probe", "part", status(out, "probe"))

    retrieval = load(out, "retrieval")
    if retrieval:
        for r in retrieval:
            t = r["tiled"]
            peak = f", device peak {t['device_peak_bytes'] / 2**30:.1f} GiB" if t.get("device_peak_bytes") else ""
            row("retrieval", f"{r['queries']} queries x {r['gallery']} gallery, {device}", f"{t['seconds']:.1f} s{peak}")
    row("retrieval", "part", status(out, "retrieval"))
    ref, dev = load(out, "retrieval_ranks_ref"), load(out, "retrieval_ranks_dev")
    if ref and dev:
        same = ref[0]["tiled"]["ranks_sha"] == dev[0]["tiled"]["ranks_sha"]
        row("retrieval", f"ranks on {device} = ranks on the CPU ({ref[0]['gallery']} gallery)", "identical" if same else "DIFFERENT",
            "identical", "PASS" if same else "MISS")
    if (out / "finetune.rc").is_file():
        row("finetune", "one epoch of a tiny config (bench_finetune.py --quick)", status(out, "finetune"))
    else:
        row("finetune", "benchmarks/bench_finetune.py", "absent: not run")

    env = (out / "env.txt").read_text().splitlines() if (out / "env.txt").is_file() else []
    total = (out / "total.seconds").read_text().strip() if (out / "total.seconds").is_file() else "?"
    head = [line for line in env if line.split(":")[0] in ("date", "commit", "mode", "machine", "torch", "gpu")]
    missing = [line.split()[1].rstrip(":") for line in env if line.endswith("MISSING")]
    lines = ["# vididi GPU check", "", *[f"- {line}" for line in head], f"- total wall time: {total} s (target < 480 s)"]
    if missing:
        lines.append(f"- modules missing: {', '.join(missing)}")
    lines += ["", "| part | what | measured | target | verdict |", "|---|---|---|---|---|", *rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "cuda"))
