"""`vididi summary` (vididi/stages/summary.py) over hand-written metric files of 2 runs x 2 seeds.

The results tree is written here in the layout the pipeline uses
(results/<dataset>/runs/<run>/metrics/<stage>-<eval>.json, train_info.json, benchmarks/*.tsv), with
numbers chosen so that every mean, sample std (ddof=1) and difference below is worked out by hand.
"""

from __future__ import annotations

import csv
import json

import pytest

from vididi.config import attention_settings, eval_settings, find_run, index_settings, pretrain_settings, run_hash, settings_hash
from vididi.data.extract import INDEX_COLUMNS
from vididi.layout import shard_dir
from vididi.stages.summary import main as write_summary
from vididi.utils import VididiError

DS = "synthetic"
SEEDS = (0, 1)
# (variant, seed) -> stage -> metrics. Other keys of a metric file (e.g. mAP@0.3) are not summary columns.
METRICS = {
    ("base", 0): {
        "retrieval": {"R@1": 0.50, "R@5": 0.70, "R@10": 0.80, "R@20": 0.90, "R@50": 1.0},
        "probe": {"top1": 0.40, "top5": 0.90},
        "detection": {"mAP@0.3": 0.9, "mAP@0.5": 0.20, "mAP_mean": 0.10},
        "analysis": {"silhouette": 0.100, "object_attention": 0.30},
    },
    ("base", 1): {
        "retrieval": {"R@1": 0.60, "R@5": 0.70, "R@10": 0.90, "R@20": 0.90, "R@50": 1.0},
        "probe": {"top1": 0.50, "top5": 0.94},
        "detection": {"mAP@0.3": 0.9, "mAP@0.5": 0.30, "mAP_mean": 0.20},
        "analysis": {"silhouette": 0.140, "object_attention": 0.34},
    },
    ("vididi", 0): {
        "retrieval": {"R@1": 0.70, "R@5": 0.90, "R@10": 0.95, "R@20": 1.0, "R@50": 1.0},
        "probe": {"top1": 0.60, "top5": 1.00},
        "detection": {"mAP@0.3": 0.9, "mAP@0.5": 0.35, "mAP_mean": 0.30},
        "analysis": {"silhouette": 0.200, "object_attention": 0.50},
    },
    ("vididi", 1): {
        "retrieval": {"R@1": 0.80, "R@5": 0.80, "R@10": 0.95, "R@20": 1.0, "R@50": 1.0},
        "probe": {"top1": 0.64, "top5": 0.98},
        "detection": {"mAP@0.3": 0.9, "mAP@0.5": 0.45, "mAP_mean": 0.32},
        "analysis": {"silhouette": 0.260, "object_attention": 0.56},
    },
}
# Snakemake benchmark files (base runs only): a resumed job's file times only its last segment, so the
# table takes train_info.json's wall_seconds (the training's time summed over its segments) instead.
PRETRAIN_BENCHMARK = {("base", 0): 2.4, ("base", 1): 110.6}
WALL_SECONDS = {("base", 0): 99.0, ("base", 1): 109.0, ("vididi", 0): 120.0, ("vididi", 1): 130.0}  # train_info.json
EVAL_BENCHMARKS = {("base", 0): {"features": 2.0, "retrieval": 1.5}}  # the other runs: none -> eval_s empty

COLUMNS = ["framework", "variant", "backbone", "seed", "eval_dataset",
           "R@1", "R@5", "R@10", "R@20", "R@50", "probe_top1", "probe_top5", "det_mAP@0.5", "det_mAP_mean",
           "silhouette", "object_attention", "steps", "epochs", "pretrain_s", "eval_s"]  # fmt: skip
COLUMN_OF = {("retrieval", k): k for k in ("R@1", "R@5", "R@10", "R@20", "R@50")} | {
    ("probe", "top1"): "probe_top1", ("probe", "top5"): "probe_top5",
    ("detection", "mAP@0.5"): "det_mAP@0.5", ("detection", "mAP_mean"): "det_mAP_mean",
    ("analysis", "silhouette"): "silhouette", ("analysis", "object_attention"): "object_attention",
}  # fmt: skip

