"""Fine-tuning, label efficiency, external encoders in and exported encoders out, on the tiny dataset.

What is checked, and against what:
- `label_subset`: per-class counts worked out by hand (round half up, at least one video), the same
  subset on every call and for every run (the probe and fine-tuning of two runs record one digest),
  another one for another label seed;
- the linear probe at a label fraction fits exactly the subset (n_train) and writes under labels-<f>/;
  the settings of the outputs that existed before (features, metrics) ignore the new keys;
- an exported r3d_18 encoder loads into torchvision.models.video.r3d_18 with strict=True once fc.* is
  added, and torchvision's network computes the same features;
- `vididi.load_encoder` on an export gives the features stage's features exactly (BatchNorm recalibrated);
- an external run of an export evaluates to exactly the run's own metrics, every stage (retrieval,
  probe, detection, attention, fine-tuning, label fractions);
- bare torchvision-format state dicts import (fc.* ignored); keys that do not fit give one line that
  lists them;
- fine-tuning lowers its loss, and a `vididi finetune` killed with SIGKILL resumes to the weights of an
  uninterrupted run, bit for bit (dropout on); a half-finished one is set aside when the run's weights
  change (its resume key holds the pretraining settings, its metric file's settings do not);
- `vididi --version`; CITATION.cff cites the paper and this version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO, job_counts, snakemake, tiny_config
from vididi import config as vc
from vididi import layout
from vididi.evaluation.labels import label_subset
from vididi.stages import attention, detection, features, finetune, pretrain, probe, retrieval
from vididi.stages import export as export_stage
from vididi.utils import VididiError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DS = "synthetic"
FINETUNE = {"steps": 6, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2}
STAGES = (retrieval, probe, detection, attention)


def make_config(workdir, tiny_data, runs: list[dict], **overrides) -> dict:
    from vididi.config import deep_update

    defaults = {"data_dir": tiny_data[0]["data_dir"], "device": "cpu", "threads": 1, "runs": runs,
                "pretrain": {"steps": 4, "num_workers": 0}, "finetune": FINETUNE}  # fmt: skip
    return tiny_config(workdir, **deep_update(defaults, overrides))


def evaluate(config: dict, run: vc.Run) -> None:
    """Every evaluation the config asks of `run`, in process."""
    pretrain.main(config, run)
    features.main(config, run, DS)
    for stage, eval_dataset, fraction in vc.run_evaluations(config, run):
        module = {"retrieval": retrieval, "probe": probe, "detection": detection, "attention": attention, "finetune": finetune}[stage]
        module.main(config, run, eval_dataset, *([fraction] if stage in ("probe", "finetune") else []))


def protocol(config: dict, run: vc.Run, stage: str, fraction: float) -> dict:
    return json.loads(layout.metrics_file(config, run, stage, DS, fraction).read_text())["protocol"]


# --------------------------------------------------------------------------------------------------
# label subsets


def test_label_subset_keeps_a_rounded_share_of_every_class_and_at_least_one():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1 + [3] * 20)
    rng = np.random.default_rng(5)
    labels = labels[rng.permutation(labels.size)]  # classes interleaved, as in an index
    for fraction, counts in ((0.1, [1, 1, 1, 2]), (0.5, [5, 2, 1, 10]), (0.25, [3, 1, 1, 5])):  # round half up
        kept = label_subset(labels, fraction, seed=0)
        assert list(kept) == sorted(set(kept.tolist())) and kept.max() < labels.size
        assert [int(np.sum(labels[kept] == c)) for c in range(4)] == counts, fraction
    assert np.array_equal(label_subset(labels, 0.1, 0), label_subset(labels.copy(), 0.1, 0))  # a pure function
    assert not np.array_equal(label_subset(labels, 0.5, 0), label_subset(labels, 0.5, 1))  # the seed matters
    assert np.array_equal(label_subset(labels, 1.0, 3), np.arange(labels.size))
    with pytest.raises(VididiError, match="label fraction"):
        label_subset(labels, 0.0, 0)


def test_new_evaluation_keys_leave_the_existing_outputs_settings_alone(tmp_path):
    default = tiny_config(tmp_path)
    changed = tiny_config(tmp_path, evaluation={"finetune": True, "label_fractions": [0.1, 0.5], "label_seed": 3})
    run = vc.expand_runs(default)[0]
    assert vc.evaluation_settings(default) == vc.evaluation_settings(changed)
    assert not set(vc.LABEL_EFFICIENCY_KEYS) & set(vc.evaluation_settings(default))
    assert vc.eval_settings(default, DS) == vc.eval_settings(changed, DS)  # what the metric files record
    assert vc.pretrain_settings(default, run) == vc.pretrain_settings(changed, run)
    assert vc.label_fractions(default) == [1.0] and vc.label_fractions(changed) == [0.1, 0.5, 1.0]
    assert vc.run_evaluations(default, run) == [(s, DS, 1.0) for s in ("retrieval", "probe", "detection", "attention")]


# --------------------------------------------------------------------------------------------------
# one pretrained run, its export, and an external run of the export


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_data):
    """(config, source run, external run, random run): all evaluated, the source exported first."""
    workdir = tmp_path_factory.mktemp("exported")
    source = vc.Run(DS, "vicreg", "vididi", "small3d", 0, (DS,))
    base = tiny_config(workdir, data_dir=tiny_data[0]["data_dir"])
    checkpoint = str(layout.export_file(base, source))
    config = make_config(workdir, tiny_data, [
        {"dataset": DS, "framework": "vicreg", "variant": "vididi", "seed": 0},
        {"dataset": DS, "framework": "random", "variant": "base", "seed": 0},
        {"dataset": DS, "framework": "external", "variant": "vididi", "checkpoint": checkpoint, "seed": 0},
    ], evaluation={"finetune": True, "label_fractions": [0.5, 1.0]})  # fmt: skip
    source, scratch, external = vc.expand_runs(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests' own computations (one_torch_thread), for bitwise comparisons
    try:
        for run in (source, scratch):
            evaluate(config, run)
        export_stage.main(config, source)
        evaluate(config, external)
    finally:
        torch.set_num_threads(threads)
    return config, source, external, scratch


def test_external_run_of_an_export_evaluates_exactly_as_the_run(exported):
    config, source, external, _ = exported
    evaluations = vc.run_evaluations(config, source)
    assert {(s, f) for s, _, f in evaluations} >= {("finetune", 1.0), ("finetune", 0.5), ("probe", 0.5), ("attention", 1.0)}
    assert vc.run_evaluations(config, external) == evaluations
    for stage, eval_dataset, fraction in evaluations:
        own = layout.read_metrics(layout.metrics_file(config, source, stage, eval_dataset, fraction))
        theirs = layout.read_metrics(layout.metrics_file(config, external, stage, eval_dataset, fraction))
        assert own == theirs, (stage, fraction, own, theirs)
    final = torch.load(layout.final_checkpoint(config, external), map_location="cpu", weights_only=True)
    assert final["steps"] == 0 and json.loads(final["source"])["kind"] == "export" and final["scaling"] == "dataset"
    # the external run's settings follow the export's, so a re-export with other settings re-imports it
    assert vc.pretrain_settings(config, external)["checkpoint"]["export_of"] == vc.export_settings(config, source)


def test_the_card_describes_the_export(exported):
    config, source, _, _ = exported
    path = layout.export_file(config, source)
    card = json.loads(layout.export_card(path).read_text())
    assert card["format"] == vc.EXPORT_FORMAT and card["sha256"] == vc.file_digest(path)
    assert card["backbone"] == {"name": "small3d", "widths": [4, 8, 8, 16]}
    stats = json.loads(torch.load(layout.final_checkpoint(config, source), weights_only=True)["stats"])
    assert card["normalisation"]["mean"] == stats["mean"] and card["normalisation"]["sigma"] == stats["sigma"]
    assert card["batchnorm"]["bn_recalibrated"] is True
    assert card["metrics"][DS]["probe"] == layout.read_metrics(layout.metrics_file(config, source, "probe", DS))
    assert set(card["metrics"][DS]) >= {"retrieval", "probe", "detection", "analysis", "finetune", "probe@0.5", "finetune@0.5"}
    assert card["settings_hash"] == vc.settings_hash(vc.export_settings(config, source))
    assert card["provenance"]["training"]["steps"] == 4 and card["provenance"]["export"]["code"]
    assert card["provenance"]["data"]["stats"]["mean"] == stats["mean"]
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_load_encoder_gives_the_features_of_the_features_stage(exported):
    import vididi
    from vididi.data.loader import EvalClips, loader
    from vididi.data.shards import DatasetIndex

    config, source, _, _ = exported
    encoder = vididi.load_encoder(layout.export_file(config, source))
    index = DatasetIndex.for_dataset(config, DS)
    clips_cfg = config["datasets"][DS]["clips"]
    stored = layout.read_features(layout.features_file(config, source, DS))["test"]
    k, batch = clips_cfg["eval_clips"], config["evaluation"]["batch_size"]
    ours = [encoder(clips.flatten(0, 1)).view(len(clips), k, -1).mean(dim=1).numpy()
            for clips, _, _ in loader(EvalClips(index, index.select("test"), clips_cfg), 0, batch_size=batch // k)]  # fmt: skip
    assert np.array_equal(np.concatenate(ours), stored["features"])
    # the export holds the recalibrated statistics: final.pt's own (as trained) give other features
    as_trained = vididi.load_encoder(layout.final_checkpoint(config, source))
    assert {k: as_trained.stats[k] for k in ("mean", "sigma")} == encoder.stats
    assert as_trained.scaling == encoder.scaling == "dataset"
    first, *_ = loader(EvalClips(index, index.select("test"), clips_cfg), 0, batch_size=1)
    assert not torch.equal(as_trained(first[0].flatten(0, 1)), encoder(first[0].flatten(0, 1)))


def test_every_run_and_both_protocols_use_the_same_label_subset(exported):
    config, source, external, scratch = exported
    digests = {(run.name, stage): protocol(config, run, stage, 0.5)["label_subset"]
               for run in (source, external, scratch) for stage in ("probe", "finetune")}  # fmt: skip
    assert len({json.dumps(d, sort_keys=True) for d in digests.values()}) == 1, digests
    n = digests[(source.name, "probe")]["videos"]
    assert protocol(config, source, "probe", 0.5)["n_train"] == n == protocol(config, source, "finetune", 0.5)["n_train"]
    assert protocol(config, source, "finetune", 1.0)["n_train"] == 16 and n == 8  # 4 classes x 4 train videos, half each
    assert "label_subset" not in protocol(config, source, "probe", 1.0)  # the all-labels probe file as before
    other_seed = {**config, "evaluation": {**config["evaluation"], "label_seed": 1}}
    probe.main(other_seed, source, DS, 0.5)
    assert protocol(other_seed, source, "probe", 0.5)["label_subset"] != digests[(source.name, "probe")]
    probe.main(config, source, DS, 0.5)  # the module's other tests read the file of the config's label_seed


def test_finetuning_learns_and_the_summary_names_scratch(exported):
    from vididi.stages import summary

    config, source, _, scratch = exported
    log = layout.finetune_log(config, source, DS)
    rows = log.read_text().splitlines()
    assert len(rows) == 1 + FINETUNE["steps"] and rows[0].startswith("step,epoch,loss,cross_entropy,accuracy")
    summary.main(config, DS)
    md = layout.summary_file(config, DS, ".md").read_text()
    assert "| random init (scratch) | small3d | synthetic | 1 |" in md and "| external vididi |" in md
    header = md[md.index("| run |"):].splitlines()[0]
    assert "fine-tune top-1 @ 0.5" in header and "probe top-1 @ 0.5" in header
    csv_header = layout.summary_file(config, DS, ".csv").read_text().splitlines()[0].split(",")
    assert {"finetune_top1", "finetune_top5", "probe_top1@0.5", "finetune_top1@0.5", "finetune_s"} <= set(csv_header)


# --------------------------------------------------------------------------------------------------
# checkpoints in and out


def test_exported_r3d18_loads_into_torchvision_strict_except_fc(tmp_path, tiny_data):
    from torchvision.models.video import r3d_18

    config = make_config(tmp_path, tiny_data, [{"dataset": DS, "framework": "random", "backbone": "r3d_18", "seed": 1}],
                         evaluation={"bn_recalibration_clips": 4})  # fmt: skip
    (run,) = vc.expand_runs(config)
    pretrain.main(config, run)
    state = torch.load(export_stage.main(config, run), map_location="cpu", weights_only=True)
    model = r3d_18(weights=None).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    model.load_state_dict({**state, "fc.weight": model.fc.weight, "fc.bias": model.fc.bias}, strict=True)
    encoder = __import__("vididi").load_encoder(layout.export_file(config, run)).encoder
    x = torch.randn(2, 3, 4, 28, 28)
    with torch.no_grad():
        tv = model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(model.stem(x)))))).flatten(1)
        torch.testing.assert_close(tv, encoder(x), rtol=1e-3, atol=1e-3)  # the same network and weights (memory layouts round apart)
    card = json.loads(layout.export_card(layout.export_file(config, run)).read_text())
    assert "torchvision.models.video.r3d_18()" in card["loads_into"]


def test_bare_state_dicts_import_and_misfits_are_one_line(tmp_path, tiny_data):
    from vididi.ssl.models import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("small3d", widths=[4, 8, 8, 16])
    bare = tmp_path / "bare.pth"  # as other projects publish them: tensors only, a classifier head, no card
    torch.save({**backbone.state_dict(), "fc.weight": torch.zeros(4, 16), "fc.bias": torch.zeros(4)}, bare)
    config = make_config(tmp_path, tiny_data, [
        {"dataset": DS, "framework": "external", "variant": "theirs", "checkpoint": str(bare)},
        {"dataset": DS, "framework": "external", "variant": "wrong", "backbone": "r3d_18", "checkpoint": str(bare)},
    ])  # fmt: skip
    theirs, wrong = vc.expand_runs(config)
    assert theirs.name == "external-theirs-small3d-s0"
    pretrain.main(config, theirs)
    final = torch.load(layout.final_checkpoint(config, theirs), map_location="cpu", weights_only=True)
    assert set(final["encoder"]) == set(backbone.state_dict())  # fc.* ignored
    assert all(torch.equal(final["encoder"][k], v) for k, v in backbone.state_dict().items())
    from vididi.data.shards import DatasetIndex

    assert json.loads(final["stats"]) == DatasetIndex.for_dataset(config, DS).stats  # the run's dataset normalises it
    assert json.loads(final["source"])["kind"] == "state dict"
    with pytest.raises(VididiError) as info:
        pretrain.main(config, wrong)
    message = str(info.value)
    assert "\n" not in message and "does not fit backbone 'r3d_18'" in message
    assert "missing (" in message and "layer1.0.conv1.0.weight" in message and "unexpected (" in message and "stages." in message
    # a changed file changes the run's settings (its content hash), so Snakemake re-imports it
    before = vc.settings_hash(vc.pretrain_settings(config, theirs))
    torch.save({k: v + 1 for k, v in backbone.state_dict().items()}, bare)
    assert vc.settings_hash(vc.pretrain_settings(config, theirs)) != before


def test_external_entries_are_checked(tmp_path):
    from vididi.config import ConfigError

    for entry, fragment in (({"framework": "external"}, "needs checkpoint"),
                            ({"framework": "vicreg", "checkpoint": "x.pt"}, "only for framework external"),
                            ({"framework": ["external", "vicreg"], "checkpoint": "x.pt"}, "stands alone")):  # fmt: skip
        with pytest.raises(ConfigError, match=fragment):
            tiny_config(tmp_path, runs=[{"dataset": DS, **entry}])
    config = tiny_config(tmp_path, runs=[{"dataset": DS, "framework": "external", "variant": "anything", "checkpoint": "x.pt"}])
    assert vc.expand_runs(config)[0].checkpoint == "x.pt"


# --------------------------------------------------------------------------------------------------
# resume


def test_sigkilled_finetune_resumes_to_the_uninterrupted_weights(tmp_path, tiny_data):
    import yaml

    runs = [{"dataset": DS, "framework": "random", "variant": "base", "seed": 2}]
    opts = {"finetune": {"steps": 16, "batch_size": 4, "warmup_steps": 2, "checkpoint_every": 4, "dropout": 0.5},
            "pretrain": {"steps": 4, "num_workers": 0, "log_every": 1}}  # fmt: skip
    straight = make_config(tmp_path / "straight", tiny_data, runs, **opts)
    (run,) = vc.expand_runs(straight)
    pretrain.main(straight, run)
    finetune.main(straight, run, DS, 0.5)

    config = make_config(tmp_path / "killed", tiny_data, runs, **opts)
    pretrain.main(config, run)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "vididi.cli", "finetune", "--config", str(config_file), "--dataset", DS, "--run", run.name,
           "--eval-dataset", DS, "--label-fraction", "0.5"]  # fmt: skip
    env = {**os.environ, "VIDIDI_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = layout.finetune_log(config, run, DS, 0.5)
    last = layout.finetune_checkpoint_dir(config, run, DS, 0.5) / layout.LAST_CHECKPOINT
    with (tmp_path / "killed.stderr").open("wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.time() + 120
    while (not log.exists() or len(log.read_text().splitlines()) < 1 + 6) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.stderr").read_text()[-2000:]
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["step"]
    assert 4 <= killed_at < 16 and not layout.metrics_file(config, run, "finetune", DS, 0.5).exists()

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from {last} at step {killed_at}" in done.stderr
    ours = torch.load(last, map_location="cpu", weights_only=True)["model"]
    reference = torch.load(layout.finetune_checkpoint_dir(straight, run, DS, 0.5) / layout.LAST_CHECKPOINT,
                           map_location="cpu", weights_only=True)["model"]  # fmt: skip
    assert ours.keys() == reference.keys()
    assert [k for k in ours if not torch.equal(ours[k], reference[k])] == []
    assert layout.read_metrics(layout.metrics_file(config, run, "finetune", DS, 0.5)) == \
        layout.read_metrics(layout.metrics_file(straight, run, "finetune", DS, 0.5))
    segments = json.loads(layout.metrics_file(config, run, "finetune", DS, 0.5).read_text())["protocol"]["segments"]
    assert [(s["from_step"], s["to_step"]) for s in segments] == [(0, killed_at), (killed_at, 16)]


def test_an_unfinished_finetune_resumes_only_from_the_same_start(tmp_path, tiny_data):
    """A half-finished fine-tuning is resumed with the same weights to start from, and set aside when the
    run's weights change (here: its pretraining settings), though the fine-tuning settings do not."""
    runs = [{"dataset": DS, "framework": "random", "variant": "base", "seed": 1}]
    config = make_config(tmp_path, tiny_data, runs)
    (run,) = vc.expand_runs(config)
    pretrain.main(config, run)
    finetune.main(config, run, DS)
    last = layout.finetune_checkpoint_dir(config, run, DS) / layout.LAST_CHECKPOINT
    state = torch.load(last, map_location="cpu", weights_only=True)

    def segments(config: dict) -> list[tuple[int, int]]:
        torch.save({**state, "step": 4}, last)  # as if killed after step 4 of 6
        finetune.main(config, run, DS)
        return [(s["from_step"], s["to_step"]) for s in protocol(config, run, "finetune", 1.0)["segments"]]

    assert segments(config) == [(0, 6), (4, 6)]  # resumed
    other = make_config(tmp_path, tiny_data, runs, pretrain={"steps": 4, "num_workers": 0, "lr": 0.5})
    assert vc.finetune_settings(other, run, DS) == vc.finetune_settings(config, run, DS)
    with pytest.raises(VididiError, match="other settings than this config's"):  # final.pt no longer matches
        finetune.main(other, run, DS)
    pretrain.main(other, run)  # the run made again with the other settings
    assert segments(other) == [(0, 6)]  # another start: set aside, trained from step 0


