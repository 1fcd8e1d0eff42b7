# Shared set-up: validate the config (one code path with the `vididi` CLI), expand runs; every path
# comes from vididi/layout.py and every list of names from vididi/names.py.
import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir).parent))  # vididi.config needs only PyYAML + jsonschema
# envs/vididi.yaml installs this checkout (pip -e ${VIDIDI_REPO}); conda runs pip from a copy elsewhere.
os.environ.update(VIDIDI_REPO=str(Path(workflow.basedir).parent))
CONDA_ENV = "../../envs/vididi.yaml"  # for --use-conda, relative to workflow/rules/

from snakemake.settings.types import DeploymentMethod

from vididi import config as vc
from vididi import layout as L
from vididi import names
from vididi.utils import IMAGE_VENV, image_pins_mismatch, write_text

# config.yaml of the working directory, under what Snakemake merged from --configfile and --config
# (as the `configfile:` directive would, whose errors name neither the file nor the line).
WORKFLOW_CONFIG = "config.yaml"
try:
    _base = {}
    if not workflow.config_settings.replace_workflow_config and (
        Path(WORKFLOW_CONFIG).is_file() or not workflow.config_settings.configfiles
    ):
        if not Path(WORKFLOW_CONFIG).is_file():
            sys.exit(f"vididi: no {WORKFLOW_CONFIG} in {Path.cwd()}: run from the repository root, or name a config with --configfile")
        _base = vc.read_config_file(WORKFLOW_CONFIG)
        workflow.configfiles.append(WORKFLOW_CONFIG)  # as the directive does (run metadata)
    _resolved = vc.resolve(vc.deep_update(_base, config))
except vc.ConfigError as error:
    sys.exit(f"vididi: {error}")
config.clear()
config.update(_resolved)

RUNS = vc.expand_runs(config)
# every path comes from vididi/layout.py; in rule patterns the names are wildcards
RUN = L.RunRef("{dataset}", "{run}")

# All jobs read this file, the validated config of this invocation (config.yaml plus any
# --configfile / --config overrides), written when it is missing or differs. The CLI finds it through
# $VIDIDI_CONFIG, inherited by every job: were its path (which depends on results_dir) on the command
# lines, another results_dir would change the data rules' params and re-run the shared data stage.
# The file is named by the hash of its content (L.job_config): were it one file per results_dir, a
# dry run or another invocation with other settings would rewrite it under the jobs still running.
_text = json.dumps(config, indent=1, sort_keys=True) + "\n"
CONFIG_FILE = L.job_config(config, vc.settings_hash(config))
for _path in (CONFIG_FILE, L.resolved_config(config)):  # the second: the last invocation's, to read
    if not _path.is_file() or _path.read_text() != _text:
        write_text(_path, _text)
os.environ.update(VIDIDI_CONFIG=str(CONFIG_FILE))


def names_of(*sources):
    """A wildcard pattern matching the configured datasets of these sources (never matching if none)."""
    return names.pattern([name for name, ds in config["datasets"].items() if ds["source"] in sources])


# Under --use-singularity every job runs in the image named by `container` (default: vididi.sif, which
# `make image sif` builds; docs/deployment.md). Stop at once, in one line, if that file is missing.
IN_IMAGE = DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
REPO = Path(workflow.basedir).parent
if IN_IMAGE and "://" not in config["container"] and not Path(config["container"]).is_file():
    sys.exit(f"vididi: no image {config['container']} here for --use-singularity; build it with `make image sif` (docs/deployment.md)")
# Snakemake itself running inside the image (`docker run ... snakemake`, `make image-test`): its
# packages must be the ones the checkout pins, since the checkout's code runs on them.
if image_pins_mismatch(REPO):
    sys.exit(f"vididi: {image_pins_mismatch(REPO)}")


def _python():
    """The interpreter that runs the stages ($VIDIDI_PYTHON for workflow/bin/vididi), always on the
    checkout's code. On the host: the one running Snakemake (the project's environment, activated or
    not: `.venv/bin/snakemake` works without `source .venv/bin/activate`). Under --use-conda: the
    environment's `python` (it installs the checkout editable). In the image (--use-singularity), the image's,
    which checks first that the image's packages are the versions the checkout pins (vididi.cli)."""
    methods = workflow.deployment_settings.deployment_method
    if DeploymentMethod.APPTAINER in methods:
        return str(IMAGE_VENV / "bin" / "python")
    if DeploymentMethod.CONDA in methods:
        return "python"
    return sys.executable


