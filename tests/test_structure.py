"""The shape of the package: stages side by side, one owner of the file layout, one list of names.

- no stage module (vididi/stages/*.py) imports another stage module, and no library module imports
  a stage: the CLI is the only way in;
- every stage of names.STAGES is one module with one entry point `main`, and the CLI knows exactly
  these stages;
- no artifact file or folder name is spelled in code outside vididi/layout.py (Python string
  literals, docstrings and comments excepted, and the Snakemake rules);
- names.py agrees with the schema and with the registries that build the objects;
- the schema is package data (no symlink); every Snakemake rule has a docstring;
- the README links every page of docs/ it cites, and they exist.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from vididi import names

PACKAGE = REPO / "vididi"
STAGE_DIR = PACKAGE / "stages"
WORKFLOW = REPO / "workflow"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the vididi modules a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found |= {f"{source}.{alias.name}" for alias in node.names}  # `from . import x`: x may be a module
    return {name for name in found if name == "vididi" or name.startswith("vididi.")}


def stage_modules() -> list[Path]:
    return sorted(p for p in STAGE_DIR.glob("*.py") if p.name != "__init__.py")


def test_stage_modules_never_import_each_other():
    offenders = {}
    for path in stage_modules():
        stages = {m for m in imported_modules(path) if m.startswith("vididi.stages.") and m != "vididi.stages."}
        stages = {m for m in stages if m.split(".")[2] in names.STAGES}
        if stages:
            offenders[path.name] = sorted(stages)
    assert not offenders, f"stage modules import other stages: {offenders}"


def test_library_modules_never_import_a_stage():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if STAGE_DIR in path.parents or path.name == "cli.py":
            continue
        stages = sorted(m for m in imported_modules(path) if m == "vididi.stages" or m.startswith("vididi.stages."))
        if stages:
            offenders[str(path.relative_to(REPO))] = stages
    assert not offenders, f"library modules import stages: {offenders}"


def test_one_module_with_one_entry_point_per_stage():
    from vididi.cli import STAGES

    assert [p.stem for p in stage_modules()] == sorted(names.STAGES)
    assert tuple(STAGES) == names.STAGES
    for path in stage_modules():
        tree = ast.parse(path.read_text())
        public = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
        assert "main" in public, f"{path.name} has no entry point main()"
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        params = [a.arg for a in main.args.args + main.args.kwonlyargs]
        declared = [p for p in STAGES[path.stem][1] if not (p == "dataset" and "run" in STAGES[path.stem][1])]
        assert params == ["config", *declared], (path.name, params)


# --------------------------------------------------------------------------------------------------
# one owner of the file layout

ARTIFACT_NAMES = [
    "final.pt", "last.pt", "train_log.csv", "train_info.json", "index.tsv", "dataset.json", "manifest.json",
    "bad_videos.tsv", "summary.csv", "summary.md", "objects.h5", "config.resolved", "checksums.lock", ".downloaded",
    ".detections.txt", "shard-",
]  # fmt: skip
ARTIFACT_PATTERNS = [re.escape(n) for n in ARTIFACT_NAMES] + [
    r'"(features|metrics|checkpoints|analysis|figures|runs|raw|shards|downloads|logs|benchmarks)"\s*/',
    r'/\s*"(features|metrics|checkpoints|analysis|figures|runs|raw|shards|downloads|logs|benchmarks)"',
    r'\b(DATA|RESULTS)\s*/',
]


def code_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of a Python file's code: every line except comments, with docstrings blanked."""
    source = path.read_text()
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node):
            doc = node.body[0]
            for i in range(doc.lineno - 1, doc.end_lineno):
                lines[i] = ""
    return [(i + 1, line.split("  #")[0]) for i, line in enumerate(lines) if not line.lstrip().startswith("#")]


def snakemake_lines(path: Path) -> list[tuple[int, str]]:
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        stripped = line.strip()
        if stripped.startswith("#") or stripped.startswith('"""'):
            continue
        out.append((i + 1, line))
    return out


def test_no_artifact_path_is_spelled_outside_the_layout():
    files = [p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "layout.py"]
    found = []
    for path in files:
        for lineno, line in code_strings(path):
            for pattern in ARTIFACT_PATTERNS:
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    for path in sorted(WORKFLOW.rglob("*.smk")) + [WORKFLOW / "Snakefile"]:
        for lineno, line in snakemake_lines(path):
            for pattern in ARTIFACT_PATTERNS:
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert not found, "artifact paths spelled outside vididi/layout.py:\n" + "\n".join(found)


