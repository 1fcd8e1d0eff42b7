"""Deployment: the Dockerfile and its build context, the conda environment's pins, the Snakemake
profiles, dry runs of the paper configs (job counts per rule; DAG size and build time printed), and a
`folder` dataset of a few encoded clips through manifest -> extract -> index."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import BIN, REPO, SNAKEFILE, job_counts, tool_env

PROFILES = REPO / "workflow" / "profiles"
PAPER_CONFIGS = ("paper-ucf101", "paper-k400")


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def normalise(name: str) -> str:
    """PEP 503 project name: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def exact_pins(lines) -> dict[str, str]:
    """{normalised name: version} of the `name==version` requirement lines."""
    pins = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+).*", line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def requirement_name(requirement: str) -> str:
    return normalise(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))


PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSTRAINTS = exact_pins((REPO / "constraints.txt").read_text().splitlines())


# --------------------------------------------------------------------------------------------------
# background dry runs: each Snakemake invocation spends most of its time importing, so the selected
# ones start with this module and run while the other tests do


class Launched:
    """A command running in the background, its output in files, its wall time measured at exit."""

    def __init__(self, command: list[str], workdir: Path, env: dict[str, str]):
        self.command, self.workdir = command, workdir
        self.out, self.err = workdir / "stdout.txt", workdir / "stderr.txt"
        self.started = time.monotonic()
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=err)
        self.seconds: float | None = None
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        self.process.wait()
        self.seconds = time.monotonic() - self.started

    def result(self, timeout: float = 600) -> tuple[int, str, str]:
        self._waiter.join(timeout)
        if self.seconds is None:
            self.process.kill()
            raise AssertionError(f"{' '.join(self.command)} did not finish in {timeout} s")
        return self.process.returncode, self.out.read_text(), self.err.read_text()


FOLDER_DATASET = {"datasets": {"clips": {"source": "folder"}}}  # videos in the default place, data/raw/clips/


def selected_dry_runs(request) -> set[str]:
    """The dry runs that the selected tests of this module read (none under `-k` of other tests)."""
    wanted = set()
    for item in request.session.items:
        if item.module is not request.module:
            continue
        if item.originalname == "test_paper_config_dry_run_builds_the_whole_dag":
            wanted.add(item.callspec.params["name"])
        elif item.originalname == "test_folder_dataset_in_the_default_place_is_planned":
            wanted.add("folder")
    return wanted


@pytest.fixture(scope="module", autouse=True)
def dry_runs(request, tmp_path_factory) -> dict[str, Launched]:
    env = tool_env()
    base = [str(BIN / "snakemake"), "-n", "-s", str(SNAKEFILE)]
    launched = {}
    for name in sorted(selected_dry_runs(request)):
        workdir = tmp_path_factory.mktemp(name)
        if name == "folder":
            (workdir / "folder.yaml").write_text(yaml.safe_dump(FOLDER_DATASET))
            command = [*base, "data/shards/clips/index.tsv", "--configfile", str(REPO / "config.yaml"), str(workdir / "folder.yaml")]
        else:
            command = [*base, "--configfile", str(REPO / "config.yaml"), str(REPO / "configs" / f"{name}.yaml")]
        if name == "paper-ucf101":  # also plans the cluster jobs: the SLURM profile, its executor swapped for the dry run
            command += ["--workflow-profile", str(PROFILES / "slurm"), "--executor", "dryrun"]
        launched[name] = Launched([*command, "--directory", str(workdir)], workdir, env)
    yield launched
    for run in launched.values():
        if run.process.poll() is None:
            run.process.kill()




def planned_jobs(output: str) -> list[tuple[str, dict[str, str], str]]:
    """(rule, resources, shell command) of every job block a dry run prints."""
    jobs, rule, resources = [], None, {}
    for line in output.splitlines():
        header = re.fullmatch(r"(?:local)?(?:rule|checkpoint) (\w+):", line)
        if header:
            rule, resources = header.group(1), {}
        elif rule and line.strip().startswith("resources:"):
            resources = dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
        elif rule and line.startswith("Shell command:"):
            jobs.append((rule, resources, line.removeprefix("Shell command:").strip()))
            rule = None
    return jobs


