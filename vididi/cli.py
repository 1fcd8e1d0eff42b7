"""`vididi <stage> --config config.yaml ...`: every pipeline stage, callable alone.

Each stage is one module, `vididi/stages/<stage>.py`, with one entry point `main`; this CLI parses
the arguments, loads the config and looks the stage up. Each Snakemake rule is a thin shell call of
one stage. Bad input (config, files, videos) ends
with one line `vididi <stage>: error: ...` and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from . import __version__, utils
from .names import FIGURES, METRIC_STAGES
from .utils import VididiError, get_logger, image_pins_mismatch

# stage -> (help, the keyword arguments of its entry point `vididi.stages.<stage>.main`); the
# stage names come from names.STAGES (a test checks that both agree)
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "generate": ("generate the synthetic dataset's videos", ("dataset", "workers")),
    "download": ("download and unpack a real dataset (resumable, checksummed)", ("dataset",)),
    "manifest": ("list a dataset's videos and assign them to shards", ("dataset",)),
    "extract": ("decode one shard's videos into an HDF5 shard", ("dataset", "shard")),
    "index": ("index the shards; list bad videos; measure derivative scales", ("dataset",)),
    "pretrain": ("pretrain one run (resumes from its last checkpoint)", ("run",)),
    "features": ("extract frozen features of one run on one evaluation dataset", ("run", "eval_dataset")),
    "retrieval": ("kNN video retrieval (Recall@k)", ("run", "eval_dataset")),
    "probe": ("linear probe (top-1 / top-5)", ("run", "eval_dataset", "label_fraction")),
    "detection": ("temporal action detection (mAP at tIoU 0.3:0.7)", ("run", "eval_dataset")),
    "attention": ("silhouette, Grad-CAM attention maps and object-attention share", ("run", "eval_dataset")),
    "finetune": ("fine-tune a run's encoder end to end with a new linear head (top-1 / top-5; resumable)",
                 ("run", "eval_dataset", "label_fraction")),
    "export": ("write a run's encoder as a plain (torchvision-format) state dict with a JSON card", ("run",)),
    "summary": ("summary table of all runs of a dataset", ("dataset",)),
    "figures": ("figures of a dataset's runs", ("dataset", "figure")),
}
# Stages that compute with torch (retrieval and the torch probe included): torch's thread count is set to
# the config's `threads` first, so that the rounding, and the threads their outputs record, follow the
# config rather than the machine's core count. The data stages before the index never load torch.
NO_TORCH_STAGES = ("generate", "download", "manifest", "extract", "summary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vididi", description="ViDiDi pipeline stages (see README.md and docs/design.md)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (help_text, extra) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", action="append", metavar="FILE",
                       help="config file(s); later ones update earlier ones (default: $VIDIDI_CONFIG, which the "
                            "workflow sets, else config.yaml)")  # fmt: skip
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set pretrain.steps=1000 or --set 'pretrain={steps: 1000}'")
        p.add_argument("--dataset", required=True)
        if "shard" in extra:
            p.add_argument("--shard", type=int, required=True)
        if "workers" in extra:
            p.add_argument("--workers", type=int, help="parallel processes (default: the config's threads)")
        if "run" in extra:
            # --run-name: torchrun's own parser rejects `--run` anywhere on its command line (an
            # ambiguous abbreviation of its --run-path), so the DDP launch passes --run-name
            p.add_argument("--run", "--run-name", dest="run", required=True, help="run name, e.g. vicreg-vididi-small3d-s0")
        if "eval_dataset" in extra:
            p.add_argument("--eval-dataset", required=True)
        if "label_fraction" in extra:
            p.add_argument("--label-fraction", type=_fraction, default=1.0, metavar="F",
                           help="use this share of the labelled train videos, per class (default 1: all; evaluation.label_fractions)")
        if "figure" in extra:
            p.add_argument("--figure", required=True, choices=FIGURES)
    return parser


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    log = get_logger()
    started = time.time()
    try:
        from .config import load_config, parse_overrides

        mismatch = image_pins_mismatch(Path(__file__).resolve().parents[1])
        if mismatch:
            raise VididiError(mismatch)
        config_files = args.config or [os.environ.get("VIDIDI_CONFIG") or "config.yaml"]
        config = load_config(config_files, overrides=parse_overrides(args.set))
        if args.stage in LAUNCHED_STAGES:
            _launch_if_distributed(config, args.stage, argv)
        # before torch / scikit-learn load: their OpenMP pools default to every core, which thrashes
        # when Snakemake runs jobs side by side (Snakemake sets this itself to the rule's threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(config["threads"]))
        if args.dataset not in config["datasets"]:
            raise VididiError(f"dataset {args.dataset!r} is not in the config (datasets: {', '.join(config['datasets'])})")
        log.info("vididi %s: config %s", args.stage, " + ".join(map(str, config_files)))
        _dispatch(args, config)
    except VididiError as exc:
        print(f"vididi {args.stage}: error: {one_line(exc)}", file=sys.stderr)
        if utils.ABANDONED_HDF5:  # HDF5 failed a write: its clean-up at exit would crash (utils.atomic_hdf5)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(getattr(exc, "exit_code", 2))
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"vididi {args.stage}: interrupted", file=sys.stderr)
        return 130
    log.info("vididi %s done in %.1f s", args.stage, time.time() - started)
    return 0


def one_line(exc: BaseException) -> str:
    """The message of a user error, also when a DataLoader worker raised it (torch re-raises it with
    the worker's traceback in the message: its last line is the original one)."""
    text = str(exc)
    if "Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


# Stages that train on several processes when the config asks for several GPUs or nodes: the stage
# launches itself under torchrun (srun + one torchrun per node), so a rule, a hand run and a SLURM job
# all run the same `vididi pretrain ...` (or `vididi finetune ...`) command line.
LAUNCHED_STAGES = ("pretrain", "finetune")


def _launch_if_distributed(config: dict, stage: str, argv: list[str]) -> None:
    """Replace this process by `torchrun ... -m vididi.cli <argv>` when `pretrain.gpus` > 1 or
    `pretrain.nodes` > 1 and it is not already a launched worker (vididi/launch.py)."""
    from .launch import launcher_argv

    if "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ:  # already a worker
        return
    command = launcher_argv(config["pretrain"]["gpus"], config["pretrain"]["nodes"], sys.executable)
    if command:
        # torchrun's own parser takes `--run` for an abbreviation of its --run-path, wherever it stands
        command += ["--run-name" if a == "--run" else a.replace("--run=", "--run-name=", 1) for a in argv]
        get_logger().info("vididi %s: launching %s", stage, " ".join(command))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)


