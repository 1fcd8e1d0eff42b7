"""Config loading and validation: one-line errors naming the key, defaults, merging, and the CLI's exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vididi.config import ConfigError, Run, expand_runs, load_config, resolve

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"

BAD_CONFIGS = {  # id: (config, key path the message must name, what the message must offer)
    "unknown top-level key": ({"foo": 1}, "(top level)", ["unknown key 'foo'", "allowed:", "pretrain", "datasets"]),
    "unknown nested key": (
        {"datasets": {"synthetic": {"source": "synthetic", "extract": {"short_sid": 64}}}},
        "datasets.synthetic.extract",
        ["unknown key 'short_sid'", "allowed:", "short_side"],
    ),
    "unknown key in a run": (
        {"runs": [{"dataset": "synthetic", "framwork": "vicreg"}]},
        "runs[0]",
        ["'framwork'", "framework"],
    ),
    "wrong enum": (
        {"datasets": {"synthetic": {"source": "synthetic", "extract": {"encoding": "png"}}}},
        "datasets.synthetic.extract.encoding",
        ["'png'", "jpeg", "raw"],
    ),
    "wrong enum in a list": (
        {"runs": [{"dataset": "synthetic", "framework": ["vicreg", "dino"]}]},
        "runs[0].framework[1]",
        ["'dino'", "simclr", "byol", "vicreg"],
    ),
    "wrong enum or list": (
        {"runs": [{"dataset": "synthetic", "framework": "dino"}]},
        "runs[0].framework",
        ["'dino'", "simclr", "byol", "vicreg"],
    ),
    "wrong source": ({"datasets": {"mine": {"source": "youtube"}}}, "datasets.mine.source", ["'youtube'", "folder"]),
    "wrong type": ({"pretrain": {"steps": "ten"}}, "pretrain.steps", ["'ten'", "integer"]),
    "float for an integer": ({"threads": 1.5}, "threads", ["1.5", "integer"]),
    "mapping expected": ({"datasets": []}, "datasets", ["object"]),
    "below the minimum": ({"pretrain": {"steps": 0}}, "pretrain.steps", ["minimum of 1"]),
    "above the maximum": ({"augment": {"color_jitter": {"hue": 0.7}}}, "augment.color_jitter.hue", ["maximum of 0.5"]),
    "missing required key": ({"datasets": {"mine": {"root": "/videos"}}}, "datasets.mine", ["'source'", "required"]),
    "undefined run dataset": (
        {"runs": [{"dataset": "nope", "framework": "vicreg"}]},
        "runs[0].dataset",
        ["'nope'", "not defined", "synthetic"],
    ),
    "undefined run variant": (
        {"runs": [{"dataset": "synthetic", "framework": "vicreg", "variant": "fancy"}]},
        "runs[0].variant",
        ["'fancy'", "base", "vididi"],
    ),
    "unknown backbone": (
        {"runs": [{"dataset": "synthetic", "framework": "vicreg", "backbone": "resnet"}]},
        "runs[0].backbone",
        ["'resnet'", "small3d", "r3d_18"],
    ),
    "undefined evaluation dataset": (
        {"runs": [{"dataset": "synthetic", "framework": "vicreg", "eval_datasets": ["ucf"]}]},
        "runs[0].eval_datasets",
        ["'ucf'", "synthetic"],
    ),
    "pretraining on detection-only data": (
        {"datasets": {"synthetic": {"source": "synthetic"}, "th": {"source": "thumos14"}},
         "runs": [{"dataset": "th", "framework": "vicreg"}]},
        "runs[0].dataset",
        ["'th'", "no labelled clips"],
    ),  # fmt: skip
    "frames-only framework with a ViDiDi schedule": (
        {"runs": [{"dataset": "synthetic", "framework": "supervised", "variant": "vididi"}]},
        "runs[0]",
        ["'supervised'", "frames_only", "'vididi'"],
    ),
    "undefined figure variant": ({"figures": {"baseline": "nope"}}, "figures.baseline", ["'nope'"]),
    "budget in steps and in epochs": ({"pretrain": {"steps": 300, "epochs": 10}}, "pretrain", ["steps or epochs, not both", "steps: null"]),
    "a variant's budget in both units": (
        {"variants": {"long": {"pretrain": {"steps": 900, "epochs": 100}}}},
        "variants.long.pretrain",
        ["steps or epochs, not both"],
    ),
    "epochs not positive": ({"pretrain": {"steps": None, "epochs": 0}}, "pretrain.epochs", ["0"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_one_line_naming_the_key(case):
    config, key, offers = BAD_CONFIGS[case]
    with pytest.raises(ConfigError) as info:
        resolve(config)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"config: {key}:"), message
    for fragment in offers:
        assert fragment in message, (fragment, message)


def test_defaults_are_filled():
    config = resolve({})
    assert config["threads"] == 2 and config["data_dir"] == "data" and config["results_dir"] == "results"
    assert config["pretrain"]["steps"] == 1000 and config["pretrain"]["lr"] == 0.001
    assert config["pretrain"]["grad_clip"] is None and config["pretrain"]["num_workers"] == 2
    assert config["variants"] == {"base": {"schedule": "frames_only", "scaling": "dataset"},
                                  "vididi": {"schedule": "all9", "scaling": "dataset"}}  # fmt: skip
    synthetic = config["datasets"]["synthetic"]
    assert synthetic["root"] is None and synthetic["split"] == "1" and synthetic["seed"] == 0
    assert synthetic["extract"] == {"fps": None, "short_side": 128, "shard_size": 128, "encoding": "jpeg",
                                    "jpeg_quality": 90, "max_bad_fraction": 0.05}  # fmt: skip
    assert synthetic["clips"] == {"frames": 16, "stride": 2, "size": 112, "eval_clips": 10, "sigma_clips": 256}
    assert synthetic["synthetic"]["untrimmed"]["segments"] == [2, 3]
    assert config["augment"]["color_jitter"]["p"] == 0.8 and config["augment"]["grayscale"] == 0.2
    assert config["runs"] == [{"dataset": "synthetic", "framework": "vicreg", "variant": ["base", "vididi"],
                               "backbone": "small3d", "seed": 0}]  # fmt: skip


def test_defaults_inside_user_entries_and_given_values_kept():
    config = resolve({
        "datasets": {"mine": {"source": "folder", "root": "/videos", "extract": {"short_side": 64}}},
        "runs": [{"dataset": "mine", "framework": "byol"}],
    })  # fmt: skip
    assert list(config["datasets"]) == ["mine"]  # a user's datasets replace the default one
    mine = config["datasets"]["mine"]
    assert mine["extract"]["short_side"] == 64 and mine["extract"]["shard_size"] == 128
    assert mine["clips"]["frames"] == 16 and mine["listing"] == {}
    assert config["runs"][0]["variant"] == "base" and config["runs"][0]["seed"] == 0
    assert config["frameworks"]["byol"]["tau_base"] == 0.99


def test_defaults_are_fresh_copies():
    first = resolve({})
    first["augment"]["crop_scale"].append(0.5)
    first["datasets"]["synthetic"]["synthetic"]["classes"].clear()
    second = resolve({})
    assert second["augment"]["crop_scale"] == [0.4, 1.0]
    assert len(second["datasets"]["synthetic"]["synthetic"]["classes"]) == 8


def test_resolve_does_not_change_its_argument():
    given = {"pretrain": {"steps": 5}}
    resolve(given)
    assert given == {"pretrain": {"steps": 5}}


def test_load_config_merges_files_later_wins(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(yaml.safe_dump({
        "threads": 4,
        "pretrain": {"steps": 10, "lr": 0.1},
        "datasets": {"synthetic": {"source": "synthetic", "extract": {"short_side": 64}, "clips": {"stride": 4}}},
        "runs": [{"dataset": "synthetic", "framework": "simclr"}, {"dataset": "synthetic", "framework": "byol"}],
    }))  # fmt: skip
    second.write_text(yaml.safe_dump({
        "pretrain": {"steps": 20},
        "datasets": {"synthetic": {"clips": {"frames": 8}}},
        "runs": [{"dataset": "synthetic", "framework": "vicreg"}],
    }))  # fmt: skip
    config = load_config([first, second])
    assert config["threads"] == 4
    assert (config["pretrain"]["steps"], config["pretrain"]["lr"]) == (20, 0.1)  # nested mappings merge
    synthetic = config["datasets"]["synthetic"]
    assert synthetic["extract"]["short_side"] == 64
    assert (synthetic["clips"]["stride"], synthetic["clips"]["frames"]) == (4, 8)
    assert [r["framework"] for r in config["runs"]] == ["vicreg"]  # lists are replaced, not merged
    reverse = load_config([second, first])
    assert reverse["pretrain"]["steps"] == 10 and [r["framework"] for r in reverse["runs"]] == ["simclr", "byol"]
    overridden = load_config([first, second], overrides={"pretrain": {"lr": 0.5}})
    assert (overridden["pretrain"]["steps"], overridden["pretrain"]["lr"]) == (20, 0.5)


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "absent.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("threads: 2\npretrain:\n  steps: 3\n   lr: 0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config([broken])
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{broken}:4:"), info.value  # the file, the line, the column
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config([listing])
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    assert load_config([empty]) == resolve({})


def test_repository_config_is_valid():
    repo = Path(__file__).resolve().parents[1]
    config = load_config([repo / "config.yaml"])
    assert [r.name for r in expand_runs(config)] == ["vicreg-base-small3d-s0", "vicreg-vididi-small3d-s0"]


def test_runs_expand_to_the_product_without_duplicates():
    config = resolve({
        "runs": [
            {"dataset": "synthetic", "framework": ["simclr", "vicreg"], "variant": ["base", "vididi"], "seed": [0, 1]},
            {"dataset": "synthetic", "framework": "vicreg", "variant": "base", "seed": 0},  # already listed
        ]
    })  # fmt: skip
    runs = expand_runs(config)
    assert len(runs) == 8
    assert runs[0] == Run("synthetic", "simclr", "base", "small3d", 0, ("synthetic",))
    names = {f"{f}-{v}-small3d-s{s}" for f in ("simclr", "vicreg") for v in ("base", "vididi") for s in (0, 1)}
    assert {r.name for r in runs} == names


# --------------------------------------------------------------------------------------------------
# The CLI: a bad config is one line on stderr and exit status 2


def cli_env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "VIDIDI_NO_PROGRESS": "1"}


@pytest.mark.parametrize("launcher", [[sys.executable, "-m", "vididi.cli"], ["vididi"]], ids=["module", "script"])
def test_cli_bad_config_exits_2_with_one_line(tmp_path, launcher):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  synthetic:\n    source: synthetic\n    extract:\n      encoding: png\n")
    done = subprocess.run([*launcher, "manifest", "--config", str(bad), "--dataset", "synthetic"],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines == [
        "vididi manifest: error: config: datasets.synthetic.extract.encoding: 'png' is not allowed (allowed: jpeg, raw)"
    ]


def test_cli_unknown_dataset_and_missing_config(tmp_path):
    good = tmp_path / "config.yaml"
    good.write_text("threads: 1\n")
    done = subprocess.run(["vididi", "index", "--config", str(good), "--dataset", "ucf"],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["vididi index: error: dataset 'ucf' is not in the config (datasets: synthetic)"]
    # without --config the CLI reads ./config.yaml; here there is none
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(["vididi", "manifest", "--dataset", "synthetic"],
                          cwd=empty, env=cli_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["vididi manifest: error: config file config.yaml not found"]


# --------------------------------------------------------------------------------------------------
# Overrides from the command line: Snakemake's --config and `vididi <stage> --set` type by the schema


def test_command_line_strings_take_the_schema_types():
    # what `snakemake --config pretrain='{steps: 1000, ...}'` hands over: every nested value a string
    config = resolve({
        "pretrain": {"steps": "1000", "lr": "0.01", "channels_last": "false", "grad_clip": "null"},
        "augment": {"crop_scale": "[0.5, 1.0]"},
        "runs": [{"dataset": "synthetic", "framework": "vicreg", "seed": "[1, 2]"}],
        "data_dir": "123",  # a string where the schema wants one stays a string
    })  # fmt: skip
    pre = config["pretrain"]
    assert (pre["steps"], pre["lr"], pre["channels_last"], pre["grad_clip"]) == (1000, 0.01, False, None)
    assert config["augment"]["crop_scale"] == [0.5, 1.0]
    assert config["runs"][0]["seed"] == [1, 2] and config["data_dir"] == "123"
    with pytest.raises(ConfigError, match=r"^config: pretrain.steps: 'ten' is not of type 'integer', 'null'$"):
        resolve({"pretrain": {"steps": "ten"}})


def test_set_overrides_dotted_keys_and_yaml_mappings(tmp_path):
    from vididi.config import parse_overrides

    assert parse_overrides(["pretrain.steps=1000", "pretrain={lr: 0.1}", "threads=1"]) == {
        "pretrain": {"steps": "1000", "lr": "0.1"}, "threads": "1"}  # fmt: skip
    config = load_config([REPO_CONFIG], overrides=parse_overrides(["pretrain.steps=1000", "augment={crop_scale: [0.5, 1]}"]))
    assert config["pretrain"]["steps"] == 1000 and config["augment"]["crop_scale"] == [0.5, 1]
    assert config["pretrain"]["batch_size"] == 32  # the rest of config.yaml's pretrain section is kept
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["pretrain.steps"])

    # the CLI: a bad override stops with one line naming the key
    done = subprocess.run([sys.executable, "-m", "vididi.cli", "manifest", "--config", str(REPO_CONFIG), "--dataset",
                           "synthetic", "--set", "pretrain.steps=0"],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["vididi manifest: error: config: pretrain.steps: 0 is less than the minimum of 1"]


def test_datasets_that_differ_only_in_split_share_their_data_folders(tmp_path):
    import vididi.layout as L
    from vididi.config import data_owner

    config = load_config([REPO_CONFIG, REPO_CONFIG.parent / "configs" / "scene-bias.yaml"])
    assert [data_owner(config, d) for d in ("sb0", "sb0_ooc", "sb50_ooc")] == ["sb0", "sb0", "sb50"]
    assert L.shard_dir(config, "sb0_ooc") == L.shard_dir(config, "sb0") != L.shard_dir(config, "sb50")
    assert L.raw_dir(config, "sb90_ooc") == L.raw_dir(config, "sb90")
    assert L.shard_dir(config, "{dataset}").name == "{dataset}"  # Snakemake patterns pass through
    # anything the data depend on (here the user's own video folder, or the clips) keeps them apart
    other = resolve({**config, "datasets": {**config["datasets"], "sb0_ooc": {**config["datasets"]["sb0_ooc"], "root": str(tmp_path)}}})
    assert data_owner(other, "sb0_ooc") == "sb0_ooc" and L.raw_dir(other, "sb0_ooc") == tmp_path
    clips = {**config["datasets"]["sb0"]["clips"], "frames": 4}
    other = resolve({**config, "datasets": {**config["datasets"], "sb0_ooc": {**config["datasets"]["sb0_ooc"], "clips": clips}}})
    assert data_owner(other, "sb0_ooc") == "sb0_ooc"


# --------------------------------------------------------------------------------------------------
# What YAML 1.1 and hand-written files hand over


def test_yaml_literals_take_the_schema_types(tmp_path):
    """PyYAML reads YAML 1.1: `1e-3` (no dot) is a string, `2026` an integer, `2026-01-31` a date."""
    given = tmp_path / "config.yaml"
    given.write_text("results_dir: 2026\ndata_dir: 2026-01-31\npretrain:\n  lr: 1e-3\n  weight_decay: 5E-2\n"
                     "evaluation:\n  probe:\n    Cs: [1e-4, 1e2, 1]\n"
                     "datasets:\n  synthetic:\n    source: synthetic\n    split: 2\n")  # fmt: skip
    config = load_config([given])
    assert config["pretrain"]["lr"] == 0.001 and config["pretrain"]["weight_decay"] == 0.05
    assert config["evaluation"]["probe"]["Cs"] == [0.0001, 100.0, 1]
    assert (config["results_dir"], config["data_dir"]) == ("2026", "2026-01-31")
    assert config["datasets"]["synthetic"]["split"] == "2"


@pytest.mark.parametrize("config, message", [
    ({"pretrain": {"lr": "1e-3x"}}, "config: pretrain.lr: '1e-3x' is not of type 'number'"),
    ({"pretrain": {"lr": "inf"}}, "config: pretrain.lr: 'inf' is not of type 'number'"),
    ({"pretrain": {"steps": "1e3"}}, "config: pretrain.steps: '1e3' is not of type 'integer', 'null'"),
    ({"results_dir": 1.5}, "config: results_dir: 1.5 is not of type 'string' (write it in quotes)"),
    ({"results_dir": True}, "config: results_dir: True is not of type 'string'"),
    ({"runs": []}, "config: runs: the list is empty (it needs at least 1 entry)"),
    ({"pretrain.steps": 3}, "config: (top level): unknown key 'pretrain.steps': write it nested, {pretrain: {steps: 3}} "
                            "(on the command line: --config pretrain='{steps: 3}')"),
    ({"datasets": {"synthetic": {"source": "synthetic", "extract.fps": 5}}},
     "config: datasets.synthetic: unknown key 'extract.fps': write it nested, {datasets: {synthetic: {extract: {fps: 5}}}} "
     "(on the command line: --config datasets='{synthetic: {extract: {fps: 5}}}')"),
], ids=["not a number", "not finite", "float for an integer", "float for a string", "boolean for a string",
        "no runs", "dotted key", "nested dotted key"])  # fmt: skip
def test_what_stays_an_error_is_one_line(config, message):
    with pytest.raises(ConfigError) as info:
        resolve(config)
    assert str(info.value) == message


@pytest.mark.parametrize("layers", [["config.yaml"], ["config.yaml", "configs/paper-k400.yaml"],
                                    ["config.yaml", "configs/paper-ucf101.yaml"], ["config.yaml", "configs/synthetic-full.yaml"],
                                    ["config.yaml", "configs/scene-bias.yaml", "configs/bn-recalibration.yaml"]])  # fmt: skip
def test_defaults_without_jsonschema_are_the_validators(layers, monkeypatch):
    """A host without jsonschema (benchmarks/gpu_check.sh on a bare GPU machine) resolves every shipped
    config to exactly what the validating path gives."""
    import vididi.config as vc

    repo = Path(__file__).resolve().parents[1]
    paths = [repo / p for p in layers]
    expected = vc.load_config(paths)
    monkeypatch.setattr(vc, "jsonschema", None)
    assert vc.load_config(paths) == expected


def test_a_budget_in_epochs_resolves_to_steps_with_the_hash_of_those_steps(tiny_data):
    """epochs x training videos (counted in the manifest) / batch, rounded up; the settings hash holds
    the steps, so a budget restated in the other unit does not re-train, and another budget does."""
    from vididi.config import budget_in_epochs, epochs_to_steps, pretrain_settings, settings_hash, train_videos
    from vididi.data.shards import DatasetIndex

    config, _ = tiny_data
    n_train = len(DatasetIndex.for_dataset(config, "synthetic").select("train"))
    assert train_videos(config, "synthetic") == n_train == 16  # 4 classes x 2 training groups x 2 clips
    assert (epochs_to_steps(1, 16, 4), epochs_to_steps(1.1, 16, 4), epochs_to_steps(100, 288, 32)) == (4, 5, 900)

    def hashes(pretrain: dict, variants: dict | None = None) -> dict[str, str]:
        cfg = resolve({**config, "pretrain": {**config["pretrain"], **pretrain}, "variants": variants or {},
                       "runs": [{"dataset": "synthetic", "framework": "vicreg", "variant": ["base", *(variants or {})]}]})  # fmt: skip
        return {run.variant: settings_hash(pretrain_settings(cfg, run)) for run in expand_runs(cfg)}

    in_steps = hashes({"steps": 8})  # batch 4: 2 epochs of 16 videos
    assert hashes({"steps": None, "epochs": 2}) == in_steps
    assert hashes({"steps": None, "epochs": 1.9}) == in_steps  # ceil(7.6) = 8 steps
    assert hashes({"steps": None, "epochs": 2.1}) != in_steps  # 9 steps
    # a variant's budget replaces the global one in either unit; restated, same hash
    long_steps = hashes({"steps": 8}, {"long": {"schedule": "all9", "pretrain": {"steps": 20}}})
    long_epochs = hashes({"steps": None, "epochs": 2}, {"long": {"schedule": "all9", "pretrain": {"epochs": 5}}})
    assert long_steps == long_epochs and long_steps["long"] != long_steps["base"]
    cfg = resolve({**config, "variants": {"long": {"pretrain": {"epochs": 5}}},
                   "runs": [{"dataset": "synthetic", "framework": "vicreg", "variant": ["base", "long"]}]})  # fmt: skip
    assert [budget_in_epochs(cfg, run) for run in expand_runs(cfg)] == [False, True]
    settings = pretrain_settings(cfg, expand_runs(cfg)[1])
    assert settings["pretrain"]["steps"] == 20 and "epochs" not in settings["pretrain"]
