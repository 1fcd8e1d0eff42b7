"""`vididi summary`: results/<dataset>/summary.csv and summary.md for the runs pretrained on <dataset>.

summary.csv: one row per run and evaluation dataset (framework, variant, backbone, seed, Recall@k,
probe top-1/top-5, detection mAP@0.5 and the mean over tIoUs, analysis numbers when present,
training steps, wall times). summary.md: the same aggregated over seeds (mean +/- std when there are
several), then, for each framework x backbone, every variant's difference to the baseline variant
(`figures.baseline`, default `base`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .. import config as cfgmod
from .. import layout, stamps
from ..evaluation.inputs import require_current_run, stage_settings
from ..utils import VididiError, write_text

METRIC_COLUMNS = {  # metric file stem (layout.metrics_stem) -> (metric key -> column)
    "retrieval": {"R@1": "R@1", "R@5": "R@5", "R@10": "R@10", "R@20": "R@20", "R@50": "R@50",
                  "target_R@1": "target_R@1"},  # BYOL's EMA target, with evaluation.target_encoder only
    "probe": {"top1": "probe_top1", "top5": "probe_top5", "target_top1": "target_probe_top1"},
    "detection": {"mAP@0.5": "det_mAP@0.5", "mAP_mean": "det_mAP_mean"},
    "analysis": {"silhouette": "silhouette", "object_attention": "object_attention",
                 "object_attention_uniform": "attention_uniform",
                 # the test videos the share averages over (all-zero maps have no share and are left out)
                 "object_attention_videos": "attention_videos"},
    "finetune": {"top1": "finetune_top1", "top5": "finetune_top5"},  # evaluation.finetune only
}
# With part of the labels (evaluation.label_fractions): top-1 only, the column named <column>@<fraction>.
FRACTION_COLUMNS = {"probe": "probe_top1", "finetune": "finetune_top1"}
# Columns that only mean something under a setting (the chance level of the probe-logit attention share;
# configs/legacy-protocol.yaml turns it off, and the table keeps its pre-0.1.0 columns).
OPT_IN_COLUMNS = {"attention_uniform": lambda config: config["analysis"]["cam_target"] != "feature_norm"}
KEY_COLUMNS = ["framework", "variant", "backbone", "seed", "eval_dataset"]
COST_COLUMNS = ["steps", "epochs", "pretrain_s", "eval_s"]


def _read_metrics(path: Path, expected_settings, run_hash: str) -> dict:
    """A metric file's numbers, after checking its stamps: made with this config's settings for its
    stage, from the model this config asks for (vididi/stamps.py)."""
    if not path.is_file():
        raise VididiError(f"{path} not found: run its stage first")
    record = stamps.read_json_stamp(path)
    stamps.require(path, record.get("config_hash"), cfgmod.settings_hash(expected_settings), record.get("settings"),
                   expected_settings, what="evaluation settings")  # fmt: skip
    stamps.require(path, record.get("inputs", {}).get("run_hash"), run_hash, what="model (run hash)")
    return record["metrics"]


def _benchmark_seconds(path: Path) -> float | None:
    """Wall seconds from a Snakemake `benchmark:` file (None when the stage ran outside Snakemake)."""
    if not path.is_file():
        return None
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    return float(rows[0]["s"]) if rows else None


def collect_rows(config: dict, dataset: str) -> list[dict]:
    """One row per run and evaluation dataset; a result made with other settings than the config's (a
    stage run by hand, an older version, another thread count) is refused with one line."""
    rows, stale = [], []
    for run in cfgmod.expand_runs(config):
        if run.dataset != dataset:
            continue
        try:
            rows += _run_rows(config, run)
        except VididiError as exc:
            stale.append(str(exc))
    if stale:
        more = f" (and {len(stale) - 1} more runs with results that do not match this config)" if len(stale) > 1 else ""
        raise VididiError(stale[0] + more)
    if not rows:
        raise VididiError(f"no runs pretrained on {dataset} in the config")
    return rows


def _run_rows(config: dict, run: cfgmod.Run) -> list[dict]:
    """The rows of one run, its final.pt and metric files checked against the config."""
    rows = []
    run_hash = require_current_run(config, run)
    info_path = layout.train_info(config, run)
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    # train_info.json sums the segments of a resumed training; the job's benchmark file times only the last
    pretrain_s = info.get("wall_seconds") or _benchmark_seconds(layout.run_benchmark(config, run, "pretrain"))
    for eval_dataset in run.eval_datasets:
        row = {"framework": run.framework, "variant": run.variant, "backbone": run.backbone,
               "seed": run.seed, "eval_dataset": eval_dataset}  # fmt: skip
        evaluations = [(s, f) for s, e, f in cfgmod.run_evaluations(config, run) if e == eval_dataset]
        stages = [s for s, f in evaluations if f == 1.0 and s != "finetune"]
        eval_s = 0.0
        for stage, fraction in evaluations:
            path = layout.metrics_file(config, run, stage, eval_dataset, fraction)
            metrics = _read_metrics(path, stage_settings(config, run, stage, eval_dataset, fraction), run_hash)
            if fraction < 1.0:
                row[f"{FRACTION_COLUMNS[stage]}@{cfgmod.format_fraction(fraction)}"] = metrics["top1"]
                continue
            for key, column in METRIC_COLUMNS[layout.metrics_stem(stage)].items():
                if key in metrics and OPT_IN_COLUMNS.get(column, lambda _: True)(config):
                    row[column] = metrics[key]
            if stage == "finetune":  # its training time, summed over the segments of a resumed job
                row["finetune_s"] = json.loads(path.read_text()).get("protocol", {}).get("seconds")
        for stage in ["features", *stages]:
            eval_s += _benchmark_seconds(layout.run_benchmark(config, run, f"{stage}-{eval_dataset}")) or 0.0
        row.update(steps=info.get("steps"), epochs=info.get("epochs"), pretrain_s=pretrain_s, eval_s=round(eval_s, 1) or None)
        row.update(_provenance={k: info.get(k) for k in ("machine", "finished", "code")})
        rows.append(row)
    return rows


def _metric_columns(rows: list[dict]) -> list[str]:
    ordered = [c for stage in METRIC_COLUMNS.values() for c in stage.values()]
    ordered += sorted({c for r in rows for c in r if c.split("@")[0] in FRACTION_COLUMNS.values() and "@" in c},
                      key=lambda c: (list(FRACTION_COLUMNS.values()).index(c.split("@")[0]), float(c.split("@")[1])))  # fmt: skip
    return [c for c in ordered if any(c in r for r in rows)]


def _cost_columns(rows: list[dict]) -> list[str]:
    return COST_COLUMNS + (["finetune_s"] if any(r.get("finetune_s") is not None for r in rows) else [])


def main(config: dict, dataset: str) -> Path:
    """Write summary.csv and summary.md of the runs pretrained on `dataset`; return the csv."""
    rows = collect_rows(config, dataset)
    metrics = _metric_columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=KEY_COLUMNS + metrics + _cost_columns(rows), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(layout.summary_file(config, dataset, ".csv"), buf.getvalue())
    text = markdown(rows, metrics, config["figures"]["baseline"], dataset)
    write_text(layout.summary_file(config, dataset, ".md"), text + "".join(f"{line}\n" for line in scene_overlap_lines(config, rows)))
    return layout.summary_file(config, dataset, ".csv")


def _group(rows: list[dict], keys: list[str]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups


def _fmt(values: list[float], column: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    scale, digits = _scale(column)
    mean = scale * float(np.mean(values))
    if len(values) > 1:
        return f"{mean:.{digits}f} ± {scale * float(np.std(values, ddof=1)):.{digits}f}"
    return f"{mean:.{digits}f}"


RAW_COLUMNS = {"silhouette": 3, "attention_videos": 0}  # not percentages: the decimals they are shown with


def _scale(column: str) -> tuple[float, int]:
    """(factor, decimals) of a column in summary.md: percentages x100 with 1 decimal, raw scores as they are."""
    return (1.0, RAW_COLUMNS[column]) if column in RAW_COLUMNS else (100.0, 1)


def markdown(rows: list[dict], metrics: list[str], baseline: str, dataset: str) -> str:
    keys = ["framework", "variant", "backbone", "eval_dataset"]
    lines = [f"# Results: pretrained on {dataset}", "",
             "Metrics in % (silhouette: raw score; attention_videos: the test videos the attention share averages over); "
             "mean ± std over seeds when there are several.", "",
             "| " + " | ".join(keys + ["seeds"] + metrics + ["steps (epochs)", "pretrain s"]) + " |",
             "|" + "---|" * (len(keys) + len(metrics) + 3)]  # fmt: skip
    groups = _group(rows, keys)
    for key, members in groups.items():
        cells = [str(k) for k in key] + [str(len(members))]
        cells += [_fmt([m.get(c) for m in members], c) for c in metrics]
        cells.append(_budget(members))
        seconds = [m["pretrain_s"] for m in members if m.get("pretrain_s") is not None]
        cells.append(f"{np.mean(seconds):.0f}" if seconds else "-")
        lines.append("| " + " | ".join(cells) + " |")
    diffs = []
    for (framework, variant, backbone, eval_dataset), members in groups.items():
        base = groups.get((framework, baseline, backbone, eval_dataset))
        if variant == baseline or base is None:
            continue
        cells = [framework, backbone, eval_dataset, f"{variant} − {baseline}"]
        for c in metrics:
            a = [m.get(c) for m in members if m.get(c) is not None]
            b = [m.get(c) for m in base if m.get(c) is not None]
            scale, digits = _scale(c)
            cells.append(f"{scale * (np.mean(a) - np.mean(b)):+.{digits}f}" if a and b else "-")
        diffs.append("| " + " | ".join(cells) + " |")
    if diffs:
        lines += ["", f"## Difference to the baseline variant `{baseline}` (means over seeds; points)", "",
                  "| framework | backbone | eval_dataset | difference | " + " | ".join(metrics) + " |",
                  "|" + "---|" * (4 + len(metrics)), *diffs]  # fmt: skip
    lines += _label_efficiency_lines(groups, metrics)
    return "\n".join(lines + _provenance_lines(rows)) + "\n"


def _budget(members: list[dict]) -> str:
    """The training budget of a group of runs: steps, and epochs of the training videos when known."""
    budgets = sorted({(m.get("steps"), m.get("epochs")) for m in members if m.get("steps") is not None})
    return ", ".join(f"{steps} ({epochs:g})" if epochs is not None else str(steps) for steps, epochs in budgets) or "-"


def scene_overlap_lines(config: dict, rows: list[dict]) -> list[str]:
    """For evaluation datasets with class scenes (synthetic scene_bias or out-of-context twins): how many
    test videos show the exact background of a training video (synthetic.scene_overlap)."""
    from ..data.synthetic import scene_overlap

    cells = []
    for name in dict.fromkeys(r["eval_dataset"] for r in rows):
        ds = config["datasets"][name]
        if ds["source"] != "synthetic" or not (ds["synthetic"]["scene_bias"] > 0 or ds["split"] == "3"):
            continue
        counts = scene_overlap(ds["synthetic"], ds["seed"], ds["split"])
        cells.append(f"{name} ({ds['synthetic']['scenes']} scenes, split {ds['split']}) {counts['shared']} of {counts['test_videos']} "
                     f"({100 * counts['share']:.1f}%; same class {counts['same_class']}, other class {counts['other_class']})")
    return ["- Test videos showing the exact background of a training video: " + "; ".join(cells)] if cells else []
def run_label(framework: str, variant: str) -> str:
    """A row's name in the label-efficiency table: the random encoder fine-tuned is the scratch baseline."""
    return "random init (scratch)" if framework == cfgmod.NO_TRAINING else f"{framework} {variant}"