# --------------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_hadolint_reports_nothing():
    done = subprocess.run([str(BIN / "hadolint"), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr


def test_the_image_installs_the_tested_python_and_versions():
    instructions = dockerfile_instructions()
    base = [args for name, args in instructions if name == "FROM"]
    assert base == ["${BASE}"], base  # a build argument: `make image BASE=...` (docs/deployment.md)
    args = [args for name, args in instructions if name == "ARG"]
    assert args == [f"BASE=python:{sys.version_info.major}.{sys.version_info.minor}-slim-bookworm"], args  # the interpreter the suite runs on
    runs = " ".join(args for name, args in instructions if name == "RUN")
    installs = [cmd for name, args in instructions if name == "RUN" for cmd in re.findall(r"pip install [^&]*", args)]
    assert installs and all("--no-cache-dir" in cmd for cmd in installs), installs
    third_party = [cmd for cmd in installs if "--no-deps" not in cmd]
    assert third_party and all("-c /opt/vididi/constraints.txt" in cmd for cmd in third_party), third_party
    assert all("--no-index --find-links /wheelhouse" in cmd for cmd in installs), installs  # `make wheelhouse`, no index
    assert re.search(r"apt-get install[^&]* ffmpeg libarchive-tools", runs), "ffmpeg and bsdtar (libarchive-tools) must be installed"
    users = [args for name, args in instructions if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users


def test_build_context_is_exactly_what_the_dockerfile_copies():
    sources = set()
    for name, args in dockerfile_instructions():
        if name == "COPY":
            tokens = [t for t in args.split() if not t.startswith("--")]
            sources.update(t.rstrip("/") for t in tokens[:-1])
        if name == "RUN":  # RUN --mount=type=bind,source=wheelhouse,...: from the build context too
            sources.update(re.findall(r"--mount=type=bind,source=([^,\s]+)", args))
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", "the .dockerignore must start by leaving everything out"
    included = {line[1:].rstrip("/") for line in patterns if line.startswith("!")}
    assert included == sources, f".dockerignore lets in {sorted(included)}, the Dockerfile copies {sorted(sources)}"
    for source in sources - {"wheelhouse"}:  # made by `make wheelhouse`, not in the repository
        assert (REPO / source).exists(), source
    # a symlink in the package must point at a file that is copied too, or the image gets a dangling link
    for link in (p for p in (REPO / "vididi").rglob("*") if p.is_symlink()):
        target = link.resolve().relative_to(REPO).as_posix()
        assert any(target == s or target.startswith(s + "/") for s in sources), f"{link} -> {target} is not copied"


def glob_match(path: str, pattern: str) -> bool:
    """Glob as setuptools applies package-data patterns: `*` and `?` stay within one folder, `**` crosses."""
    regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.fullmatch(regex, path) is not None


def test_every_data_file_of_the_package_is_declared_package_data():
    """The image installs the package (not editable): setuptools ships only the non-Python files that
    [tool.setuptools.package-data] names, each pattern relative to its package's folder."""
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    missing = []
    for file in sorted((REPO / "vididi").rglob("*")):
        if not file.is_file() or file.suffix in (".py", ".pyc") or "__pycache__" in file.parts:
            continue
        rel_parts = file.relative_to(REPO).parts
        covered = False
        for depth in range(1, len(rel_parts)):  # every package above the file: vididi, vididi.data, ...
            package, inside = ".".join(rel_parts[:depth]), "/".join(rel_parts[depth:])
            patterns = package_data.get(package, []) + package_data.get("*", [])
            covered |= any(glob_match(inside, pattern) for pattern in patterns)
        if not covered:
            missing.append(file.relative_to(REPO).as_posix())
    assert missing == [], f"not in the installed package (add to [tool.setuptools.package-data]): {missing}"


# --------------------------------------------------------------------------------------------------
# conda environment


def conda_env() -> tuple[list[str], list[str]]:
    """(conda dependencies, pip lines) of envs/vididi.yaml."""
    deps = read_yaml(REPO / "envs" / "vididi.yaml")["dependencies"]
    pip = [d["pip"] for d in deps if isinstance(d, dict)]
    assert len(pip) == 1, "one pip section"
    return [d for d in deps if isinstance(d, str)], pip[0]


def test_conda_env_pins_equal_the_tested_versions():
    conda, pip = conda_env()
    pins = exact_pins(pip)
    assert {"torch", "torchvision"} <= set(pins), pins
    # every runtime dependency of the package is pinned here, at the version of constraints.txt ...
    runtime = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert runtime <= set(pins), f"not pinned in envs/vididi.yaml: {sorted(runtime - set(pins))}"
    assert pins == {name: CONSTRAINTS.get(name) for name in pins}
    # ... and at the exact pins of pyproject.toml (torch, torchvision, ffmpeg-python)
    for name, version in exact_pins(PYPROJECT["project"]["dependencies"]).items():
        assert pins[name] == version, (name, pins[name], version)
    python = [d for d in conda if d.split("=")[0] == "python"]
    assert python == [f"python={sys.version_info.major}.{sys.version_info.minor}"], python
    assert {"ffmpeg", "libarchive"} <= {re.split(r"[=<>\s]", d)[0] for d in conda}, conda
    assert "-c ${VIDIDI_REPO}/constraints.txt" in pip and "-e ${VIDIDI_REPO}" in pip, pip


@pytest.mark.slow
def test_conda_env_pip_section_resolves_to_the_installed_versions(tmp_path):
    """What conda does with the pip section, offline: pip reads it as a requirements file (expanding
    ${VIDIDI_REPO}) and, with no index, can only succeed if every pin is the version installed here."""
    repo = tmp_path / "repo"  # a copy, so building the editable metadata writes nothing into the checkout
    repo.mkdir()
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "vididi", repo / "vididi", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    requirements = tmp_path / "condaenv.requirements.txt"
    requirements.write_text("\n".join(conda_env()[1]) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation", "-r", str(requirements)],
        cwd=tmp_path, env={**os.environ, "VIDIDI_REPO": str(repo)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Would install vididi-" in done.stdout, done.stdout[-2000:]


# --------------------------------------------------------------------------------------------------
# profiles


def snakemake_options() -> set[str]:
    from snakemake.cli import get_argument_parser

    return {opt[2:] for action in get_argument_parser()._actions for opt in action.option_strings if opt.startswith("--")}


def rule_names() -> set[str]:
    text = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    return set(re.findall(r"^(?:rule|checkpoint) (\w+):", text, flags=re.M))


def test_profiles_parse_and_name_the_expected_keys():
    from snakemake.profiles import ProfileConfigFileParser

    options = snakemake_options()
    profiles = {}
    for name in ("default", "slurm", "slurm-local"):
        path = PROFILES / name / "config.yaml"
        profiles[name] = read_yaml(path)
        unknown = set(profiles[name]) - options
        assert not unknown, f"{name} profile: not Snakemake options: {sorted(unknown)}"
        with open(path) as stream:
            ProfileConfigFileParser().parse(stream)  # Snakemake's own reading of a profile

    default = profiles["default"]
    assert default["cores"] == "all" and default["resources"] == {"gpu": 1}
    assert "--nv" in default["apptainer-args"].split()

    slurm = profiles["slurm"]
    assert slurm["executor"] == "slurm" and "--nv" in slurm["apptainer-args"].split()
    # cpus_per_task among the defaults would override every rule's `threads`
    assert "cpus_per_task" not in slurm["default-resources"], slurm["default-resources"]
    per_rule = slurm["set-resources"]
    assert set(per_rule) <= rule_names(), sorted(set(per_rule) - rule_names())
    pretrain = per_rule["pretrain"]
    assert "gpu" not in pretrain, "the number of GPUs comes from the config (pretrain.gpus) through the rule"
    assert pretrain["tasks_per_gpu"] == 0 and pretrain["slurm_partition"] and pretrain["cpus_per_gpu"] >= 1
    for rule in ("pretrain", "features", "attention"):
        assert per_rule[rule]["slurm_partition"] == pretrain["slurm_partition"], rule


# --------------------------------------------------------------------------------------------------
# dry runs of the paper configs

TRIMMED_METRICS = ("retrieval", "probe")  # + the attention job
SOURCE_KIND = {"ucf101": "trimmed", "hmdb51": "trimmed", "kinetics400": "trimmed", "thumos14": "untrimmed"}
FIGURES = ("derivatives", "tsne", "attention", "curves", "bars")


def expected_jobs(paper: dict) -> dict[str, int]:
    """The DAG before the manifests exist (shards are unknown until then), counted from the config by hand."""
    (entry,) = paper["runs"]
    runs = math.prod(len(as_list(entry[key])) for key in ("framework", "variant", "backbone", "seed"))
    evals = entry["eval_datasets"]
    kinds = [SOURCE_KIND[paper["datasets"][name]["source"]] for name in evals]
    # t-SNE and attention figures compare the VICReg base and vididi runs on the pretraining dataset itself
    own = 0 if entry["dataset"] in evals else 2
    used = len(set(evals) | {entry["dataset"]})  # every dataset is downloaded, listed and indexed once
    return {
        "download": used, "manifest": used, "index": used,
        "pretrain": runs,
        "features": runs * len(evals) + own,
        "metric": runs * sum(len(TRIMMED_METRICS) if k == "trimmed" else 1 for k in kinds),
        "attention": runs * kinds.count("trimmed") + own,
        "summary": 1, "figure": len(FIGURES), "all": 1,
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_dry_run_builds_the_whole_dag(name, dry_runs):
    paper = read_yaml(REPO / "configs" / f"{name}.yaml")
    code, out, err = dry_runs[name].result()
    assert code == 0, (out + err)[-3000:]
    counts = job_counts(out + err)
    print(f"\n{name}: DAG of {sum(counts.values())} jobs built in {dry_runs[name].seconds:.1f} s "
          f"(snakemake -n, {len(dry_runs)} dry runs at once on {os.cpu_count()} cores): {counts}")  # fmt: skip
    assert counts == expected_jobs(paper)
    assert dry_runs[name].seconds < 120, "the DAG must build in seconds, not minutes"

    jobs = planned_jobs(out + err)
    pretrain = [(res, cmd) for rule, res, cmd in jobs if rule == "pretrain"]
    gpus = paper["pretrain"]["gpus"]
    assert len(pretrain) == counts["pretrain"]
    # the plain stage command (it starts one process per GPU itself: test_launch.py), no interpreter path
    assert all(cmd.startswith("vididi pretrain --dataset ") and "python" not in cmd for _, cmd in pretrain), pretrain[0]
    if name == "paper-ucf101":  # planned under the SLURM profile: one sbatch job holding all GPUs in one task
        assert all(res["gpu"] == str(gpus) and res["tasks_per_gpu"] == "0" for res, _ in pretrain), pretrain[0][0]
        assert all(res.get("gpu") == "1" for rule, res, _ in jobs if rule in ("features", "attention"))
    else:  # the default profile: GPU jobs one at a time on a workstation
        assert all(res["gpu"] == "1" for res, _ in pretrain), pretrain[0][0]


@pytest.mark.slow
def test_folder_dataset_in_the_default_place_is_planned(dry_runs):
    """A `folder` dataset without `root` lives in data/raw/<dataset>/: nothing downloads it."""
    code, out, err = dry_runs["folder"].result()
    assert code == 0, (out + err)[-3000:]
    assert job_counts(out + err) == {"manifest": 1, "index": 1}


# --------------------------------------------------------------------------------------------------
# a `folder` dataset through manifest -> extract -> index (the CLI the rules call)

CLASSES = ("jumping", "rolling")  # folder names, deliberately given unsorted below
VIDEOS_PER_CLASS = 3
FRAMES, HEIGHT, WIDTH, SIDE = 12, 32, 48, 8


def moving_square(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(frames (T, H, W, 3) uint8, centres (T, 2) as (y, x)): a bright square crossing a dark noisy
    background in a straight line at a random speed, on whole-pixel positions."""
    start = rng.uniform(0, [HEIGHT - SIDE, WIDTH - SIDE])
    end = rng.uniform(0, [HEIGHT - SIDE, WIDTH - SIDE])
    corners = np.rint(start + (end - start) * np.linspace(0, 1, FRAMES)[:, None]).astype(int)
    background = rng.integers(0, 40, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    colour = rng.integers(180, 256, size=3, dtype=np.uint8)
    frames = np.repeat(background[None], FRAMES, axis=0)
    for t, (y, x) in enumerate(corners):
        frames[t, y : y + SIDE, x : x + SIDE] = colour
    return frames, corners + (SIDE - 1) / 2


def bright_centre(frame: np.ndarray) -> np.ndarray:
    """(y, x) centre of the pixels brighter than the background ever is, frame (3, H, W)."""
    ys, xs = np.nonzero(frame.astype(float).mean(axis=0) > 110)
    return np.array([ys.mean(), xs.mean()])


def test_folder_dataset_through_manifest_extract_index(tmp_path):
    from vididi.cli import main
    from vididi.data.ffmpeg import encode_h264
    from vididi.data.shards import DatasetIndex, FrameReader

    rng = np.random.default_rng(7)
    truth = {}
    for cls in reversed(CLASSES):
        for i in range(VIDEOS_PER_CLASS):
            frames, centres = moving_square(rng)
            video_id = f"{cls}/clip{i}"
            encode_h264(frames, tmp_path / "data" / "raw" / "clips" / f"{video_id}.mp4", fps=8)
            truth[video_id] = centres
    config = {
        "threads": 2, "data_dir": str(tmp_path / "data"), "results_dir": str(tmp_path / "results"),
        "datasets": {"clips": {
            "source": "folder",
            "extract": {"short_side": HEIGHT, "shard_size": 4},
            "clips": {"frames": 4, "stride": 2, "size": 28, "sigma_clips": 8},
        }},
        "runs": [{"dataset": "clips", "framework": "vicreg"}],
    }  # fmt: skip
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    args = ["--config", str(config_file), "--dataset", "clips"]
    n_videos = len(CLASSES) * VIDEOS_PER_CLASS
    n_shards = math.ceil(n_videos / 4)

    assert main(["manifest", *args]) == 0
    manifest = json.loads((tmp_path / "data" / "shards" / "clips" / "manifest.json").read_text())
    assert manifest["n_shards"] == n_shards and manifest["classes"] == sorted(CLASSES)
    for shard in range(n_shards):
        assert main(["extract", *args, "--shard", str(shard)]) == 0
    assert main(["index", *args]) == 0

    index = DatasetIndex.load(tmp_path / "data" / "shards" / "clips")
    assert sorted(index.video_id) == sorted(truth)
    assert [index.classes[label] for label in index.label] == [v.split("/")[0] for v in index.video_id]
    assert set(index.n_frames) == {FRAMES} and set(index.height) == {HEIGHT} and set(index.width) == {WIDTH}
    # no split files: split 1 puts round(0.7 * 3) = 2 videos of each class in train, 1 in test
    per_class = Counter((v.split("/")[0], s["1"]) for v, s in zip(index.video_id, index.splits))
    assert per_class == {(c, subset): n for c in CLASSES for subset, n in (("train", 2), ("test", 1))}
    info = index.info
    assert info["n_videos"] == n_videos and info["n_bad"] == 0
    assert len(info["stats"]["1"]["sigma"]) == 3 and all(s > 0 for s in info["stats"]["1"]["sigma"])
    # the stored frames are the encoded ones, in order: the square is where it was drawn
    reader = FrameReader(index)
    for row, video_id in enumerate(index.video_id):
        stored = reader.read(row, np.arange(FRAMES)).numpy()
        found = np.array([bright_centre(frame) for frame in stored])
        assert np.abs(found - truth[video_id]).max() < 0.5, (video_id, found, truth[video_id])
    reader.close()


def test_make_installs_system_packages_quietly(tmp_path):
    """`make run` on a fresh root machine: apt-get's lists are stale, so installing before `apt-get update`
    fails loudly ("E: Unable to correct problems ..."). The Makefile must update first and print only
    what the user needs. A fake apt-get stands in for the real one; no ffmpeg/bsdtar on this PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    (bin_dir / "apt-get").write_text(
        "#!/bin/bash\n"
        f'echo "$1" >> {calls}\n'
        f'if [ "$1" = install ] && ! grep -qx update {calls}; then\n'
        '  echo "E: Unable to correct problems, you have held broken packages." >&2; exit 100\n'
        "fi\n"
        'echo "Reading package lists..."; echo "debconf: delaying package configuration" >&2\n'
    )
    (bin_dir / "id").write_text("#!/bin/bash\necho 0\n")
    for tool in ("mktemp", "rm", "grep"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for script in ("apt-get", "id"):
        (bin_dir / script).chmod(0o755)
    make = shutil.which("make")
    done = subprocess.run([make, "--no-print-directory", "-C", str(REPO), "system-packages"],
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert calls.read_text().split() == ["update", "install"]
    assert (done.stdout + done.stderr).splitlines() == ["installing ffmpeg and bsdtar (apt-get) ..."]


def test_small_jobs_run_locally_or_grouped_on_a_cluster():
    """summary and figures are local rules; a run's metric jobs form one group, which both SLURM
    profiles merge into one job (group-components names the rule's group pattern)."""
    snakefile = (REPO / "workflow" / "Snakefile").read_text()
    local = re.search(r"^localrules:\n((?:    \w+,\n)+)", snakefile, flags=re.M)
    assert local and set(re.findall(r"\w+", local.group(1))) == {"all", "summary", "figure"}
    evaluate = (REPO / "workflow" / "rules" / "evaluate.smk").read_text()
    metric = evaluate[evaluate.index("rule metric:"):evaluate.index("rule summary:")]
    (group,) = re.findall(r'group:\n\s+"([^"]+)"', metric)
    assert group == "metrics-{dataset}-{run}"
    for name in ("slurm", "slurm-local"):
        profile = read_yaml(PROFILES / name / "config.yaml")
        components = dict(entry.split("=") for entry in profile["group-components"])
        assert int(components[group]) >= 5, name  # every metric job of a paper-config run
    metric_resources = read_yaml(PROFILES / "slurm" / "config.yaml")["set-resources"]["metric"]
    assert metric_resources["cpus_per_task"] * 5 <= 16 and metric_resources["mem_mb"] * 5 <= 64000  # a group fits a CPU node
