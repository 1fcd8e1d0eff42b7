"""Configuration: load YAML, fill defaults and validate against the JSON schema, expand runs.

One code path for the Snakefile and the CLI. It imports only PyYAML and jsonschema (both come
with Snakemake), so the Snakefile can use it on a host that has Snakemake but not torch.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from .names import BACKBONES, COMPARISON_FIGURES, FIGURES
from .utils import VididiError, config_hash

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")  # package data; the Snakefile validates with it too
TRIMMED_SOURCES = ("synthetic", "ucf101", "hmdb51", "kinetics400", "folder")  # have labelled clips
UNTRIMMED_SOURCES = ("synthetic", "thumos14")  # have untrimmed videos with segments
NO_TRAINING = "random"  # framework: the randomly initialised encoder (the floor)


class ConfigError(VididiError):
    """A config key or value is wrong; the message names the key and what is allowed."""


def load_config(paths: Iterable[str | Path], overrides: dict | None = None) -> dict:
    """Read YAML files (later ones update earlier ones, recursively), then `resolve`."""
    merged: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        merged = deep_update(merged, data)
    return resolve(deep_update(merged, overrides or {}))


def deep_update(base: dict, update: dict) -> dict:
    """A copy of `base` with `update` merged in; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


BUILTIN_VARIANTS = {"base": {"schedule": "frames_only"}, "vididi": {"schedule": "all9"}}


def resolve(config: dict) -> dict:
    """Validate `config` against the schema with defaults filled in; check cross references."""
    config = copy.deepcopy(config)
    variants = config.get("variants", {})
    if isinstance(variants, dict):  # configured variants add to base / vididi (or retune them)
        config["variants"] = deep_update(BUILTIN_VARIANTS, variants)
    validator = _validator()
    errors = _coerce_strings(validator, config)
    if errors:
        raise ConfigError(_describe(jsonschema.exceptions.best_match(errors)))
    _check_references(config)
    return config


def _coerce_strings(validator, config: dict) -> list:
    """Give command-line values their schema types; return the errors that remain.

    Snakemake hands nested `--config` values over as strings (`pretrain='{steps: 1000}'` arrives as
    {"steps": "1000"}), and so does `vididi <stage> --set`. A string where the schema wants another
    type is read as YAML; a string where a string is allowed is left alone (split "1" stays "1").
    """
    for _ in range(32):  # each pass fixes every level it can see; nesting is shallow
        errors = list(validator.iter_errors(config))
        fixed = False
        for error in errors:
            if not isinstance(error.instance, str) or not error.absolute_path:
                continue
            try:
                value = yaml.safe_load(error.instance)
            except yaml.YAMLError:
                continue
            if not isinstance(value, str):
                *parents, key = error.absolute_path
                target = config
                for part in parents:
                    target = target[part]
                target[key] = value
                fixed = True
        if not fixed:
            return errors
    return errors


def parse_overrides(entries: Iterable[str]) -> dict:
    """`KEY=VALUE` pairs from the command line -> a nested mapping for `load_config(overrides=)`.

    KEY may be dotted (`pretrain.steps=1000`); VALUE may be a YAML mapping (`pretrain={steps: 1000}`,
    Snakemake's `--config` form). Values stay strings here; `resolve` types them by the schema.
    """
    out: dict = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {entry!r}: expected KEY=VALUE, e.g. pretrain.steps=1000")
        parsed = yaml.load(value, Loader=yaml.BaseLoader) if value.strip() else None  # strings, as Snakemake does
        *parents, last = key.strip().split(".")
        node = {last: parsed}
        for part in reversed(parents):
            node = {part: node}
        out = deep_update(out, node)
    return out


_SCHEMA_CACHE: dict = {}


def schema() -> dict:
    if "schema" not in _SCHEMA_CACHE:
        _SCHEMA_CACHE["schema"] = yaml.safe_load(SCHEMA_PATH.read_text())
    return _SCHEMA_CACHE["schema"]


