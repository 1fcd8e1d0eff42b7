"""The whole pipeline through a REAL Snakemake run on a tiny config (CPU, 2 cores, a few minutes at most).

generate -> manifest -> extract -> index -> pretrain base + ViDiDi (2 steps) -> features ->
retrieval / probe / detection -> attention -> summary -> figures, every rule a `vididi <stage>` process.
Then: nothing left to do; `snakemake --report` writes one self-contained HTML file embedding the figures
(byte for byte), their captions and the summary table; `--forcerun summary` redoes the summary and
what is drawn from it (the bars figure), nothing upstream.
"""

from __future__ import annotations

import base64
import csv
import re

import pytest
import yaml

from conftest import REPO, job_counts, snakemake
from vididi import names
from vididi.config import deep_update

DS = "synthetic"
RUNS = ["vicreg-base-small3d-s0", "vicreg-vididi-small3d-s0"]
FIGURES = ["derivatives", "tsne", "attention", "curves", "bars"]
METRIC_COLUMNS = ["R@1", "R@5", "R@10", "R@20", "R@50", "probe_top1", "probe_top5", "det_mAP@0.5", "det_mAP_mean",
                  "silhouette", "object_attention"]  # fmt: skip
RUN_STAGES = ["pretrain", "features", "retrieval", "probe", "detection", "attention"]  # log stem -> CLI stage
CLI_STAGE: dict[str, str] = {}


def e2e_config() -> dict:
    """The tests' tiny config, lighter still: 1 thread per job (2 jobs at once), one shard, 2 steps,
    2 videos per figure."""
    from conftest import TINY

    return deep_update(TINY, {
        "threads": 1,
        "datasets": {DS: {"extract": {"shard_size": 64}}},
        "pretrain": {"steps": 2, "checkpoint_every": 2},
        "figures": {"attention_videos": 2, "derivative_videos": 2},
    })  # fmt: skip






def figure_captions() -> dict[str, str]:
    """FIGURE_CAPTIONS of workflow/rules/common.smk (the text the report shows under each figure)."""
    text = (REPO / "workflow" / "rules" / "common.smk").read_text()
    block = text[text.index("FIGURE_CAPTIONS = {") :]
    block = block[: block.index("\n}") + 2]
    return dict(re.findall(r'^\s*"(\w+)": "(.*)",$', block, flags=re.M))


def embedded(html: str, filename: str, mime: str) -> bytes:
    """The bytes of a file the report embeds as a base64 data URI."""
    match = re.search(rf"data:{re.escape(mime)};charset=utf8;filename={re.escape(filename)};base64,([A-Za-z0-9+/=]+)", html)
    assert match, f"{filename} is not embedded in the report"
    return base64.b64decode(match.group(1))


@pytest.mark.slow
def test_snakemake_runs_the_whole_pipeline_reports_and_reruns_the_summary(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(e2e_config()))
    done = snakemake(tmp_path, "--cores", "2", timeout=540)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    # 23 jobs: generate, manifest, 1 extract, index, 2 pretrain, 2 features, 6 metrics, 2 analysis, summary,
    # 5 figures, all (the first plan, printed before the manifest checkpoint ran, cannot count the extracts)
    assert "23 of 23 steps (100%) done" in done.stderr, done.stderr[-3000:]
    results, data = tmp_path / "results" / DS, tmp_path / "data"

    # summary: both runs, every metric column filled
    with (results / "summary.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert set(METRIC_COLUMNS) <= set(reader.fieldnames)
    assert [(r["framework"], r["variant"], r["eval_dataset"]) for r in rows] == [("vicreg", "base", DS), ("vicreg", "vididi", DS)]
    for row in rows:
        for column in METRIC_COLUMNS:
            assert row[column] != "", (row["variant"], column)
        assert row["steps"] == "2" and float(row["pretrain_s"]) > 0 and float(row["eval_s"]) > 0  # Snakemake benchmarks
    md = (results / "summary.md").read_text()
    for column in METRIC_COLUMNS:
        assert f" {column} |" in md
    assert "| vicreg | base | small3d | synthetic | 1 |" in md and "| vicreg | vididi | small3d | synthetic | 1 |" in md
    assert "vididi − base" in md

    # figures and every rule's log, each ending in the stage's success line
    for name in FIGURES:
        assert (results / "figures" / f"{name}.png").stat().st_size > 0 and (results / "figures" / f"{name}.pdf").is_file()
    logs = {data / "logs" / DS / f"{stage}.log": stage for stage in ("generate", "manifest", "index")}
    logs[data / "logs" / DS / "extract-00000.log"] = "extract"
    for run in RUNS:
        for stem in RUN_STAGES:
            log = f"{stem}.log" if stem == "pretrain" else f"{stem}-{DS}.log"
            logs[results / "runs" / run / "logs" / log] = CLI_STAGE.get(stem, stem)
    logs[results / "logs" / "summary.log"] = "summary"
    for name in FIGURES:
        logs[results / "logs" / f"figure-{name}.log"] = "figures"
    for path, stage in logs.items():
        assert path.is_file(), path
        assert f"vididi {stage} done" in path.read_text(), (path, path.read_text()[-500:])
    assert not list(tmp_path.rglob(".*.tmp-*")), "temporary files of atomic writes left behind"

    again = snakemake(tmp_path, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]

    # the report: one self-contained HTML file
    report = tmp_path / "report.html"
    made = snakemake(tmp_path, "--report", str(report))
    assert made.returncode == 0, (made.stdout + made.stderr)[-3000:]
    html = report.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html), "the report loads something from the network"
    captions = figure_captions()
    assert sorted(captions) == sorted(names.FIGURES)  # label_efficiency: drawn with several label fractions only
    for name in FIGURES:
        assert captions[name] in html, name
        assert embedded(html, f"{name}.png", "image/png") == (results / "figures" / f"{name}.png").read_bytes()
    assert "Summary table of every run pretrained on this dataset" in html
    assert embedded(html, "summary.csv", "text/csv") == (results / "summary.csv").read_bytes()

    # --forcerun summary: the summary and the figure drawn from it, nothing upstream
    before = {p: p.stat().st_mtime_ns for p in [*results.rglob("*.pt"), *results.rglob("*.h5"), *results.rglob("*.json"),
                                                 *(results / "figures").glob("*.png")]}  # fmt: skip
    summary_time = (results / "summary.md").stat().st_mtime_ns
    forced = snakemake(tmp_path, "--cores", "2", "--forcerun", "summary", timeout=240)
    assert forced.returncode == 0, (forced.stdout + forced.stderr)[-3000:]
    assert job_counts(forced.stdout + forced.stderr) == {"summary": 1, "figure": 1, "all": 1}
    assert (results / "summary.md").stat().st_mtime_ns > summary_time
    changed = sorted(p.name for p, t in before.items() if p.stat().st_mtime_ns != t)
    assert changed == ["bars.png"], changed