# The rules all run `vididi <stage> ...`, i.e. workflow/bin/vididi, found on PATH (in the image through
# Apptainer's PREPEND_PATH, since Apptainer does not pass the host's PATH). Keeping the interpreter
# and the checkout's path off the command lines keeps them out of what Snakemake compares between
# runs: another venv path, `python -m snakemake` or the image re-run nothing. Snakemake's own
# software-env trigger is off in the profiles for the same reason (the image pins the checkout's
# versions and checks them, so it computes what the host computes).
BIN = str(REPO / "workflow" / "bin")
os.environ.update(
    VIDIDI_PYTHON=_python(),
    PATH=os.pathsep.join([BIN, *(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != BIN)]),
    APPTAINERENV_PREPEND_PATH=BIN,
    SINGULARITYENV_PREPEND_PATH=BIN,
)
if config["pretrain"]["nodes"] > 1 and IN_IMAGE:
    # srun must start one container per node from the host; the rule's shell already runs inside one
    sys.exit("vididi: pretrain.nodes > 1 does not run under --use-singularity (srun is not in the image); "
             "run multi-node pretraining with the host environment (docs/deployment.md)")


def raw_hash(dataset):
    return vc.settings_hash(vc.raw_settings(config, dataset))


def data_hash(dataset):
    return vc.settings_hash(vc.data_settings(config, dataset))


def index_hash(dataset):
    return vc.settings_hash(vc.index_settings(config, dataset))


def run_of(wildcards):
    return vc.find_run(config, wildcards.dataset, wildcards.run)


def index_inputs(dataset):
    """index.tsv and dataset.json of a dataset, marked ancient: a rebuilt index (a shard deleted, damaged
    or force-extracted, then rebuilt) re-runs nothing downstream by its date; what it contains comes in
    through `data_content`, which the rules hash. Once the index exists they are asked for through the
    `index` checkpoint, so that the jobs reading it are planned again when it is rebuilt; before (a
    fresh run) as plain files, so that `snakemake -n` shows the whole pipeline."""
    owner = vc.data_owner(config, dataset)
    if L.info_file(config, owner).is_file():
        out = checkpoints.index.get(dataset=owner).output
        return [ancient(out.index), ancient(out.info)]
    return [ancient(L.index_file(config, owner)), ancient(L.info_file(config, owner))]


_CONTENT = {}


def data_content(dataset):
    """dataset.json's digest of the frames, labels and scales (vididi/stamps.py), for a rule whose input
    has `index_inputs(dataset)`. It waits for the `index` checkpoint: when the index is (re)built in this
    invocation, the jobs that read it are planned again with the new digest, so the same frames re-train
    nothing and changed frames re-train. Until then the parameter is "to be determined"."""
    info = Path(checkpoints.index.get(dataset=vc.data_owner(config, dataset)).output.info)
    key = (info, info.stat().st_mtime_ns)
    if key not in _CONTENT:
        _CONTENT[key] = json.loads(info.read_text())["content"]
    return _CONTENT[key]


def run_hash(wildcards):
    """The pretrain rule's parameter: the run's settings and its training data's content (config.run_hash)."""
    content = data_content(wildcards.dataset)  # first: a budget in epochs is counted in the manifest, which is older
    return vc.run_hash(vc.pretrain_settings(config, run_of(wildcards)), content)


def features_hash(wildcards):
    """What a features file depends on beyond final.pt (evaluation.inputs.features_settings)."""
    return vc.settings_hash({**vc.eval_settings(config, wildcards.eval_dataset), "data_content": data_content(wildcards.eval_dataset)})


def eval_hash(wildcards):
    """What a metric file depends on beyond its features file (config.eval_settings)."""
    return vc.settings_hash(vc.eval_settings(config, wildcards.eval_dataset))


def metric_files(dataset):
    """Every metric file (analysis, label fractions and fine-tuning included) of the runs pretrained on `dataset`."""
    return [path for run in RUNS if run.dataset == dataset for path in run_metric_files(run)]


def all_outputs():
    """The summaries and figures, and the features files they are made from: a deleted features file
    is remade by a plain `snakemake` even when everything made from it is up to date."""
    out = []
    for dataset in sorted({run.dataset for run in RUNS}):
        out.append(L.summary_file(config, dataset, ".md"))
        out += [L.figure_file(config, dataset, name, ".png") for name in vc.available_figures(config, dataset)]
    for run in RUNS:
        out += [L.features_file(config, run, eval_dataset) for eval_dataset in run.eval_datasets]
    return out


def all_shards(wildcards):
    """Every shard of the data the runs use, as a target of its own: a deleted or damaged (moved aside)
    shard is rebuilt by a plain `snakemake`, and since the rules after the index read it as `ancient`
    and hash its content, the rebuild re-trains nothing when the frames are the same."""
    owners = sorted({vc.data_owner(config, d) for run in RUNS for d in (run.dataset, *run.eval_datasets)})
    return [shard for owner in owners for shard in shard_files(owner)]


def raw_videos(wildcards):
    """What the manifest needs: the generated/downloaded videos, or nothing for a user folder."""
    ds = config["datasets"][wildcards.dataset]
    if ds["source"] == "synthetic":
        return L.raw_dir(config, wildcards.dataset)
    if ds["root"] or ds["source"] == "folder":
        return []
    return L.download_marker(config, wildcards.dataset)