# summary.md, worked out by hand: percent columns x100 with 1 decimal, silhouette raw with 3;
# "mean ± sample std" over the 2 seeds (std of two values = |a - b| / sqrt(2)).
MD_ROWS = {
    "base": ["55.0 ± 7.1", "70.0 ± 0.0", "85.0 ± 7.1", "90.0 ± 0.0", "100.0 ± 0.0", "45.0 ± 7.1", "92.0 ± 2.8",
             "25.0 ± 7.1", "15.0 ± 7.1", "0.120 ± 0.028", "32.0 ± 2.8"],
    "vididi": ["75.0 ± 7.1", "85.0 ± 7.1", "95.0 ± 0.0", "100.0 ± 0.0", "100.0 ± 0.0", "62.0 ± 2.8", "99.0 ± 1.4",
               "40.0 ± 7.1", "31.0 ± 1.4", "0.230 ± 0.042", "53.0 ± 4.2"],
}  # fmt: skip
MD_PRETRAIN_S = {"base": "104", "vididi": "125"}  # means of 99, 109 and of 120, 130, rounded to whole seconds
MD_DIFF = ["+20.0", "+15.0", "+10.0", "+10.0", "+0.0", "+17.0", "+7.0", "+15.0", "+16.0", "+0.110", "+21.0"]


def run_name(variant: str, seed: int) -> str:
    return f"vicreg-{variant}-small3d-s{seed}"


CONTENT = "0123abcd"  # the data's content digest in the hand-written dataset.json


def write_data_index(config) -> None:
    """A dataset.json (and an empty index.tsv) with the stamps of this config's data settings."""
    folder = shard_dir(config, DS)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.tsv").write_text("\t".join(INDEX_COLUMNS) + "\n")
    settings = index_settings(config, DS)
    (folder / "dataset.json").write_text(json.dumps({"classes": ["a", "b"], "settings_hash": settings_hash(settings),
                                                     "settings": settings, "content": CONTENT}))  # fmt: skip


def run_stamp(config, variant: str, seed: int) -> dict:
    """What train_info.json records of the run's identity (config.run_hash)."""
    settings = pretrain_settings(config, find_run(config, DS, run_name(variant, seed)))
    return {"settings_hash": run_hash(settings, CONTENT), "settings": {**settings, "data_content": CONTENT}}


def metric_stamp(config, variant: str, seed: int, stage: str) -> dict:
    """What a metric file records of its settings and of the model it comes from."""
    settings = attention_settings(config, DS) if stage == "analysis" else eval_settings(config, DS)
    return {"config_hash": settings_hash(settings), "settings": settings,
            "inputs": {"run_hash": run_stamp(config, variant, seed)["settings_hash"]}}  # fmt: skip


