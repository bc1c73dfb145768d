"""dvc.yaml declares, for every stage, exactly the params keys and the paths the code uses."""

import ast
import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

from src import paths
from src.config import load_config, params_keys, sections_read_by
from tests.conftest import REPO_ROOT

DVC_YAML = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
CONFIG = load_config(REPO_ROOT / "params.yaml")


def resolved(path: str) -> str:
    """A dvc.yaml path with its ${dotted.key} filled from params.yaml, as DVC fills it."""
    def value(match: re.Match) -> str:
        node = PARAMS
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)
    return re.sub(r"\$\{([^}]+)\}", value, path)


# stage name -> (module, the function that does the stage's work)
STAGES = {
    "check_params": ("src.pipeline.check_params", "check_params"),
    "download": ("src.pipeline.download", "download"),
    "tokenize": ("src.pipeline.tokenize", "tokenize"),
    "train": ("src.pipeline.train", "run_train"),
    "bundle": ("src.pipeline.bundle", "make_bundle"),
    "validate": ("src.pipeline.validate", "validate"),
}
# Modules a stage runs in a child process rather than imports.
RUNS = {"validate": ["src.cli.minimal_llm"]}

OUTS = {
    "check_params": [paths.PARAMS_CHECKED],
    "download": [paths.RAW_DIR, CONFIG.corpus_name.file, paths.CORPUS_INDEX_FILE, paths.CORPUS_SOURCES, paths.LANGUAGES],
    "tokenize": [CONFIG.tokenizer_name.model, CONFIG.tokenizer_name.vocab, paths.TOKENS_DIR],
    "train": [paths.BEST_MODEL, paths.FINAL_MODEL, paths.TRAINING_METRICS, paths.TRAIN_PLOT, paths.EVAL_PLOT],
    "bundle": [paths.BUNDLE_DIR],
    "validate": [paths.SAMPLES],
}
METRICS = {"check_params": [], "download": [paths.CORPUS_METRICS], "tokenize": [paths.TOKENIZER_METRICS],
           "train": [paths.TRAIN_METRICS, paths.TRAIN_SPEED], "bundle": [], "validate": [paths.VALIDATE_METRICS]}
# The one top-level key each metrics file of the pipeline holds its figures under, the group `dvc exp show` lists
# them in (train.epochs, train_speed.seconds, ...).
GROUPS = {paths.CORPUS_METRICS: "corpus", paths.TOKENIZER_METRICS: "tokenizer", paths.TRAIN_METRICS: "train",
          paths.TRAIN_SPEED: "train_speed", paths.VALIDATE_METRICS: "validate"}


def test_every_stage_is_checked():
    assert set(DVC_YAML) == set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_declared_params_are_the_params_the_stage_reads(stage):
    module, function = STAGES[stage]
    reads = params_keys(*sections_read_by(getattr(importlib.import_module(module), function)))
    assert sorted(DVC_YAML[stage].get("params", [])) == sorted(reads)


def test_params_are_checked_before_any_stage_runs():
    """check_params reads params.yaml as a file (any edit re-runs it), and the first data stage depends on it."""
    assert "params.yaml" in DVC_YAML["check_params"]["deps"]
    assert str(paths.PARAMS_CHECKED) in DVC_YAML["download"]["deps"]


def project_imports(module: str) -> set[str]:
    """The files under src/ that ``module`` imports, directly or through other project modules."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        file = REPO_ROOT / (name.replace(".", "/") + ".py")
        if not file.is_file() or str(file.relative_to(REPO_ROOT)) in seen:
            continue
        seen.add(str(file.relative_to(REPO_ROOT)))
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("src"):
                pending.append(node.module)
                pending.extend(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                pending.extend(a.name for a in node.names if a.name.startswith("src."))
    return seen


@pytest.mark.parametrize("stage", STAGES)
def test_the_stage_runs_its_module_and_depends_on_exactly_its_code(stage):
    module, _ = STAGES[stage]
    spec = DVC_YAML[stage]
    assert spec["cmd"] == f"python -m {module}"
    code_deps = {d for d in spec["deps"] if d.startswith("src/")}
    expected = project_imports(module)
    for child in RUNS.get(stage, []):
        expected |= project_imports(child)
    assert code_deps == expected


@pytest.mark.parametrize("stage", STAGES)
def test_outs_and_metrics_are_the_paths_the_code_writes(stage):
    spec = DVC_YAML[stage]
    assert [resolved(o if isinstance(o, str) else next(iter(o))) for o in spec["outs"]] == [str(p) for p in OUTS[stage]]
    assert [next(iter(m)) for m in spec.get("metrics", [])] == [str(p) for p in METRICS[stage]]
    assert all(next(iter(m.values()))["cache"] is False for m in spec.get("metrics", []))


def flat_names(value, prefix: str = "") -> list[str]:
    """The names `dvc exp show` gives the values of a params or metrics file: keys joined by dots, a list one value."""
    if not isinstance(value, dict):
        return [prefix]
    return [name for key, child in value.items() for name in flat_names(child, f"{prefix}.{key}" if prefix else key)]


def written_metrics(tiny_pipeline: Path, path: Path) -> dict:
    """A metrics file as the tiny pipeline wrote it, or the committed one: the tiny pipeline stops before validate."""
    written = tiny_pipeline / path
    return json.loads((written if written.is_file() else REPO_ROOT / path).read_text())


@pytest.mark.parametrize("path", GROUPS, ids=str)
def test_a_stage_writes_its_metrics_under_its_group(tiny_pipeline, path):
    assert list(written_metrics(tiny_pipeline, path)) == [GROUPS[path]]


def test_no_metric_is_named_as_a_param_or_as_another_metric(tiny_pipeline):
    """`dvc exp show` prefixes a column with its file's name where two files share the name: every figure keeps
    its plain name when no metric has a param's name and no two metrics share one."""
    params = set(flat_names(yaml.safe_load((REPO_ROOT / "params.yaml").read_text())))
    seen: dict[str, str] = {}
    for path in (path for stage in METRICS.values() for path in stage):
        for name in flat_names(written_metrics(tiny_pipeline, path)):
            assert name not in params, f"{path}: {name} is also a param"
            assert name not in seen, f"{name} is in both {seen[name]} and {path}"
            seen[name] = str(path)