def shard_files(dataset):
    """The shards the manifest lists (`dataset`: a name, or the wildcards of a job)."""
    dataset = getattr(dataset, "dataset", dataset)
    manifest = checkpoints.manifest.get(dataset=dataset).output[0]
    n_shards = json.loads(Path(manifest).read_text())["n_shards"]
    return [L.shard_file(config, dataset, i) for i in range(n_shards)]


def final_inputs(wildcards):
    """What a run's final.pt is made from: the pretraining dataset's index, and for an external run its
    encoder file (with the card of an exported one; a file this workflow exports comes from the export rule)."""
    run = run_of(wildcards)
    out = {"index": index_inputs(run.dataset)}
    if run.framework == vc.EXTERNAL:
        path, card = Path(run.checkpoint), L.export_card(run.checkpoint)
        exported = any(L.export_file(config, r).resolve() == path.resolve() for r in RUNS if r.framework != vc.EXTERNAL)
        out["checkpoint"] = [path] + ([card] if exported or card.is_file() else [])
    return out


def finetune_inputs(wildcards):
    """A fine-tuning starts from the run's final.pt, recalibrated on its pretraining dataset."""
    run = run_of(wildcards)
    return {"checkpoint": L.final_checkpoint(config, run), "index": index_inputs(wildcards.eval_dataset),
            "train_index": index_inputs(run.dataset)}


def finetune_hash(wildcards, fraction=1.0):
    """What a fine-tuning's metric file depends on beyond final.pt: its settings and the content of
    the data it trains and tests on."""
    settings = vc.finetune_settings(config, run_of(wildcards), wildcards.eval_dataset, fraction)
    return vc.settings_hash({**settings, "data_content": data_content(wildcards.eval_dataset)})


def label_fraction_inputs(wildcards):
    """The probe on part of the labels reads the features; fine-tuning, what fine-tuning reads."""
    if wildcards.stage == "probe":
        return {"features": L.features_file(config, run_of(wildcards), wildcards.eval_dataset)}
    return finetune_inputs(wildcards)


def label_fraction_settings(wildcards):
    fraction = float(wildcards.fraction)
    if wildcards.stage == "probe":
        return vc.settings_hash({**vc.eval_settings(config, wildcards.eval_dataset), **vc.label_subset_settings(config, fraction)})
    return finetune_hash(wildcards, fraction)


def run_metric_files(run):
    """Every metric file the config asks of `run` (metric stages, attention, label fractions, fine-tuning)."""
    return [L.metrics_file(config, run, stage, eval_dataset, fraction) for stage, eval_dataset, fraction in vc.run_evaluations(config, run)]


def figure_inputs(wildcards):
    """What each figure is drawn from."""
    dataset, name = wildcards.dataset, wildcards.figure
    if name == "derivatives":
        return index_inputs(dataset)
    if name in ("bars", "label_efficiency"):
        return [L.summary_file(config, dataset, ".csv")]
    if name == "curves":
        return [L.final_checkpoint(config, r) for r in RUNS if r.dataset == dataset]
    runs = vc.comparison_runs(config, dataset)
    if name == "tsne":
        return [L.metrics_file(config, r, "attention", dataset) for r in runs] + [L.features_file(config, r, dataset) for r in runs]
    return [L.attention_file(config, r, dataset) for r in runs]


FIGURE_CAPTIONS = {
    "derivatives": "Test clips as frames (order 0) and their 1st and 2nd temporal derivatives.",
    "tsne": "t-SNE of the test features of the classes with the most test videos; silhouette (cosine, full-dimensional features) in each title. Baseline vs ViDiDi (paper Fig. 4).",
    "attention": "Grad-CAM attention of the encoder's last block: frames | baseline | ViDiDi (paper Fig. 5).",
    "curves": "Training loss and its terms per framework; baseline dashed, ViDiDi solid. Runs trained with pretrain.monitor_every add a row with the online kNN monitor (leave-one-group-out R@1 on training videos).",
    "bars": "Retrieval R@1, linear-probe top-1 and detection mAP@0.5 on the test split, baseline vs ViDiDi.",
    "label_efficiency": "Top-1 on the test split against the share of labelled training videos, for the linear probe and end-to-end fine-tuning: baseline, ViDiDi and the random initialisation (frozen: the floor; fine-tuned: the scratch baseline); mean ± sd over seeds.",
}


# The planning environment of a login node (make plan-env) has no torch: it plans (-n) and submits, and
# the jobs run in the image or a conda env. Started as the environment of the jobs themselves, it
# stops before the first job, in one line, instead of failing every job with an ImportError.
def _jobs_can_run_here():
    methods = workflow.deployment_settings.deployment_method
    if IN_IMAGE or DeploymentMethod.CONDA in methods or importlib.util.find_spec("torch") is not None:
        return
    sys.exit(f"vididi: {sys.executable} has no torch (a planning environment, make plan-env): run the jobs in "
             "the image (--use-singularity) or a conda env (--use-conda), or use the full environment (make install)")


onstart:
    _jobs_can_run_here()