def test_the_layout_the_names_and_the_config_are_torch_free():
    code = "import sys, vididi.layout, vididi.names, vididi.config, vididi.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_layout_paths_match_the_documented_tree(tmp_path):
    from vididi import layout
    from vididi.config import Run, resolve

    config = resolve({"data_dir": "d", "results_dir": "r",
                      "datasets": {"x": {"source": "synthetic"}, "own": {"source": "folder", "root": "/videos"}},
                      "runs": [{"dataset": "x", "framework": "vicreg"}]})  # fmt: skip
    run = Run("x", "vicreg", "base", "small3d", 0, ("x",))
    assert layout.raw_dir(config, "x") == Path("d/raw/x") and layout.raw_dir(config, "own") == Path("/videos")
    assert layout.shard_file(config, "x", 7) == Path("d/shards/x/shard-00007.h5")
    assert layout.shard_file(config, "{dataset}", "{shard}") == Path("d/shards/{dataset}/shard-{shard}.h5")
    assert layout.final_checkpoint(config, run) == Path("r/x/runs/vicreg-base-small3d-s0/checkpoints/final.pt")
    assert layout.metrics_file(config, run, "attention", "y") == Path("r/x/runs/vicreg-base-small3d-s0/metrics/analysis-y.json")
    assert layout.metrics_file(config, layout.RunRef("{dataset}", "{run}"), "{stage}", "{e}") == Path(
        "r/{dataset}/runs/{run}/metrics/{stage}-{e}.json"
    )
    assert layout.figure_file(config, "x", "tsne", ".png") == Path("r/x/figures/tsne.png")


# --------------------------------------------------------------------------------------------------
# one list of names


def schema() -> dict:
    return yaml.safe_load((PACKAGE / "config.schema.yaml").read_text())


def test_names_agree_with_the_schema():
    s = schema()
    assert tuple(s["$defs"]["framework"]["enum"]) == names.FRAMEWORKS
    assert tuple(s["properties"]["backbones"]["properties"]) == names.BACKBONES
    schedule = s["properties"]["variants"]["additionalProperties"]["properties"]["schedule"]["oneOf"][0]
    assert tuple(schedule["enum"]) == names.PRESETS
    assert tuple(s["$defs"]["dataset"]["properties"]["source"]["enum"]) == names.SOURCES
    classes = s["$defs"]["synthetic"]["properties"]["classes"]
    assert tuple(classes["items"]["enum"]) == names.SYNTHETIC_CLASSES
    ssl_options = set(s["properties"]["frameworks"]["properties"]) - {"supervised"}
    assert ssl_options == set(names.SSL_FRAMEWORKS)


def test_names_agree_with_the_registries():
    from vididi.data.download import load_registry
    from vididi.data.synthetic import DYNAMICS
    from vididi.ssl.frameworks import FRAMEWORKS
    from vididi.ssl.models import BACKBONES
    from vididi.ssl.schedule import PRESETS
    from vididi.stages.figures import DRAW

    assert tuple(BACKBONES) == names.BACKBONES
    assert set(FRAMEWORKS) == set(names.FRAMEWORKS) - {"random", "external"}  # neither trains
    assert tuple(PRESETS) == names.PRESETS
    assert tuple(DRAW) == names.FIGURES
    assert tuple(DYNAMICS) == names.SYNTHETIC_CLASSES
    assert set(load_registry()) == set(names.DOWNLOADABLE_SOURCES)
    assert set(names.METRIC_STAGES) <= set(names.STAGES) and set(names.COMPARISON_FIGURES) <= set(names.FIGURES)


# --------------------------------------------------------------------------------------------------
# schema, rules, docs


def test_the_schema_is_package_data():
    from vididi.config import SCHEMA_PATH

    assert SCHEMA_PATH == PACKAGE / "config.schema.yaml" and SCHEMA_PATH.is_file() and not SCHEMA_PATH.is_symlink()
    assert not (WORKFLOW / "schemas").exists()


def test_every_snakemake_rule_has_a_docstring():
    missing = []
    for path in sorted(WORKFLOW.rglob("*.smk")) + [WORKFLOW / "Snakefile"]:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.match(r"^(rule|checkpoint) \w+:", line) and not lines[i + 1].strip().startswith('"""'):
                missing.append(f"{path.name}: {line}")
    assert not missing, missing


@pytest.mark.parametrize("page", ["README.md", "docs/method.md", "docs/design.md", "docs/results.md", "docs/science.md"])
def test_local_links_resolve(page):
    """Every relative link of the page points to a file of the repository (the deployment and
    benchmark pages are written by their own change; they may not be here yet)."""
    text = (REPO / page).read_text()
    base = (REPO / page).parent
    pending = {"docs/deployment.md", "docs/benchmarks.md", "deployment.md", "benchmarks.md"}
    broken = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target in pending:
            continue
        if not (base / target).exists():
            broken.append(target)
    assert not broken, broken


def test_readme_links_every_docs_page_and_cites_no_missing_document():
    readme = (REPO / "README.md").read_text()
    for page in ("method", "design", "results", "deployment", "benchmarks"):
        assert f"docs/{page}.md" in readme, page
    assert (REPO / "LICENSE").is_file()
    cited = []
    for path in [REPO / "README.md", *PACKAGE.rglob("*.py"), *(REPO / "configs").glob("*.yaml")]:
        if re.search(r"\b(METHOD|DESIGN)\.md", path.read_text()):
            cited.append(str(path.relative_to(REPO)))
    assert not cited, f"documents cited that are not in the repository: {cited}"
