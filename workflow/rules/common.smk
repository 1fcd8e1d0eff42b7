# Shared set-up: validate the config (one code path with the `vididi` CLI), expand runs, paths.
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir).parent))  # vididi.config needs only PyYAML + jsonschema

from vididi import config as vc
from vididi.utils import write_text

try:
    _resolved = vc.resolve(config)
except vc.ConfigError as error:
    sys.exit(f"vididi: {error}")
config.clear()
config.update(_resolved)

DATA = Path(config["data_dir"])
RESULTS = Path(config["results_dir"])
RUNS = vc.expand_runs(config)

# Every rule hands the CLI this file: the validated config of this invocation (config.yaml plus any
# --configfile / --config overrides), rewritten only when it changes.
CONFIG_FILE = RESULTS / "config.resolved.yaml"
_text = json.dumps(config, indent=1, sort_keys=True) + "\n"
if not CONFIG_FILE.is_file() or CONFIG_FILE.read_text() != _text:
    write_text(CONFIG_FILE, _text)
VIDIDI = f"vididi {{stage}} --config {CONFIG_FILE}"


def vididi(stage):
    """The shell prefix of a stage: `vididi <stage> --config results/config.resolved.yaml`."""
    return VIDIDI.format(stage=stage)


def data_hash(dataset):
    return vc.settings_hash(vc.data_settings(config, dataset))


def index_hash(dataset):
    return vc.settings_hash([vc.data_settings(config, dataset), config["datasets"][dataset]["clips"]])


def run_of(wildcards):
    return vc.find_run(config, wildcards.dataset, wildcards.run)


def eval_hash(wildcards):
    """What evaluation outputs depend on beyond their input files."""
    return vc.settings_hash([config["evaluation"], config["datasets"][wildcards.eval_dataset]["clips"]])


def metric_files(dataset):
    """Every metric file of the runs pretrained on `dataset`."""
    return [
        RESULTS / run.dataset / "runs" / run.name / "metrics" / f"{stage}-{eval_dataset}.json"
        for run in RUNS
        if run.dataset == dataset
        for eval_dataset in run.eval_datasets
        for stage in vc.metric_stages(config, eval_dataset)
    ]


def all_outputs():
    datasets = sorted({run.dataset for run in RUNS})
    return [RESULTS / dataset / "summary.md" for dataset in datasets]
