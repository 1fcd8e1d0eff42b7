"""`vididi <stage> --config config.yaml ...`: every pipeline stage, callable alone.

Each Snakemake rule is a thin shell call of one of these. Bad input (config, files, videos) ends
with one line `vididi <stage>: error: ...` and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .utils import VididiError, get_logger

STAGES: dict[str, tuple[str, list[str]]] = {
    # name: (help, extra arguments)
    "generate": ("generate the synthetic dataset's videos", ["dataset", "workers"]),
    "download": ("download and unpack a real dataset (resumable, checksummed)", ["dataset"]),
    "manifest": ("list a dataset's videos and assign them to shards", ["dataset"]),
    "extract": ("decode one shard's videos into an HDF5 shard", ["dataset", "shard"]),
    "index": ("index the shards; list bad videos; measure derivative scales", ["dataset"]),
    "pretrain": ("pretrain one run (resumes from its last checkpoint)", ["dataset", "run"]),
    "features": ("extract frozen features of one run on one evaluation dataset", ["dataset", "run", "eval_dataset"]),
    "retrieval": ("kNN video retrieval (Recall@k)", ["dataset", "run", "eval_dataset"]),
    "probe": ("linear probe (top-1 / top-5)", ["dataset", "run", "eval_dataset"]),
    "detection": ("temporal action detection (mAP at tIoU 0.3:0.7)", ["dataset", "run", "eval_dataset"]),
    "attention": ("silhouette, Grad-CAM attention maps and object-attention share", ["dataset", "run", "eval_dataset"]),
    "summary": ("summary table of all runs of a dataset", ["dataset"]),
    "figures": ("figures of a dataset's runs", ["dataset", "figure"]),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vididi", description="ViDiDi pipeline stages (see README.md)")
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
        if "figure" in extra:
            p.add_argument("--figure", required=True, choices=["derivatives", "tsne", "attention", "curves", "bars"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = get_logger()
    started = time.time()
    try:
        from .config import load_config, parse_overrides

        config_files = args.config or [os.environ.get("VIDIDI_CONFIG") or "config.yaml"]
        config = load_config(config_files, overrides=parse_overrides(args.set))
        # before torch / scikit-learn load: their OpenMP pools default to every core, which thrashes
        # when Snakemake runs jobs side by side (Snakemake sets this itself to the rule's threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(config["threads"]))
        if args.dataset not in config["datasets"]:
            raise VididiError(f"dataset {args.dataset!r} is not in the config (datasets: {', '.join(config['datasets'])})")
        log.info("vididi %s: config %s", args.stage, " + ".join(map(str, config_files)))
        _dispatch(args, config)
    except VididiError as exc:
        print(f"vididi {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vididi {args.stage}: interrupted", file=sys.stderr)
        return 130
    log.info("vididi %s done in %.1f s", args.stage, time.time() - started)
    return 0


def _dispatch(args: argparse.Namespace, config: dict) -> None:
    stage, dataset = args.stage, args.dataset
    if stage == "generate":
        from .config import raw_dir
        from .data.synthetic import generate

        ds = config["datasets"][dataset]
        if ds["source"] != "synthetic":
            raise VididiError(f"dataset {dataset} is not synthetic (source: {ds['source']}); use `vididi download`")
        generate(raw_dir(config, dataset), ds["synthetic"], seed=ds["seed"], workers=args.workers or config["threads"])
    elif stage == "download":
        from .data.extract import download

        download(config, dataset)
    elif stage == "manifest":
        from .data.extract import write_manifest

        write_manifest(config, dataset)
    elif stage == "extract":
        from .data.extract import extract_shard

        extract_shard(config, dataset, args.shard)
    elif stage == "index":
        from .data.extract import build_index

        _torch_threads(config)
        build_index(config, dataset)
    elif stage == "pretrain":
        from .train import pretrain

        _torch_threads(config)
        pretrain(config, _run(config, args))
    elif stage == "features":
        from .features import extract_features

        _torch_threads(config)
        extract_features(config, _run(config, args), _eval_dataset(config, args))
    elif stage in ("retrieval", "probe", "detection"):
        from . import evaluate
        from .config import metric_stages

        run, eval_dataset = _run(config, args), _eval_dataset(config, args)
        if stage not in metric_stages(config, eval_dataset):
            raise VididiError(f"{stage} does not apply to {eval_dataset} (it has: {', '.join(metric_stages(config, eval_dataset))})")
        getattr(evaluate, stage)(config, run, eval_dataset)
    elif stage == "attention":
        from .analyze import analyse

        _torch_threads(config)
        analyse(config, _run(config, args), _eval_dataset(config, args))
    elif stage == "figures":
        from .figures import make_figure

        _torch_threads(config)
        make_figure(config, dataset, args.figure)
    elif stage == "summary":
        from .summary import write_summary

        write_summary(config, dataset)
    else:  # every stage in STAGES is handled above
        raise AssertionError(f"unhandled stage {stage}")


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
