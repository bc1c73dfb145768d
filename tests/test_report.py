"""What train_pipeline.sh shows and exports after a run (src/pipeline/report.py): the copy to --output-dir."""

import pytest

from src import paths
from src.lib.runtime import bundle
from src.lib.runtime.model import load_bundle
from src.pipeline.report import export


@pytest.fixture
def project(tiny_pipeline, monkeypatch):
    """The tiny pipeline's directory as the working directory, read only (it is shared)."""
    monkeypatch.chdir(tiny_pipeline)
    return tiny_pipeline


def test_the_artifacts_and_a_whole_verified_bundle_are_copied(project, tmp_path):
    out = tmp_path / "out"
    export(out, [paths.BEST_MODEL, paths.BUNDLE_DIR])
    assert (out / paths.BEST_MODEL.name).read_bytes() == paths.BEST_MODEL.read_bytes()
    assert load_bundle(out / paths.BUNDLE_DIR.name).config == load_bundle(paths.BUNDLE_DIR).config
    export(out, [paths.BUNDLE_DIR])  # an earlier export's bundle is replaced whole
    assert sorted(p.name for p in (out / paths.BUNDLE_DIR.name).iterdir()) == sorted((*bundle.FILES, bundle.MANIFEST))


def test_a_bundle_directory_of_other_files_is_refused_untouched(project, tmp_path):
    """A copy merged into it would leave a directory that is neither the user's nor a bundle."""
    notes = tmp_path / "out" / paths.BUNDLE_DIR.name / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    with pytest.raises(OSError, match="holds files that are not a bundle's"):
        export(tmp_path / "out", [paths.BEST_MODEL, paths.BUNDLE_DIR])
    assert sorted(p.name for p in notes.parent.iterdir()) == ["notes.txt"] and notes.read_text() == "mine"
    assert not (tmp_path / "out" / paths.BEST_MODEL.name).exists()


@pytest.mark.parametrize("target, message", [
    ("dist/tinytransformer", "is the project's own dist/tinytransformer/"), ("data", "is the project's own data/"),
    ("metrics/copy", "lies in the project's own metrics/"), (".", "is the project's root or holds it"),
    ("books", "is the project's own books/")])
def test_the_projects_own_outputs_are_refused_before_anything_is_copied(project, target, message):
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    with pytest.raises(OSError, match=message):
        export(project / target, [paths.BEST_MODEL, paths.BUNDLE_DIR])
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before