def _validator() -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator that also fills in defaults (each a fresh copy, never shared)."""
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for key, prop in properties.items():
                if "default" in prop and key not in instance:
                    instance[key] = copy.deepcopy(prop["default"])
        yield from validate_properties(validator, properties, instance, subschema)

    cls = jsonschema.validators.extend(base, {"properties": properties_with_defaults})
    return cls(schema())


def _describe(error: jsonschema.ValidationError) -> str:
    """One line naming the key and what is allowed."""
    where = _path(error.absolute_path)
    sub = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(sub.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        if allowed:
            return f"config: {where}: unknown key {', '.join(map(repr, extra))} (allowed: {', '.join(allowed)})"
        return f"config: {where}: {error.message}"
    if error.validator == "enum":
        return f"config: {where}: {error.instance!r} is not allowed (allowed: {', '.join(map(str, error.validator_value))})"
    if error.validator == "required":
        return f"config: {where}: {error.message}"
    if error.validator == "oneOf":
        choices = [_summarise(s) for s in error.validator_value]
        return f"config: {where}: {error.instance!r} is not allowed (expected {' or '.join(choices)})"
    return f"config: {where}: {error.message}"


def _summarise(subschema: dict) -> str:
    if "$ref" in subschema:
        target = _resolve_ref(subschema["$ref"])
        return _summarise(target)
    if "enum" in subschema:
        return "one of " + ", ".join(map(str, subschema["enum"]))
    if subschema.get("type") == "array":
        return "a list of " + _summarise(subschema.get("items", {}))
    return str(subschema.get("type", "a value"))


def _resolve_ref(ref: str) -> dict:
    node: Any = schema()
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


# --------------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class Run:
    """One pretraining run: dataset x framework x variant x backbone x seed."""

    dataset: str
    framework: str
    variant: str
    backbone: str
    seed: int
    eval_datasets: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.framework}-{self.variant}-{self.backbone}-s{self.seed}"


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def expand_runs(config: dict) -> list[Run]:
    """Every run the config asks for, in config order, without duplicates."""
    runs: dict[tuple, Run] = {}
    for entry in config["runs"]:
        for dataset, framework, variant, backbone, seed in itertools.product(
            *(_as_list(entry[k]) for k in ("dataset", "framework", "variant", "backbone", "seed"))
        ):
            evals = tuple(entry.get("eval_datasets") or [dataset])
            run = Run(dataset, framework, variant, backbone, seed, evals)
            runs.setdefault((dataset, run.name), run)
    return list(runs.values())


def find_run(config: dict, dataset: str, name: str) -> Run:
    for run in expand_runs(config):
        if run.dataset == dataset and run.name == name:
            return run
    known = ", ".join(r.name for r in expand_runs(config) if r.dataset == dataset) or "none"
    raise ConfigError(f"no run {name!r} for dataset {dataset!r} in the config (runs: {known})")


def _check_references(config: dict) -> None:
    datasets, variants = config["datasets"], config["variants"]
    for i, entry in enumerate(config["runs"]):
        for key, known in (("dataset", datasets), ("variant", variants), ("backbone", BACKBONES)):
            for value in _as_list(entry[key]):
                if value not in known:
                    raise ConfigError(f"config: runs[{i}].{key}: {value!r} is not defined (defined: {', '.join(known)})")
        for value in entry.get("eval_datasets", []):
            if value not in datasets:
                raise ConfigError(f"config: runs[{i}].eval_datasets: {value!r} is not defined (defined: {', '.join(datasets)})")
        for dataset in _as_list(entry["dataset"]):
            if datasets[dataset]["source"] not in TRIMMED_SOURCES:
                raise ConfigError(f"config: runs[{i}].dataset: {dataset!r} has no labelled clips to pretrain on")
        for framework in _as_list(entry["framework"]):
            if framework in ("supervised", NO_TRAINING):
                for variant in _as_list(entry["variant"]):
                    if variants[variant]["schedule"] != "frames_only":
                        raise ConfigError(
                            f"config: runs[{i}]: framework {framework!r} trains on frames only; "
                            f"use a variant with schedule frames_only, not {variant!r}"
                        )
    for name, variant in variants.items():
        schedule = variant["schedule"]
        if isinstance(schedule, list) and len({tuple(p) for p in schedule}) != len(schedule):
            raise ConfigError(f"config: variants.{name}.schedule: repeated order pairs")
    for run in expand_runs(config):  # BYOL's tau, after a variant's overrides
        if run.framework == "byol":
            options = pretrain_settings(config, run)["framework"]
            if options["tau_base"] > options.get("tau_final", BYOL_NEW_DEFAULTS["tau_final"]):
                raise ConfigError(f"config: run {run.name}: byol tau_base {options['tau_base']} is above tau_final "
                                  f"{options.get('tau_final', BYOL_NEW_DEFAULTS['tau_final'])} (tau only rises)")
    for key in ("baseline", "vididi"):
        if config["figures"][key] not in variants:
            raise ConfigError(f"config: figures.{key}: {config['figures'][key]!r} is not a defined variant")


# --------------------------------------------------------------------------------------------------
# Per-stage settings (what each output depends on, for hashing and metric files); paths: layout.py


def has_trimmed(config: dict, dataset: str) -> bool:
    """Labelled clips with a train/test split (retrieval, linear probe)."""
    return config["datasets"][dataset]["source"] in TRIMMED_SOURCES


def has_untrimmed(config: dict, dataset: str) -> bool:
    """Untrimmed videos with action segments in both subsets (detection). They belong to split "1"
    only (THUMOS14's validation/test videos), so detection runs on that split."""
    ds = config["datasets"][dataset]
    if ds["split"] != "1":
        return False
    if ds["source"] == "synthetic":
        return ds["synthetic"]["untrimmed"]["train"] > 0 and ds["synthetic"]["untrimmed"]["test"] > 0
    return ds["source"] in UNTRIMMED_SOURCES


def metric_stages(config: dict, dataset: str) -> list[str]:
    """The metric stages that apply to an evaluation dataset."""
    return (["retrieval", "probe"] if has_trimmed(config, dataset) else []) + (
        ["detection"] if has_untrimmed(config, dataset) else []
    )


def comparison_runs(config: dict, dataset: str) -> tuple[Run, Run] | None:
    """(baseline run, ViDiDi run) of `figures.framework` on the same backbone and seed, if configured."""
    fig = config["figures"]
    runs = [r for r in expand_runs(config) if r.dataset == dataset and r.framework == fig["framework"]]
    for base in (r for r in runs if r.variant == fig["baseline"]):
        for other in runs:
            if other.variant == fig["vididi"] and (other.backbone, other.seed) == (base.backbone, base.seed):
                return base, other
    return None


def available_figures(config: dict, dataset: str) -> list[str]:
    """The figures of names.FIGURES that `dataset`'s runs can draw (in that order)."""
    comparison = comparison_runs(config, dataset) is not None
    return [name for name in FIGURES if comparison or name not in COMPARISON_FIGURES]


def raw_settings(config: dict, dataset: str) -> dict:
    """What the raw (generated or downloaded) videos of `dataset` depend on."""
    ds = config["datasets"][dataset]
    out = {k: ds[k] for k in ("source", "root")}
    if ds["source"] == "synthetic":
        out.update(seed=ds["seed"], synthetic=without_new_defaults(ds["synthetic"], SYNTHETIC_NEW_DEFAULTS))
    return out


# Keys added after results were published (issue 13), with the value that reproduces the older
# behaviour. At that value they are left out of settings hashes and recorded settings, so outputs made
# before the keys existed stay valid where the behaviour did not change (a default dataset is
# byte-identical to an older one). The dataset and BYOL keys default to that value; the evaluation
# keys (*_LEGACY) now default to the issue-13 protocol, so their outputs are remade once, and the
# legacy value (configs/legacy-protocol.yaml) reproduces an older table.
SYNTHETIC_NEW_DEFAULTS = {"scene_bias": 0, "scene_pool": 8, "ooc_split": False}
BYOL_NEW_DEFAULTS = {"tau_final": 1.0}
# since 0.2.0 (the BYOL study): the LARS trust coefficient and the predictor's learning-rate scale
PRETRAIN_NEW_DEFAULTS = {"lars_eta": 0.001, "predictor_lr_scale": 1.0}
EVALUATION_LEGACY = {"target_encoder": False}
DETECTION_LEGACY = {"c_selection": "windows"}
ANALYSIS_LEGACY = {"cam_target": "feature_norm"}


def evaluation_settings(config: dict) -> dict:
    """What evaluation outputs depend on in `evaluation` (issue-13 keys at their legacy values left out)."""
    ev = without_new_defaults(config["evaluation"], EVALUATION_LEGACY)
    return {**ev, "detection": without_new_defaults(ev["detection"], DETECTION_LEGACY)}


def analysis_settings(config: dict) -> list:
    """What the analysis stage depends on in `analysis` ([] at the legacy value, as before the section)."""
    analysis = without_new_defaults(config["analysis"], ANALYSIS_LEGACY)
    return [analysis] if analysis else []


def without_new_defaults(settings: dict, defaults: dict) -> dict:
    """`settings` without the keys of `defaults` that hold exactly their default value."""
    def at_default(key, value) -> bool:
        return key in defaults and value == defaults[key] and isinstance(value, bool) == isinstance(defaults[key], bool)

    return {k: v for k, v in settings.items() if not at_default(k, v)}


def data_settings(config: dict, dataset: str) -> dict:
    """What the shards of `dataset` depend on."""
    ds = config["datasets"][dataset]
    return {**raw_settings(config, dataset), **{k: ds[k] for k in ("listing", "extract")}}


def data_owner(config: dict, dataset: str) -> str:
    """The configured dataset whose data folders (videos, shards, logs) `dataset` uses: the first one
    with the same data settings and clips. Datasets that differ only in `split` (an out-of-context test
    split, a validation split) share one copy of the data; the split is chosen when it is read. A name
    that is not configured (a Snakemake wildcard such as "{dataset}") is returned as it is."""
    datasets = config.get("datasets", {})
    if dataset not in datasets:
        return dataset

    def key(name: str) -> tuple:
        return data_settings(config, name), datasets[name]["clips"]

    own = key(dataset)
    return next(name for name in datasets if key(name) == own)


NOT_WEIGHTS = ("log_every", "checkpoint_every", "num_workers", "gpus", "nodes", "compile", "fused_optimizer",
               "monitor_every", "monitor_videos")


def pretrain_settings(config: dict, run: Run) -> dict:
    """What a pretraining run's weights depend on."""
    settings = {
        "run": run.name,
        "data": {**data_settings(config, run.dataset), "split": config["datasets"][run.dataset]["split"]},
        "clips": config["datasets"][run.dataset]["clips"],
        # how often to log / checkpoint, workers, GPU and node counts do not change the weights; nor
        # (beyond rounding, like `device`) do compiling and the fused optimiser kernel
        "pretrain": {k: v for k, v in config["pretrain"].items() if k not in NOT_WEIGHTS},
        "augment": config["augment"],
        "backbone": {"name": run.backbone, **config["backbones"].get(run.backbone, {})},
        "variant": {"name": run.variant, **config["variants"][run.variant]},
        "seed": run.seed,
    }
    if run.framework == "byol":
        byol = {k: v for k, v in config["frameworks"]["byol"].items() if k != "pretrain"}
        settings["framework"] = {"name": run.framework, **without_new_defaults(byol, BYOL_NEW_DEFAULTS)}
        # BYOL's own optimiser keys (since 0.2.0) enter the pretrain settings, as a variant's do
        settings["pretrain"] = {**settings["pretrain"], **config["frameworks"]["byol"]["pretrain"]}
    elif run.framework in config["frameworks"]:
        settings["framework"] = {"name": run.framework, **config["frameworks"][run.framework]}
    else:
        settings["framework"] = {"name": run.framework}
    _apply_variant_overrides(settings, config["variants"][run.variant], run.framework)
    settings["pretrain"] = without_new_defaults(settings["pretrain"], PRETRAIN_NEW_DEFAULTS)
    return settings


def run_pretrain_options(config: dict, settings: dict) -> dict:
    """The pretrain section a run trains with: the global keys, then its settings (a variant's
    overrides included; a new key left out of the settings at its default takes that default)."""
    return {**config["pretrain"], **PRETRAIN_NEW_DEFAULTS, **settings["pretrain"]}


def _apply_variant_overrides(settings: dict, variant: dict, framework: str) -> None:
    """A variant's `pretrain` / `frameworks.<name>` keys replace the global ones for its runs (a
    variant without them leaves `settings` exactly as before, so existing runs keep their hash)."""
    if variant.get("pretrain"):
        settings["pretrain"] = {**settings["pretrain"], **variant["pretrain"]}
    options = variant.get("frameworks", {}).get(framework)
    if options:
        settings["framework"] = {**settings["framework"], **options}


def settings_hash(settings: Any) -> str:
    return config_hash(settings)
