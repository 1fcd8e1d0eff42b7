"""The container and cluster paths without an engine or a cluster (docs/deployment.md): the Makefile's
image targets, the default `container:` and what --use-singularity does without it, the shell prefix
of the jobs inside the image and its version check, the SLURM profiles and the pinned plugin.
The image itself is built and tested by `make image image-test`, the cluster by
scripts/slurm-local-cluster.sh; neither runs here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, snakemake

DOCS = REPO / "docs" / "deployment.md"


def make_dry(*args: str) -> str:
    """The commands `make -n` would run (ENGINE given, so no engine is looked for)."""
    if shutil.which("make") is None:  # the image has no make (its tests run with `make image-test` outside)
        pytest.skip("no make here")
    done = subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def stderr_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("Using workflow specific profile")]


# --------------------------------------------------------------------------------------------------
# Makefile


def test_make_image_builds_with_the_engine_and_base_given():
    out = make_dry(
        "image", "ENGINE=podman", "ENGINE_FLAGS=--storage-driver vfs", "BASE=localhost/debian-base:x", "IMAGE=vididi:t"
    )
    build = [line for line in out.splitlines() if "podman --storage-driver vfs build" in line]
    assert build and "--build-arg BASE=localhost/debian-base:x" in build[0] and "-t vididi:t ." in build[0], out
    default = make_dry("image", "ENGINE=docker")
    assert "--build-arg BASE=python:3.11-slim-bookworm" in default, default


def test_make_image_test_mounts_the_checkout_and_gives_shared_memory():
    out = make_dry("image-test", "ENGINE=docker", "IMAGE=vididi:t")
    runs = [line for line in out.splitlines() if line.startswith("docker run")]
    assert len(runs) == 2, out
    for line in runs:
        assert f'-v "{REPO}":"{REPO}"' in line and f'-w "{REPO}"' in line, line
        assert "--shm-size=" in line and '-u "$(id -u):$(id -g)"' in line, line
    assert "pytest" in runs[0] and "snakemake --cores 2" in runs[1], runs


def test_make_sif_converts_the_saved_image():
    out = make_dry("sif", "ENGINE=podman", "IMAGE=vididi:t")
    assert "podman save -o build/vididi-image.tar vididi:t" in out, out
    assert "apptainer build --force vididi.sif docker-archive://build/vididi-image.tar" in out, out


def test_the_wheelhouse_holds_what_the_dockerfile_installs():
    out = make_dry("wheelhouse", "-B")
    assert re.search(r"pip download --dest wheelhouse -c constraints.txt -r wheelhouse/requirements.txt", out), out
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--no-index --find-links /wheelhouse -c /opt/vididi/constraints.txt -r /wheelhouse/requirements.txt" in dockerfile


def test_ci_runs_none_of_the_container_targets():
    ci = (REPO / ".ci" / "run").read_text()
    test_recipe = make_dry("test", "-W", "pyproject.toml", "-o", ".venv/.installed")
    for target in ("image", "sif", "wheelhouse", "podman", "docker", "apptainer", "slurm"):
        assert target not in ci and target not in test_recipe, target


# --------------------------------------------------------------------------------------------------
# the default `container:` and --use-singularity


def default_container() -> str:
    schema = yaml.safe_load((REPO / "vididi" / "config.schema.yaml").read_text())
    return schema["properties"]["container"]["default"]


def test_default_container_is_the_file_make_sif_builds():
    image = default_container()
    assert image == "vididi.sif", image
    assert "/vididi.sif" in (REPO / ".gitignore").read_text().splitlines()
    assert "container" not in yaml.safe_load((REPO / "config.yaml").read_text())
    # nothing names an image that no one publishes
    for path in [*(REPO / "workflow").rglob("*"), REPO / "Makefile", REPO / "Dockerfile", DOCS, REPO / "config.yaml"]:
        if path.is_file():
            assert "ghcr.io" not in path.read_text(), path


def test_use_singularity_without_the_image_stops_with_one_line(tmp_path):
    done = snakemake(tmp_path, "-n", "--use-singularity", "--configfile", str(REPO / "config.yaml"))
    assert done.returncode != 0
    assert stderr_lines(done) == [
        "vididi: no image vididi.sif here for --use-singularity; build it with `make image sif` (docs/deployment.md)"
    ], done.stderr


def test_without_use_singularity_a_missing_image_does_not_matter(tmp_path):
    done = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"))
    assert done.returncode == 0, done.stderr[-2000:]


def fake_apptainer(workdir: Path) -> str:
    """PATH with a stand-in `apptainer` (Snakemake asks for its version) and an empty vididi.sif in
    `workdir`: Snakemake plans container jobs, nothing runs in a container."""
    fake = workdir / "bin" / "apptainer"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'apptainer version 1.3.4'\n")
    fake.chmod(0o755)
    (workdir / "vididi.sif").write_bytes(b"")
    return f"{fake.parent}{os.pathsep}{os.environ['PATH']}"


def test_jobs_in_the_image_have_the_commands_of_the_host(tmp_path):
    """The interpreter is not on the command lines (workflow/bin/vididi picks it), so a run in the image
    and a run on the host are the same jobs to Snakemake: switching re-runs nothing."""
    plans = {}
    for flags in ([], ["--use-singularity"]):
        done = snakemake(tmp_path, "-n", "-p", *flags, "--configfile", str(REPO / "config.yaml"), extra_env={"PATH": fake_apptainer(tmp_path)} if flags else None)
        assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
        plans[bool(flags)] = sorted(re.findall(r"Shell command: (.*)", done.stdout))
    assert plans[True] == plans[False] and len(plans[False]) > 10
    assert all(c == "None" or c.startswith("vididi ") and "python" not in c and "/opt/" not in c for c in plans[True]), plans[True]


def fake_image(workdir: Path) -> str:
    """PATH with a stand-in `apptainer` that runs a job's `bash -c '...'` on this host the way the image
    would: with the image's PATH (here: the system's, without the venv) plus $APPTAINERENV_PREPEND_PATH,
    and this venv's Python in place of the image's."""
    fake = workdir / "bin" / "apptainer"
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
[ "$1" = --version ] && {{ echo 'apptainer version 1.3.4'; exit 0; }}
while [ "$1" != -c ]; do shift; done
export PATH="$APPTAINERENV_PREPEND_PATH:/usr/bin:/bin" VIDIDI_PYTHON={BIN / "python"}
exec bash -c "$2"
""")
    fake.chmod(0o755)
    (workdir / "vididi.sif").write_bytes(b"")
    return f"{fake.parent}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.slow