def _dispatch(args: argparse.Namespace, config: dict) -> None:
    """One registry lookup: `vididi.stages.<stage>.main` with the arguments the stage declares."""
    stage = args.stage
    kwargs = {"dataset": args.dataset}
    for name in STAGES[stage][1]:
        if name == "run":
            kwargs["run"] = _run(config, args)
        elif name == "eval_dataset":
            kwargs["eval_dataset"] = _eval_dataset(config, args)
        elif name != "dataset":
            kwargs[name] = getattr(args, name)
    if "run" in kwargs:
        del kwargs["dataset"]  # a run knows its dataset
    if stage in METRIC_STAGES:
        from .config import metric_stages

        applies = metric_stages(config, kwargs["eval_dataset"])
        if stage not in applies:
            raise VididiError(f"{stage} does not apply to {kwargs['eval_dataset']} (it has: {', '.join(applies)})")
    if stage == "finetune":
        from .config import has_trimmed

        if not has_trimmed(config, kwargs["eval_dataset"]):
            raise VididiError(f"finetune needs labelled clips; {kwargs['eval_dataset']} has none")
    if stage not in NO_TORCH_STAGES:
        _torch_threads(config)
    importlib.import_module(f"{__package__}.stages.{stage}").main(config, **kwargs)


def _run(config: dict, args: argparse.Namespace):
    from .config import find_run

    return find_run(config, args.dataset, args.run)


def _eval_dataset(config: dict, args: argparse.Namespace) -> str:
    run = _run(config, args)
    if args.eval_dataset not in run.eval_datasets:
        raise VididiError(f"run {run.name} is not evaluated on {args.eval_dataset!r} (eval_datasets: {', '.join(run.eval_datasets)})")
    return args.eval_dataset


def _torch_threads(config: dict) -> None:
    import torch

    torch.set_num_threads(config["threads"])


if __name__ == "__main__":
    sys.exit(main())