def _label_efficiency_lines(groups: dict[tuple, list[dict]], metrics: list[str]) -> list[str]:
    """Top-1 of the linear probe and of fine-tuning at each label fraction, one row per run group
    (only when there is fine-tuning or more than one fraction)."""
    columns = [c for c in metrics if c.split("@")[0] in FRACTION_COLUMNS.values()]
    if not any("@" in c or c.startswith("finetune") for c in columns):
        return []
    columns.sort(key=lambda c: (list(FRACTION_COLUMNS.values()).index(c.split("@")[0]), -float(c.split("@")[1]) if "@" in c else -1.0))
    names = [("probe" if c.startswith("probe") else "fine-tune") + " top-1 " + (f"@ {c.split('@')[1]}" if "@" in c else "@ 1")
             for c in columns]  # fmt: skip
    lines = ["", "## Label efficiency: linear probe and fine-tuning (top-1 %, mean ± std over seeds)", "",
             "The `random` encoder probed is the untrained floor; fine-tuned, it is the scratch baseline (the same "
             "network and budget from random initialisation). `@ f`: trained on a share f of the labelled train videos "
             "per class, the same videos for every run.", "",
             "| run | backbone | eval_dataset | seeds | " + " | ".join(names) + " | fine-tune s |",
             "|" + "---|" * (5 + len(columns))]  # fmt: skip
    for (framework, variant, backbone, eval_dataset), members in groups.items():
        cells = [run_label(framework, variant), backbone, eval_dataset, str(len(members))]
        cells += [_fmt([m.get(c) for m in members], True) for c in columns]
        seconds = [m["finetune_s"] for m in members if m.get("finetune_s") is not None]
        cells.append(f"{np.mean(seconds):.0f}" if seconds else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _provenance_lines(rows: list[dict]) -> list[str]:
    """Where and when the runs were trained, and by which code (from their train_info.json): training
    is bit-reproducible on one machine, but float rounding differs between CPUs, so numbers move."""
    seen = {key: sorted({str(r["_provenance"][key]) for r in rows if r.get("_provenance", {}).get(key)})
            for key in ("machine", "finished", "code")}  # fmt: skip
    if not any(seen.values()):
        return []
    finished = " .. ".join(dict.fromkeys([seen["finished"][0], seen["finished"][-1]])) if seen["finished"] else "-"
    return ["", "- Trained on: " + (" | ".join(seen["machine"]) or "-"), f"- Finished: {finished}",
            "- Code: " + (", ".join(seen["code"]) or "-")]  # fmt: skip
