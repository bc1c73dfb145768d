"""Where a command may write: never over, into or around the project's own files (src/pipeline/output_dir.py)."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src import paths
from src.pipeline.output_dir import (PROTECTED, export_dir_problem, main, overlap, project_roots,
                                     written_file_problem)
from tests.conftest import run_module

PART = st.text(alphabet=st.sampled_from("abc_-."), min_size=1, max_size=6).filter(lambda p: p not in (".", ".."))


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A working directory laid out as the project's, with the pipeline's outputs in it."""
    for protected in PROTECTED:
        (tmp_path / protected).mkdir(parents=True)
    (tmp_path / paths.BUNDLE_DIR / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(protected=st.sampled_from(PROTECTED), below=st.lists(PART, max_size=3), spelling=st.sampled_from(
    ["relative", "absolute", "dotted", "through a link"]))
def test_the_outputs_anything_inside_them_and_every_spelling_of_them_are_refused(project, protected, below, spelling):
    target = Path(protected, *below)
    if spelling == "absolute":
        target = project / target
    elif spelling == "dotted":
        target = Path("metrics", "..", target)
    elif spelling == "through a link":
        link = project.parent / f"link-{os.getpid()}"
        if not link.is_symlink():
            link.symlink_to(project)
        target = link / target
    assert overlap(target) is not None
    assert export_dir_problem(target) is not None


@pytest.mark.parametrize("target", [".", "..", "/", "dist", "data/..", "./", "dist/../dist"])
def test_the_root_and_what_holds_an_output_are_refused(project, target):
    problem = overlap(target)
    assert problem is not None and problem.startswith(target)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(below=st.lists(PART, min_size=1, max_size=3))
def test_a_directory_beside_the_outputs_or_outside_the_project_is_fine(project, below):
    for target in (project.parent / "exports" / Path(*below), Path("exports", *below)):
        assert overlap(target) is None and export_dir_problem(target) is None


def test_only_the_bundle_directory_itself_may_be_allowed(project):
    assert overlap(paths.BUNDLE_DIR, allowed=paths.BUNDLE_DIR) is None
    assert overlap(project / paths.BUNDLE_DIR, allowed=paths.BUNDLE_DIR) is None
    assert "lies in" in overlap(paths.BUNDLE_DIR / "x", allowed=paths.BUNDLE_DIR)
    assert "holds" in overlap(paths.BUNDLE_DIR.parent, allowed=paths.BUNDLE_DIR)


def test_the_project_root_is_the_codes_checkout_and_the_working_directory(project):
    assert Path.cwd().resolve() in project_roots() and Path(__file__).resolve().parents[1] in project_roots()


def test_an_export_directory_keeps_the_users_files_but_never_merges_into_a_directory_that_is_no_bundle(tmp_path):
    export = tmp_path / "export"
    (export / paths.BUNDLE_DIR.name).mkdir(parents=True)
    (export / "notes.txt").write_text("mine")
    assert export_dir_problem(export) is None  # an empty directory in the bundle's place, the user's notes beside
    (export / paths.BUNDLE_DIR.name / "todo.txt").write_text("mine too")
    assert "holds files that are not a bundle's (todo.txt)" in export_dir_problem(export)
    (tmp_path / "a_file").write_text("x")
    assert export_dir_problem(tmp_path / "a_file") == f"{tmp_path / 'a_file'} is a file, not a directory"


@pytest.mark.parametrize("target, code, message", [
    ("data", 1, "error: --output-dir data is the project's own data/"),
    ("dist/tinytransformer", 1, "error: --output-dir dist/tinytransformer is the project's own dist/tinytransformer/"),
    (".", 1, "error: --output-dir . is the project's root or holds it"),
    ("metrics/run1", 1, "error: --output-dir metrics/run1 lies in the project's own metrics/"),
    ("x" * 5000, 1, "cannot be used (File name too long)"),
    ("exports/run1", 0, ""),
])
def test_the_command_line_says_why_in_one_line(project, capsys, target, code, message):
    assert main([target]) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == (1 if code else 0), err


def test_python_dash_m_runs_it(project):
    done = run_module("src.pipeline.output_dir", project, "data")
    assert done.returncode == 1 and done.stderr.strip().startswith("error: --output-dir data is")


def test_a_writer_replaces_only_a_file_of_its_own_kind(project):
    is_png = lambda head: head.startswith(b"\x89PNG")  # noqa: E731
    assert written_file_problem("plots/loss.png", is_png, "a PNG picture") is None
    Path("mine.png").write_bytes(b"\x89PNG...")
    assert written_file_problem("mine.png", is_png, "a PNG picture") is None
    Path("notes.txt").write_text("the user's")
    assert written_file_problem("notes.txt", is_png, "a PNG picture") == "notes.txt is not a PNG picture: only one " \
                                                                          "is replaced"
    assert "is the project's own data/" in written_file_problem("data", is_png, "a PNG picture")
    assert "lies in the project's own metrics/" in written_file_problem("metrics/train.json", is_png, "a PNG picture")
    assert written_file_problem("plots", is_png, "a PNG picture") is None
    Path("plots").mkdir()
    assert written_file_problem("plots", is_png, "a PNG picture") == "plots is not a file"