# --------------------------------------------------------------------------------------------------
# workflow and CLI


def test_the_workflow_plans_export_external_finetune_and_label_fractions(tmp_path):
    import yaml

    from conftest import TINY
    from vididi.config import deep_update

    source = vc.Run(DS, "vicreg", "vididi", "small3d", 0, (DS,))
    checkpoint = str(layout.export_file(vc.resolve({"results_dir": "results"}), source))
    config = deep_update(TINY, {"evaluation": {"finetune": True, "label_fractions": [0.5, 1.0]}})
    config["runs"] = TINY["runs"] + [{"dataset": DS, "framework": "random"},
                                     {"dataset": DS, "framework": "external", "variant": "vididi", "checkpoint": checkpoint}]  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(tmp_path, "-n")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    counts = job_counts(done.stdout + done.stderr)
    # 4 runs: 3 pretrain jobs + the import of the export (exported once); fine-tuning at 1 and 0.5, the probe at 0.5
    assert {k: counts.get(k) for k in ("pretrain", "external", "export", "finetune", "label_fraction")} == \
        {"pretrain": 3, "external": 1, "export": 1, "finetune": 4, "label_fraction": 8}
    assert counts["figure"] == 6  # label_efficiency besides the five others
    (tmp_path / "default").mkdir()
    default = snakemake(tmp_path / "default", "-n", "--configfile", str(REPO / "config.yaml"))
    counts = job_counts(default.stdout + default.stderr)
    assert default.returncode == 0 and counts["pretrain"] == 2 and not {"finetune", "label_fraction", "export"} & set(counts)


def test_version():
    from vididi import __version__

    done = subprocess.run([sys.executable, "-m", "vididi.cli", "--version"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == f"vididi {__version__}"


def test_citation_cites_the_paper_and_the_software():
    import yaml

    from vididi import __version__

    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["version"] == __version__
    paper = cff["preferred-citation"]
    assert paper["title"] == "Unfolding Videos Dynamics via Taylor Expansion" and paper["year"] == 2024
    assert [a["family-names"] for a in paper["authors"]] == ["Chen", "Choi", "Zhao", "Han", "Qu", "Liu"]
    assert "2409.02371" in paper["url"]
