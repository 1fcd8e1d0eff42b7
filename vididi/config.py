"""Configuration: load YAML, fill defaults and validate against the JSON schema, expand runs.

One code path for the Snakefile and the CLI. It imports only PyYAML and jsonschema (both come
with Snakemake), so the Snakefile can use it on a host that has Snakemake but not torch. Without
jsonschema (a bare GPU host running benchmarks/gpu_check.sh) `resolve` fills in the schema's
defaults the same way and checks the cross references, but validates nothing else.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

try:
    import jsonschema
except ImportError:  # see the module docstring: defaults only, no validation
    jsonschema = None

from .names import BACKBONES, COMPARISON_FIGURES, FIGURES, LABEL_FIGURES
from .utils import VididiError, config_hash

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")  # package data; the Snakefile validates with it too
TRIMMED_SOURCES = ("synthetic", "ucf101", "hmdb51", "kinetics400", "folder")  # have labelled clips
UNTRIMMED_SOURCES = ("synthetic", "thumos14")  # have untrimmed videos with segments
NO_TRAINING = "random"  # framework: the randomly initialised encoder (the floor)
EXTERNAL = "external"  # framework: an encoder file from elsewhere (`checkpoint:`), evaluated like a run


class ConfigError(VididiError):
    """A config key or value is wrong; the message names the key and what is allowed."""


def load_config(paths: Iterable[str | Path], overrides: dict | None = None) -> dict:
    """Read YAML files (later ones update earlier ones, recursively), then `resolve`."""
    merged: dict = {}
    for path in paths:
        merged = deep_update(merged, read_config_file(path))
    return resolve(deep_update(merged, overrides or {}))


def read_config_file(path: str | Path) -> dict:
    """One YAML config file as a mapping (not yet validated). A missing file, text that is not YAML
    or a top level that is not a mapping is one line naming the file (and the line and column)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}{_yaml_position(exc)}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def _yaml_position(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's reason, with what it was parsing and where that began (its message spans lines)."""
    problem = getattr(exc, "problem", None)
    if problem is None:
        return str(exc).splitlines()[0]
    context, mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and mark is not None:
        return f"{problem} ({context} at line {mark.line + 1})"
    return f"{problem} ({context})" if context else problem


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
    if jsonschema is None:
        fill_defaults(config, schema())
        _check_references(config)
        return config
    validator = _validator()
    errors = _coerce_strings(validator, config)
    if errors:
        raise ConfigError(_describe(jsonschema.exceptions.best_match(errors)))
    _check_budgets(config)
    _check_references(config)
    return config


DEFAULT_STEPS = 1000  # the budget when neither pretrain.steps nor pretrain.epochs is given


def _check_budgets(config: dict) -> None:
    """Exactly one of pretrain.steps and pretrain.epochs (steps = DEFAULT_STEPS when neither is
    given), and at most one in each variant's overrides."""
    pre = config["pretrain"]
    if pre["steps"] is not None and pre["epochs"] is not None:
        raise ConfigError(f"config: pretrain: give steps or epochs, not both (steps: {pre['steps']}, epochs: {pre['epochs']}); "
                          "a file layered over one that sets steps sets `steps: null`")
    if pre["steps"] is None and pre["epochs"] is None:
        pre["steps"] = DEFAULT_STEPS
    for name, variant in config["variants"].items():
        if {"steps", "epochs"} <= set(variant.get("pretrain", {})):
            raise ConfigError(f"config: variants.{name}.pretrain: give steps or epochs, not both")


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
            if not error.absolute_path:
                continue
            value = _retyped(error)
            if value is not _KEEP:
                *parents, key = error.absolute_path
                target = config
                for part in parents:
                    target = target[part]
                target[key] = value
                fixed = True
        if not fixed:
            return errors
    return errors


_KEEP = object()


def _retyped(error: jsonschema.ValidationError) -> Any:
    """The value `error.instance` was meant to have, or _KEEP.

    - a command-line string where another type is wanted, read as YAML ("1000" -> 1000);
    - a string that is a float where a number is wanted: PyYAML reads YAML 1.1, where `1e-3` (no dot)
      is a string;
    - an integer or a date where a string is wanted (`results_dir: 2026`, `split: 2`); a float is left
      alone, its written form is lost (0.10 -> 0.1), and the message says to quote it.
    """
    instance, wanted = error.instance, _wanted_types(error)
    if isinstance(instance, str):
        try:
            value = yaml.safe_load(instance)
        except yaml.YAMLError:
            value = instance
        if not isinstance(value, str):
            return value
        if "number" in wanted:
            try:
                number = float(instance)
            except ValueError:
                return _KEEP
            return number if math.isfinite(number) else _KEEP
        return _KEEP
    if "string" in wanted and isinstance(instance, (int, datetime.date)) and not isinstance(instance, bool):
        return instance.isoformat() if isinstance(instance, datetime.date) else str(instance)
    return _KEEP


def _wanted_types(error: jsonschema.ValidationError) -> set[str]:
    """The JSON types the schema allows for the instance of a `type` error (or of a oneOf / anyOf of them)."""
    if error.validator == "type":
        value = error.validator_value
        return {value} if isinstance(value, str) else set(value)
    if error.validator in ("oneOf", "anyOf"):
        return set().union(*(_wanted_types(sub) for sub in error.context if not sub.relative_path))
    return set()


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


def fill_defaults(instance, subschema: dict) -> None:
    """Insert the schema's defaults into `instance` in place, as the validator of `_validator` does
    (a default inserted is filled in turn); the jsonschema-free path of `resolve`."""
    if "$ref" in subschema:
        subschema = {**_resolve_ref(subschema["$ref"]), **{k: v for k, v in subschema.items() if k != "$ref"}}
    if isinstance(instance, dict):
        properties = subschema.get("properties", {})
        for key, prop in properties.items():
            if isinstance(prop, dict) and "default" in prop and key not in instance:
                instance[key] = copy.deepcopy(prop["default"])
        extra = subschema.get("additionalProperties")
        for key, value in instance.items():
            if key in properties:
                fill_defaults(value, properties[key])
            elif isinstance(extra, dict):
                fill_defaults(value, extra)
    elif isinstance(instance, list) and isinstance(subschema.get("items"), dict):
        for item in instance:
            fill_defaults(item, subschema["items"])


def _describe(error: jsonschema.ValidationError) -> str:
    """One line naming the key and what is allowed."""
    where = _path(error.absolute_path)
    sub = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(sub.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        dotted = [key for key in extra if isinstance(key, str) and key.split(".")[0] in allowed and "." in key]
        if dotted:
            keys = [*error.absolute_path, *dotted[0].split(".")]
            return f"config: {where}: unknown key {dotted[0]!r}: {_nested_form(keys, error.instance[dotted[0]])}"
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
    if error.validator == "minItems" and error.instance == []:
        return f"config: {where}: the list is empty (it needs at least {error.validator_value} entry)"
    if error.validator == "type" and isinstance(error.instance, float) and "string" in _wanted_types(error):
        return f"config: {where}: {error.message} (write it in quotes)"
    return f"config: {where}: {error.message}"


def _nested_form(keys: list, value: Any) -> str:
    """How a dotted key (`pretrain.steps: 3`) is written: nested in a file, a YAML mapping after
    Snakemake's --config (whose parser refuses dots in a key)."""
    first, *rest = keys
    inner: Any = value
    for part in reversed(rest):
        inner = {part: inner}
    flow = lambda obj: yaml.safe_dump(obj, default_flow_style=True, width=1 << 16).strip()
    if any(isinstance(k, int) for k in keys):  # inside a list: no command-line form
        return f"write it nested, {flow({first: inner})}"
    return f"write it nested, {flow({first: inner})} (on the command line: --config {first}='{flow(inner)}')"


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
    """One pretraining run: dataset x framework x variant x backbone x seed. An external run
    (framework `external`) names an encoder file in `checkpoint`; its variant is a free label."""

    dataset: str
    framework: str
    variant: str
    backbone: str
    seed: int
    eval_datasets: tuple[str, ...]
    checkpoint: str | None = None

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
            run = Run(dataset, framework, variant, backbone, seed, evals, entry.get("checkpoint"))
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
        external = EXTERNAL in _as_list(entry["framework"])
        if external and _as_list(entry["framework"]) != [EXTERNAL]:
            raise ConfigError(f"config: runs[{i}].framework: {EXTERNAL!r} stands alone in its entry (it names one checkpoint)")
        if external != ("checkpoint" in entry):
            raise ConfigError(f"config: runs[{i}]: " + ("framework external needs checkpoint: <path of an encoder file>"
                                                        if external else "checkpoint is only for framework external"))
        for key, known in (("dataset", datasets), ("variant", variants), ("backbone", BACKBONES)):
            if key == "variant" and external:
                continue  # an external run's variant is its label
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
            options = _unresolved_pretrain_settings(config, run)["framework"]
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
    fractions = len(label_fractions(config)) > 1
    return [name for name in FIGURES
            if (comparison or name not in COMPARISON_FIGURES) and (fractions or name not in LABEL_FIGURES)]


def raw_settings(config: dict, dataset: str) -> dict:
    """What the raw (generated or downloaded) videos of `dataset` depend on."""
    ds = config["datasets"][dataset]
    out = {k: ds[k] for k in ("source", "root")}
    if ds["source"] == "synthetic":
        out.update(seed=ds["seed"], synthetic=without_new_defaults(ds["synthetic"], SYNTHETIC_NEW_DEFAULTS))
    return out


# Keys added after results were published (0.1.0), with the value that reproduces the older
# behaviour. At that value they are left out of settings hashes and recorded settings, so outputs made
# before the keys existed stay valid where the behaviour did not change (a default dataset is
# byte-identical to an older one). The dataset and BYOL keys default to that value; the evaluation
# keys (*_LEGACY) now default to the 0.1.0 protocol, so their outputs are remade once, and the
# legacy value (configs/legacy-protocol.yaml) reproduces an older table.
SYNTHETIC_NEW_DEFAULTS = {"scene_bias": 0, "scene_pool": 8, "ooc_split": False, "scenes": "exact"}
BYOL_NEW_DEFAULTS = {"tau_final": 1.0}
AUGMENT_NEW_DEFAULTS = {"background_erasing": {"p": 0, "max_weight": 0.3}, "fame": {"p": 0, "foreground": 0.3}}
# since 0.2.0 (the BYOL study): the LARS trust coefficient and the predictor's learning-rate scale
PRETRAIN_NEW_DEFAULTS = {"lars_eta": 0.001, "predictor_lr_scale": 1.0}
EVALUATION_LEGACY = {"target_encoder": False}
DETECTION_LEGACY = {"c_selection": "windows"}
ANALYSIS_LEGACY = {"cam_target": "feature_norm"}
PROBE_NEW_DEFAULTS = {"solver": "sklearn"}  # since 0.3: the torch probe for large feature sets


def evaluation_settings(config: dict) -> dict:
    """What evaluation outputs depend on in `evaluation` (0.1.0 keys at their legacy values left out)."""
    ev = without_new_defaults(evaluation_section(config), EVALUATION_LEGACY)
    return {**ev, "probe": without_new_defaults(ev["probe"], PROBE_NEW_DEFAULTS),
            "detection": without_new_defaults(ev["detection"], DETECTION_LEGACY)}


def analysis_settings(config: dict) -> list:
    """What the analysis stage depends on in `analysis` ([] at the legacy value, as before the section)."""
    analysis = without_new_defaults(config["analysis"], ANALYSIS_LEGACY)
    return [analysis] if analysis else []


def without_new_defaults(settings: dict, defaults: dict) -> dict:
    """`settings` without the keys of `defaults` that hold exactly their default value."""
    def at_default(key, value) -> bool:
        return key in defaults and value == defaults[key] and isinstance(value, bool) == isinstance(defaults[key], bool)

    return {k: v for k, v in settings.items() if not at_default(k, v)}


# Keys that decide whether a stage fails, not what it writes: a changed tolerance re-runs nothing (a
# dataset whose index failed re-runs its index job anyway, since that job's output is missing).
NOT_CONTENT = {"extract": ("max_bad_fraction",)}


def data_settings(config: dict, dataset: str) -> dict:
    """What the shards of `dataset` depend on."""
    ds = config["datasets"][dataset]
    extract = {k: v for k, v in ds["extract"].items() if k not in NOT_CONTENT["extract"]}
    return {**raw_settings(config, dataset), "listing": ds["listing"], "extract": extract}


def index_settings(config: dict, dataset: str) -> list:
    """What index.tsv and dataset.json depend on: the shards, and the clip shape the scales are measured at."""
    return [data_settings(config, dataset), config["datasets"][dataset]["clips"]]


def numerics(config: dict) -> dict:
    """What float rounding depends on beyond the settings: on a CPU the torch thread count changes the
    reduction order, hence the last bits of gradients and features (1 vs 2 threads: the same VICReg
    loss, other gradients), which training amplifies. On CUDA the CPU threads only feed the loader."""
    return {} if config["device"] == "cuda" else {"threads": config["threads"]}


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


NOT_WEIGHTS = ("log_every", "checkpoint_every", "num_workers", "gpus", "nodes", "compile", "fused_optimizer", "augment_on",
               "monitor_every", "monitor_videos")


def pretrain_settings(config: dict, run: Run) -> dict:
    """What a pretraining run's weights depend on (an external run: what its imported final.pt depends
    on). A budget in epochs is resolved to its steps (the dataset's manifest must exist), so the
    settings, and their hash, hold steps whichever unit the config uses."""
    if run.framework == EXTERNAL:
        return external_settings(config, run)
    settings = _unresolved_pretrain_settings(config, run)
    settings["pretrain"] = resolve_budget(settings["pretrain"], config, run.dataset)
    overrides = settings["variant"].get("pretrain", {})
    if "epochs" in overrides:  # the variant's record too: the same budget in steps has the same hash
        settings["variant"]["pretrain"] = {**{k: v for k, v in overrides.items() if k != "epochs"}, "steps": settings["pretrain"]["steps"]}
    return settings


def budget_in_epochs(config: dict, run: Run) -> bool:
    """Whether `run`'s budget (after its variant's overrides) is given in epochs."""
    return run.framework != EXTERNAL and _unresolved_pretrain_settings(config, run)["pretrain"].get("epochs") is not None


def resolve_budget(pretrain: dict, config: dict, dataset: str) -> dict:
    """`pretrain` settings with the budget in steps: epochs E over N training videos at batch B are
    ceil(E * N / B) steps (at least E passes). N is counted in the dataset's manifest (`train_videos`),
    which exists before any run is planned to train; the `epochs` key is dropped either way."""
    out = {k: v for k, v in pretrain.items() if k != "epochs"}
    epochs = pretrain.get("epochs")
    if epochs is not None:
        out["steps"] = epochs_to_steps(epochs, train_videos(config, dataset), pretrain["batch_size"])
    return out


def epochs_to_steps(epochs: float, videos: int, batch_size: int) -> int:
    if videos < 1:
        raise ConfigError(f"a budget of {epochs:g} epochs needs training videos; the split lists none")
    return max(1, math.ceil(round(epochs * videos / batch_size, 6)))  # round: 100 * 288 / 32 is 900, not 901


def train_videos(config: dict, dataset: str) -> int:
    """The trimmed training videos of `dataset`'s split as its manifest lists them: what an epoch
    counts (videos that turn out unreadable, at most extract.max_bad_fraction, included)."""
    from .layout import read_manifest  # layout imports this module

    split = config["datasets"][dataset]["split"]
    member = f"{split}:train"
    return sum(1 for v in read_manifest(config, dataset)["videos"] if not v["untrimmed"] and member in v["splits"].split(","))


def _unresolved_pretrain_settings(config: dict, run: Run) -> dict:
    """`pretrain_settings` with the budget as configured: `steps` or `epochs` (the other None)."""
    settings = {
        "run": run.name,
        "data": {**data_settings(config, run.dataset), "split": config["datasets"][run.dataset]["split"]},
        "clips": config["datasets"][run.dataset]["clips"],
        # how often to log / checkpoint, workers, GPU and node counts do not change the weights; nor
        # (beyond rounding, like `device`) do compiling, the fused optimiser kernel and where the
        # clips are augmented
        "pretrain": {k: v for k, v in config["pretrain"].items() if k not in NOT_WEIGHTS},
        # a variant's scene augmentations override the global ones; at their defaults (off) they are left
        # out, so runs from before they existed keep their hash
        "augment": without_new_defaults(deep_update(config["augment"], config["variants"][run.variant].get("augment", {})),
                                        AUGMENT_NEW_DEFAULTS),
        "backbone": {"name": run.backbone, **config["backbones"].get(run.backbone, {})},
        "variant": {"name": run.variant, **config["variants"][run.variant]},
        "seed": run.seed,
    }
    if numerics(config):
        settings["numerics"] = numerics(config)
    if run.framework == "byol":
        byol = {k: v for k, v in config["frameworks"]["byol"].items() if k != "pretrain"}
        settings["framework"] = {"name": run.framework, **without_new_defaults(byol, BYOL_NEW_DEFAULTS)}
        # BYOL's own optimiser keys (since 0.2.0) enter the pretrain settings, as a variant's do
        settings["pretrain"] = _override_pretrain(settings["pretrain"], config["frameworks"]["byol"]["pretrain"])
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
        settings["pretrain"] = _override_pretrain(settings["pretrain"], variant["pretrain"])
    options = variant.get("frameworks", {}).get(framework)
    if options:
        settings["framework"] = {**settings["framework"], **options}


def _override_pretrain(pretrain: dict, overrides: dict) -> dict:
    """`pretrain` with `overrides` (a framework's or a variant's keys); a budget replaces the other unit."""
    if not overrides:
        return pretrain
    budget = {"steps": None, "epochs": None} if {"steps", "epochs"} & set(overrides) else {}
    return {**pretrain, **budget, **overrides}


def run_hash(settings: dict, data_content: str) -> str:
    """The identity of a run's weights: its settings (`pretrain_settings`) and the content of the data
    it trains on (dataset.json's `content`, a digest of every frame). A rebuilt shard with the same
    frames keeps it; frames that changed under the same settings (new source videos, another ffmpeg)
    change it. Stored in last.pt, final.pt and train_info.json; the pretrain rule's parameter."""
    return settings_hash({**settings, "data_content": data_content})


def eval_settings(config: dict, eval_dataset: str) -> dict:
    """What the features of a run on `eval_dataset`, and the metrics computed from them, depend on
    beyond the run itself (whose weights come in through final.pt)."""
    ds = config["datasets"][eval_dataset]
    out = {"evaluation": evaluation_settings(config), "clips": ds["clips"], "split": ds["split"]}
    return {**out, "numerics": numerics(config)} if numerics(config) else out


def attention_settings(config: dict, eval_dataset: str) -> list:
    """What the attention stage's numbers and maps depend on beyond the features file."""
    return [eval_settings(config, eval_dataset), config["figures"], *analysis_settings(config)]


def settings_hash(settings: Any) -> str:
    return config_hash(settings)


# --------------------------------------------------------------------------------------------------
# Fine-tuning, label efficiency, external encoders, export

# Evaluation keys that only add outputs (fine-tuning, label fractions): left out of the settings of the
# outputs that existed before them, so those keep their hashes and recorded settings.
LABEL_EFFICIENCY_KEYS = ("finetune", "label_fractions", "label_seed")
EXPORT_FORMAT = "vididi-encoder/1"  # the card's `format`: bump it when the exported file changes meaning


def evaluation_section(config: dict) -> dict:
    """config["evaluation"] without the fine-tuning and label-fraction keys (the settings the metric
    files recorded before those keys existed)."""
    return {k: v for k, v in config["evaluation"].items() if k not in LABEL_EFFICIENCY_KEYS}


def label_fractions(config: dict) -> list[float]:
    """The label fractions evaluated: `evaluation.label_fractions` and 1.0 (all labels), ascending."""
    return sorted({float(f) for f in config["evaluation"]["label_fractions"]} | {1.0})


def format_fraction(fraction: float | str) -> str:
    """0.1 -> "0.1", 1.0 -> "1" (file names, summary columns); a string (a wildcard) is kept."""
    return fraction if isinstance(fraction, str) else f"{float(fraction):g}"


def finetune_stages(config: dict, dataset: str) -> bool:
    """Whether runs are fine-tuned on evaluation dataset `dataset` (`evaluation.finetune`, labelled clips)."""
    return bool(config["evaluation"]["finetune"]) and has_trimmed(config, dataset)


def run_evaluations(config: dict, run: Run) -> list[tuple[str, str, float]]:
    """(stage, evaluation dataset, label fraction) of every metric file the config asks of `run`:
    the metric stages and the attention analysis with all labels, the probe at every label fraction,
    and fine-tuning (`evaluation.finetune`) at every fraction."""
    out = []
    for eval_dataset in run.eval_datasets:
        trimmed = has_trimmed(config, eval_dataset)
        out += [(stage, eval_dataset, 1.0) for stage in metric_stages(config, eval_dataset) + (["attention"] if trimmed else [])]
        fractions = label_fractions(config) if trimmed else []
        out += [("probe", eval_dataset, f) for f in fractions if f < 1.0]
        if finetune_stages(config, eval_dataset):
            out += [("finetune", eval_dataset, f) for f in fractions]
    return out


def label_subset_settings(config: dict, fraction: float) -> dict:
    """What the labelled subset of the train split depends on beyond the dataset ({} for all labels)."""
    fraction = float(fraction)
    return {} if fraction == 1.0 else {"label_fraction": fraction, "label_seed": config["evaluation"]["label_seed"]}


# the fine-tuning keys that do not change the weights
FINETUNE_NOT_WEIGHTS = ("checkpoint_every",)


def finetune_augment(config: dict) -> dict:
    """Fine-tuning's augmentation: the random resized crop and flip of `augment`, no colour jitter or
    grayscale (the field's fine-tuning recipes crop and flip only)."""
    aug = config["augment"]
    return {**aug, "color_jitter": {**aug["color_jitter"], "p": 0.0}, "grayscale": 0.0}


def finetune_settings(config: dict, run: Run, eval_dataset: str, fraction: float = 1.0) -> dict:
    """What a fine-tuning result (metrics/[labels-<f>/]finetune-<eval_dataset>.json) depends on beyond
    its input files (the run's final.pt, the indexes): the rule hashes it, the stage records it."""
    ds, ev = config["datasets"][eval_dataset], config["evaluation"]
    return {
        "run": run.name, "eval_dataset": eval_dataset,
        "data": {**data_settings(config, eval_dataset), "split": ds["split"]}, "clips": ds["clips"],
        # the encoder fine-tuning starts from is the one every evaluation sees (BatchNorm recalibrated)
        "start": {k: ev[k] for k in ("bn_recalibration", "bn_recalibration_clips")},
        "finetune": {k: v for k, v in config["finetune"].items() if k not in FINETUNE_NOT_WEIGHTS},
        "precision": {k: config["pretrain"][k] for k in ("precision", "channels_last")},
        "augment": finetune_augment(config),
        **label_subset_settings(config, fraction),
        "seed": run.seed,
        **({"numerics": numerics(config)} if numerics(config) else {}),  # the thread count, as for pretraining
    }  # fmt: skip


def export_settings(config: dict, run: Run) -> dict:
    """What an exported encoder file depends on: the run's weights (its pretraining settings) and the
    BatchNorm recalibration that evaluation applies before it (the file holds the recalibrated statistics)."""
    ev = config["evaluation"]
    return {"format": EXPORT_FORMAT, "run": run.name, "pretrain": pretrain_settings(config, run),
            "bn_recalibration": {k: ev[k] for k in ("bn_recalibration", "bn_recalibration_clips")}}  # fmt: skip


def external_settings(config: dict, run: Run) -> dict:
    """What an external run's final.pt depends on: the encoder file's content (sha256 of it and of its
    card), or, for a file this workflow exports from a configured run, that export's settings (known
    before the file exists); the backbone; and the data whose statistics normalise a bare state dict."""
    from . import layout  # layout imports this module

    path = Path(run.checkpoint)
    source = next((r for r in expand_runs(config) if r.framework != EXTERNAL and
                   Path(layout.export_file(config, r)).resolve() == path.resolve()), None)  # fmt: skip
    if source is not None:
        content = {"export_of": export_settings(config, source)}
    else:
        content = {"sha256": file_digest(path), "card_sha256": file_digest(layout.export_card(path))}
    return {
        "run": run.name, "framework": {"name": EXTERNAL}, "checkpoint": {"path": str(run.checkpoint), **content},
        "backbone": {"name": run.backbone, **config["backbones"].get(run.backbone, {})},
        "data": {**data_settings(config, run.dataset), "split": config["datasets"][run.dataset]["split"]},
        "clips": config["datasets"][run.dataset]["clips"],
    }  # fmt: skip


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | Path) -> str | None:
    """sha256 of a file's bytes (None when it does not exist), cached by (path, size, mtime)."""
    import hashlib

    path = Path(path)
    if not path.is_file():
        return None
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]
