"""The check_params stage and the checks ./scripts/train_pipeline.sh runs before it starts DVC."""

import subprocess

import pytest
import yaml

from src import paths
from src.config import ConfigError
from src.pipeline.check_params import MARKER, with_overrides
from tests.conftest import REPO_ROOT, project_params, run_module, write_params


def test_overrides_are_read_as_dvc_exp_run_writes_them():
    before = project_params()["learning_rate"]
    params = with_overrides(project_params(), ["learning_rate=5e-5", "train.compile=false", "model.n_layers=2"])
    assert params["learning_rate"] == 5e-05 and params["train"]["compile"] is False and params["model"]["n_layers"] == 2
    assert project_params()["learning_rate"] == before != 5e-05  # the file itself is never changed


@pytest.mark.parametrize("override, message", [("epochs", "expected KEY=VALUE"),
                                               ("nosuch.section.key=1", "params.yaml has no section 'nosuch.section'"),
                                               ("epochs=[1,", "not valid YAML")])
def test_malformed_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        with_overrides(project_params(), [override])


def test_the_stage_writes_its_constant_marker_or_exits_1_naming_the_key(tmp_path):
    write_params(tmp_path)
    done = run_module("src.pipeline.check_params", tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / paths.PARAMS_CHECKED).read_bytes() == MARKER
    write_params(tmp_path, {"epochs": 0})
    done = run_module("src.pipeline.check_params", tmp_path)
    assert done.returncode == 1 and "'epochs' = 0 is out of range" in done.stderr


@pytest.mark.parametrize("args, code, message", [
    (["--set", "batch_size=33", "--set", "train.nproc=2"], 1, "must split evenly over 'train.nproc' = 2"),
    (["--set", "learning_rate=5e-5"], 0, ""),
    (["--mirror", "ftp://example.org/books"], 1, "only http://, https:// or a local directory"),
    (["--mirror", "http://127.0.0.1:8000/books"], 0, ""),
    (["--mirror", str(REPO_ROOT / "no-such-dir")], 1, "not a directory"),
])
def test_overrides_and_a_mirror_are_checked_without_writing_anything(tmp_path, args, code, message):
    write_params(tmp_path)
    before = (tmp_path / "params.yaml").read_bytes()
    done = run_module("src.pipeline.check_params", tmp_path, *args)
    assert done.returncode == code and message in done.stderr, done.stderr
    assert (tmp_path / "params.yaml").read_bytes() == before and not (tmp_path / paths.PARAMS_CHECKED).exists()


@pytest.mark.parametrize("url", ["http://[::1/pg11.txt", "https://[v1.x/pg11.txt", "http://[zz]/pg11.txt"])
def test_a_source_url_that_cannot_be_parsed_is_named_in_one_line(tmp_path, url):
    params = project_params()
    params["corpus"]["sources"][0]["url"] = url
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = run_module("src.pipeline.check_params", tmp_path)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"'corpus.sources[0].url' = '{url}' is not a valid URL (" in done.stderr


def test_make_repro_checks_the_params_before_dvc_parses_them():
    """Every DVC command expands params.yaml's YAML aliases before any stage runs, without limit
    (docs/TROUBLESHOOTING.md): `make repro` has check_params refuse them first."""
    planned = subprocess.run(["make", "-n", "repro"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert planned.index("python -m src.pipeline.check_params") < planned.index("dvc repro")