def test_a_finished_host_run_is_current_in_the_image_and_back(tmp_path):
    """Real jobs through the stand-in image find `vididi` on the image's PATH; after them, neither
    --use-singularity nor the host plans anything (Snakemake's software-env trigger is off in the
    profile: the image pins the checkout's versions and the stage checks them)."""
    micro = tmp_path / "micro.yaml"
    micro.write_text(yaml.safe_dump({"datasets": {"synthetic": {"source": "synthetic", "synthetic": {
        "classes": ["LinearMotion", "Pulsing"], "groups": 2, "clips_per_group": 2, "test_groups": 1, "val_groups": 0,
        "frames": 16, "size": 32, "fps": 8, "untrimmed": {"train": 0, "test": 0}},
        "extract": {"short_side": 32, "shard_size": 5}, "clips": {"frames": 4, "stride": 2, "size": 28}}}}))  # fmt: skip
    env = {"PATH": fake_image(tmp_path)}
    target = "data/shards/synthetic/index.tsv"
    done = snakemake(tmp_path, target, "--cores", "2", "--use-singularity", "--configfile", str(micro), extra_env=env, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    for flags in ([], ["--use-singularity"]):
        again = snakemake(tmp_path, target, "-n", *flags, "--configfile", str(micro), extra_env=env)
        assert "Nothing to be done" in again.stdout + again.stderr, (flags, (again.stdout + again.stderr)[-2000:])


def test_the_stages_stop_in_one_line_when_the_image_pins_other_versions(tmp_path, monkeypatch):
    from vididi import cli, utils

    pins = tmp_path / "constraints.txt"
    monkeypatch.setattr(utils, "IMAGE_PINS", pins)
    monkeypatch.setattr(utils.sys, "prefix", str(utils.IMAGE_VENV))  # as in the image
    pins.write_text((REPO / "constraints.txt").read_text())
    assert utils.image_pins_mismatch(REPO) is None
    pins.write_text((REPO / "constraints.txt").read_text().replace("torch==2.14.1", "torch==2.13.0"))
    line = utils.image_pins_mismatch(REPO)
    assert "< torch==2.13.0" in line and "> torch==2.14.1" in line and "make image sif" in line, line
    pins.unlink()
    assert "make image sif" in utils.image_pins_mismatch(REPO)
    assert cli.main(["manifest", "--dataset", "synthetic"]) == 2  # before any work
    monkeypatch.setattr(utils.sys, "prefix", "/somewhere/else")  # outside the image: no check
    assert utils.image_pins_mismatch(REPO) is None


# --------------------------------------------------------------------------------------------------
# SLURM


def test_the_slurm_plugin_is_pinned_and_an_extra():
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    for name in ("snakemake-executor-plugin-slurm", "snakemake-executor-plugin-slurm-jobstep", "pandas"):
        assert name in pins, name
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("snakemake-executor-plugin-slurm") for r in extras["slurm"]), extras


