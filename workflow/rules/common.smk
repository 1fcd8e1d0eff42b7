# Shared set-up: validate the config (one code path with the `vididi` CLI), expand runs; every path
# comes from vididi/layout.py and every list of names from vididi/names.py.
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir).parent))  # vididi.config needs only PyYAML + jsonschema
# envs/vididi.yaml installs this checkout (pip -e ${VIDIDI_REPO}); conda runs pip from a copy elsewhere.
os.environ.update(VIDIDI_REPO=str(Path(workflow.basedir).parent))
CONDA_ENV = "../../envs/vididi.yaml"  # for --use-conda, relative to workflow/rules/

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

from vididi import config as vc
from vididi import layout as L
from vididi import names
from vididi.utils import write_text

try:
    _resolved = vc.resolve(config)
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
IMAGE_VENV = Path(os.sep, "opt", "venv")  # the image's environment and pins (Dockerfile)
IMAGE_PINS = Path(os.sep, "opt", "vididi", "constraints.txt")
if sys.prefix == str(IMAGE_VENV) and IMAGE_PINS.is_file() and IMAGE_PINS.read_text() != (REPO / "constraints.txt").read_text():
    sys.exit(f"vididi: this image was built from another constraints.txt than {REPO}'s; rebuild it with `make image`")


def _python():
    """The interpreter that runs the stages, always on the checkout's code (`-m vididi.cli`). On the host:
    the one running Snakemake (the project's environment, activated or not: `.venv/bin/snakemake` works
    without `source .venv/bin/activate`). Under --use-conda: the environment's `python` (it installs the
    checkout editable). Under --use-singularity, the image's Python with the checkout first on
    PYTHONPATH, after a check that the image's packages are the versions the checkout pins (else one
    line naming the differing pins)."""
    methods = workflow.deployment_settings.deployment_method
    if DeploymentMethod.APPTAINER in methods:
        repo = shlex.quote(str(REPO))
        check = (
            f"d=$(diff {IMAGE_PINS} {repo}/constraints.txt 2>&1 | grep -v -e '^[0-9]' -e '^---$' | tr '\\n' ' '); "
            f'[ -z "$d" ] || {{ echo "vididi: image and checkout pin other versions (< image, > checkout): $d; rebuild: make image sif" >&2; exit 1; }}; '
        )
        return f"{check}PYTHONPATH={repo} {IMAGE_VENV}/bin/python"
    if DeploymentMethod.CONDA in methods:
        return "python"
    return shlex.quote(sys.executable)


def vididi(stage):
    """The shell prefix of a stage; it reads $VIDIDI_CONFIG."""
    return f"{_python()} -m vididi.cli {stage}"


def raw_hash(dataset):
    return vc.settings_hash(vc.raw_settings(config, dataset))


def data_hash(dataset):
    return vc.settings_hash(vc.data_settings(config, dataset))


def index_hash(dataset):
    return vc.settings_hash([vc.data_settings(config, dataset), config["datasets"][dataset]["clips"]])


def run_of(wildcards):
    return vc.find_run(config, wildcards.dataset, wildcards.run)


def eval_hash(wildcards):
    """What evaluation outputs depend on beyond their input files."""
    ds = config["datasets"][wildcards.eval_dataset]
    return vc.settings_hash([vc.evaluation_settings(config), ds["clips"], ds["split"]])


def metric_files(dataset):
    """Every metric file (analysis included) of the runs pretrained on `dataset`."""
    return [
        L.metrics_file(config, run, stage, eval_dataset)
        for run in RUNS
        if run.dataset == dataset
        for eval_dataset in run.eval_datasets
        for stage in vc.metric_stages(config, eval_dataset) + (["attention"] if vc.has_trimmed(config, eval_dataset) else [])
    ]


def all_outputs():
    out = []
    for dataset in sorted({run.dataset for run in RUNS}):
        out.append(L.summary_file(config, dataset, ".md"))
        out += [L.figure_file(config, dataset, name, ".png") for name in vc.available_figures(config, dataset)]
    return out


def raw_videos(wildcards):
    """What the manifest needs: the generated/downloaded videos, or nothing for a user folder."""
    ds = config["datasets"][wildcards.dataset]
    if ds["source"] == "synthetic":
        return L.raw_dir(config, wildcards.dataset)
    if ds["root"] or ds["source"] == "folder":
        return []
    return L.download_marker(config, wildcards.dataset)


def shard_files(wildcards):
    manifest = checkpoints.manifest.get(dataset=wildcards.dataset).output[0]
    n_shards = json.loads(Path(manifest).read_text())["n_shards"]
    return [L.shard_file(config, wildcards.dataset, i) for i in range(n_shards)]


def pretrain_launcher(wildcards):
    """`vididi pretrain`; torchrun with one process per GPU when a run asks for several; srun + one
    torchrun per node at a c10d rendezvous when it asks for several nodes (vididi/launch.py)."""
    from vididi.launch import launcher_command

    if config["pretrain"]["nodes"] > 1 and DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method:
        # srun must start one container per node from the host; the rule's shell already runs inside one
        raise WorkflowError("vididi: pretrain.nodes > 1 does not run under --use-singularity (srun is not in the "
                            "image); run multi-node pretraining with the host environment (docs/deployment.md)")
    return launcher_command(config["pretrain"]["gpus"], config["pretrain"]["nodes"], _python()) or vididi("pretrain")


def figure_inputs(wildcards):
    """What each figure is drawn from."""
    dataset, name = wildcards.dataset, wildcards.figure
    if name == "derivatives":
        return [L.index_file(config, dataset)]
    if name == "bars":
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
}