def write_benchmark(path, seconds: float) -> None:
    """A Snakemake `benchmark:` file: a header and one row, seconds in column `s`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                    f"{seconds}\t0:01:40\t700.1\t3700.2\t690.3\t700.4\t0.0\t0.5\t80.0\t{seconds * 0.8}\n")  # fmt: skip


@pytest.fixture
def results(tmp_path):
    """(config, results dir) with the metric files, train_info.json and benchmarks written by hand."""
    from conftest import tiny_config

    config = tiny_config(tmp_path, runs=[
        {"dataset": DS, "framework": "vicreg", "variant": ["base", "vididi"], "backbone": "small3d", "seed": list(SEEDS)}])  # fmt: skip
    root = tmp_path / "results" / DS / "runs"
    write_data_index(config)
    for (variant, seed), stages in METRICS.items():
        base = root / run_name(variant, seed)
        for stage, metrics in stages.items():
            (base / "metrics").mkdir(parents=True, exist_ok=True)
            record = {"metrics": metrics, "protocol": {}, **metric_stamp(config, variant, seed, stage)}
            (base / "metrics" / f"{stage}-{DS}.json").write_text(json.dumps(record))
        epochs = {"epochs": 0.5} if variant == "vididi" else {}  # train_info.json before 0.2.0 has no epochs
        info = {"steps": 4, **epochs, "wall_seconds": WALL_SECONDS[(variant, seed)], **run_stamp(config, variant, seed)}
        (base / "train_info.json").write_text(json.dumps(info))
        if (variant, seed) in PRETRAIN_BENCHMARK:
            write_benchmark(base / "benchmarks" / "pretrain.tsv", PRETRAIN_BENCHMARK[(variant, seed)])
        for stage, seconds in EVAL_BENCHMARKS.get((variant, seed), {}).items():
            write_benchmark(base / "benchmarks" / f"{stage}-{DS}.tsv", seconds)
    return config, tmp_path / "results" / DS


def table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


def test_summary_csv_has_one_row_per_run_and_eval_dataset(results):
    config, out = results
    assert write_summary(config, DS) == out / "summary.csv"
    with (out / "summary.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert [(r["variant"], r["seed"]) for r in rows] == [("base", "0"), ("base", "1"), ("vididi", "0"), ("vididi", "1")]
    for row in rows:
        key = (row["variant"], int(row["seed"]))
        assert (row["framework"], row["backbone"], row["eval_dataset"], row["steps"]) == ("vicreg", "small3d", DS, "4")
        for (stage, metric), column in COLUMN_OF.items():
            assert float(row[column]) == METRICS[key][stage][metric], (key, column)
        assert float(row["pretrain_s"]) == WALL_SECONDS[key]  # train_info.json wins over a segment's benchmark
    assert [r["eval_s"] for r in rows] == ["3.5", "", "", ""]  # features 2.0 + retrieval 1.5; no benchmarks -> empty


def test_summary_markdown_mean_std_and_difference_rows(results):
    config, out = results
    write_summary(config, DS)
    md = (out / "summary.md").read_text()
    header = table_rows(md, "framework")
    metric_names = COLUMNS[5:16]
    assert header[0] == ["framework", "variant", "backbone", "eval_dataset", "seeds", *metric_names, "steps (epochs)", "pretrain s"]
    assert header[1] == ["framework", "backbone", "eval_dataset", "difference", *metric_names]
    rows = table_rows(md, "vicreg")
    means = [r for r in rows if r[1] in ("base", "vididi")]
    assert len(means) == 2
    for row in means:
        variant = row[1]
        assert row[:5] == ["vicreg", variant, "small3d", DS, "2"]
        assert row[5:-2] == MD_ROWS[variant], variant
        assert row[-2] == {"base": "4", "vididi": "4 (0.5)"}[variant]  # steps (epochs of the training videos)
        assert row[-1] == MD_PRETRAIN_S[variant]
    (diff,) = [r for r in rows if r[1] == "small3d"]
    assert diff[:4] == ["vicreg", "small3d", DS, "vididi − base"]
    assert diff[4:] == MD_DIFF


def test_summary_with_one_seed_shows_plain_means(tmp_path):
    from conftest import tiny_config

    config = tiny_config(tmp_path, runs=[{"dataset": DS, "framework": "vicreg", "variant": "base", "backbone": "small3d", "seed": 0}])
    base = tmp_path / "results" / DS / "runs" / run_name("base", 0)
    write_data_index(config)
    for stage, metrics in METRICS[("base", 0)].items():
        (base / "metrics").mkdir(parents=True, exist_ok=True)
        (base / "metrics" / f"{stage}-{DS}.json").write_text(json.dumps({"metrics": metrics, **metric_stamp(config, "base", 0, stage)}))
    (base / "train_info.json").write_text(json.dumps(run_stamp(config, "base", 0)))  # its identity only
    write_summary(config, DS)
    md = (tmp_path / "results" / DS / "summary.md").read_text()
    (row,) = table_rows(md, "vicreg")
    assert row[4:] == ["1", "50.0", "70.0", "80.0", "90.0", "100.0", "40.0", "90.0", "20.0", "10.0", "0.100", "30.0", "-", "-"]
    assert "Difference" not in md  # no ViDiDi run to compare with
    with (tmp_path / "results" / DS / "summary.csv").open(newline="") as f:
        (csv_row,) = list(csv.DictReader(f))
    assert csv_row["steps"] == csv_row["pretrain_s"] == csv_row["eval_s"] == ""  # no steps or times recorded, no benchmarks


def test_missing_metric_file_is_a_one_line_error_naming_it(results):
    config, out = results
    missing = out / "runs" / run_name("vididi", 1) / "metrics" / f"probe-{DS}.json"
    missing.unlink()
    with pytest.raises(VididiError) as excinfo:
        write_summary(config, DS)
    message = str(excinfo.value)
    assert str(missing) in message and "\n" not in message
    assert not (out / "summary.csv").exists() and not (out / "summary.md").exists()


def test_summary_markdown_says_where_when_and_by_which_code_runs_were_trained(results):
    config, out = results
    for i, info_path in enumerate(sorted(out.glob("runs/*/train_info.json"))):
        info = json.loads(info_path.read_text())
        info.update(machine="AMD EPYC, 2 cores; torch 2.14.1 AVX2", finished=f"2026-11-{28 + i % 2}", code="0.1.0+gabc")
        info_path.write_text(json.dumps(info))
    write_summary(config, DS)
    tail = (out / "summary.md").read_text().splitlines()[-3:]
    assert tail == ["- Trained on: AMD EPYC, 2 cores; torch 2.14.1 AVX2", "- Finished: 2026-11-28 .. 2026-11-29", "- Code: 0.1.0+gabc"]


def test_a_result_made_with_other_settings_is_refused_in_one_line(results):
    """A metric file written by a stage run by hand with `--set` (another probe C grid here) is not
    summarised under this config; nor is a row whose model was trained with other settings."""
    config, out = results
    path = out / "runs" / run_name("base", 1) / "metrics" / f"probe-{DS}.json"
    record = json.loads(path.read_text())
    other = {**record["settings"], "evaluation": {**record["settings"]["evaluation"], "probe": {"Cs": [1.0]}}}
    path.write_text(json.dumps({**record, "settings": other, "config_hash": settings_hash(other)}))
    with pytest.raises(VididiError) as excinfo:
        write_summary(config, DS)
    message = str(excinfo.value)
    assert message.startswith(f"{path} was made with other evaluation settings") and "evaluation.probe.Cs" in message, message
    assert "\n" not in message and not (out / "summary.csv").exists()

    path.write_text(json.dumps(record))  # back to this config's; now the model of another run is stale
    info_path = out / "runs" / run_name("vididi", 0) / "train_info.json"
    info = json.loads(info_path.read_text())
    info["settings"]["pretrain"]["steps"] = 3
    info["settings_hash"] = run_hash({k: v for k, v in info["settings"].items() if k != "data_content"}, CONTENT)
    info_path.write_text(json.dumps(info))
    with pytest.raises(VididiError, match=r"vididi-small3d-s0/checkpoints/final.pt was made with other settings .*pretrain.steps: 3 → 4"):
        write_summary(config, DS)


def test_a_result_computed_from_another_model_is_refused(results):
    """A metric file whose features came from another training of the run (inputs.run_hash)."""
    config, out = results
    path = out / "runs" / run_name("vididi", 1) / "metrics" / f"retrieval-{DS}.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "inputs": {"run_hash": "somethingelse"}}))
    with pytest.raises(VididiError, match=r"retrieval-synthetic.json was made with other model"):
        write_summary(config, DS)


def test_the_attention_share_comes_with_the_videos_it_averages_over(results):
    """All-zero Grad-CAM maps have no share and are left out, so each model's object_attention is a mean
    over its own videos: the table shows how many (attention_videos), as counts, not percentages."""
    config, out = results
    for seed, count in ((0, 90), (1, 94)):
        path = out / "runs" / run_name("base", seed) / "metrics" / f"analysis-{DS}.json"
        record = json.loads(path.read_text())
        record["metrics"]["object_attention_videos"] = count
        path.write_text(json.dumps(record))
    write_summary(config, DS)
    md = (out / "summary.md").read_text()
    header = table_rows(md, "framework")[0]
    column = header.index("attention_videos")
    rows = {r[1]: r for r in table_rows(md, "vicreg") if r[1] in ("base", "vididi")}
    assert rows["base"][column] == "92 ± 3" and rows["vididi"][column] == "-"  # std of 90, 94 = 2.83