def test_the_test_cluster_profile_differs_from_the_slurm_profile_only_in_size():
    profiles = REPO / "workflow" / "profiles"
    site = yaml.safe_load((profiles / "slurm" / "config.yaml").read_text())
    local = yaml.safe_load((profiles / "slurm-local" / "config.yaml").read_text())
    assert local["executor"] == site["executor"] == "slurm"
    for key in ("retries", "rerun-incomplete", "apptainer-args"):
        assert local[key] == site[key], key
    assert local["retries"] >= 1  # the resubmission of a killed job
    assert local["default-resources"]["slurm_partition"] == "cpu" and local["max-threads"] == 2
    assert set(local["set-resources"]) <= set(site["set-resources"])
    assert local["set-resources"]["pretrain"]["tasks_per_gpu"] == site["set-resources"]["pretrain"]["tasks_per_gpu"] == 0


def test_the_cluster_script_parses_and_stops_what_it_starts():
    script = REPO / "scripts" / "slurm-local-cluster.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    daemons = re.search(r"DAEMONS=\(([^)]*)\)", text).group(1).split()
    assert set(daemons) == {"slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"}
    assert "accounting_storage/slurmdbd" in text and "pkill" not in text and "killall" not in text
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 1 and "start|stop|status" in usage.stderr


# --------------------------------------------------------------------------------------------------
# docs


def test_every_documented_docker_run_has_enough_shared_memory():
    runs = [line for line in DOCS.read_text().splitlines() if line.lstrip().startswith(("docker run", "podman run"))]
    assert runs, "docs/deployment.md shows no docker run"
    for line in runs:
        assert "--shm-size" in line or "--ipc=host" in line, line


def test_the_docs_explain_the_singularity_path():
    text = DOCS.read_text()
    for needle in (
        "snakemake --cores all --use-singularity",
        "make sif",
        "--nv",
        "--bind",
        "make image",
        "slurm-local-cluster.sh",
    ):
        assert needle in text, needle


def test_multi_node_pretraining_under_use_singularity_stops_with_one_line(tmp_path):
    # srun must start one container per node from the host; inside the rule's container there is no srun
    done = snakemake(tmp_path, "-n", "--use-singularity", "--configfile", str(REPO / "config.yaml"),
                     "--config", "pretrain={nodes: 2, gpus: 2}", extra_env={"PATH": fake_apptainer(tmp_path)})  # fmt: skip
    assert done.returncode != 0
    assert "vididi: pretrain.nodes > 1 does not run under --use-singularity" in done.stdout + done.stderr
