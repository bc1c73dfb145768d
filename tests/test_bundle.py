"""The bundle stage and `python -m src.lib.runtime create_bundle`: what a bundle says of itself."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from src.lib.runtime import bundle
from tests.conftest import run_module


def test_the_stage_writes_a_verified_self_describing_bundle(tiny_pipeline):
    out = tiny_pipeline / "dist/tinytransformer"
    assert sorted(p.name for p in out.iterdir()) == sorted((*bundle.FILES, bundle.MANIFEST))
    assert run_module("src.lib.runtime", tiny_pipeline, "verify", str(out)).returncode == 0

    config = json.loads((out / bundle.CONFIG).read_text())
    checkpoint = torch.load(tiny_pipeline / "data/best_model.pt", weights_only=True)
    assert {k: config[k] for k in checkpoint["shape"] if k != "dropout"} == {
        k: v for k, v in checkpoint["shape"].items() if k != "dropout"}
    assert config["tie_embeddings"] and config["special_tokens"]["eos"] == 3 and config["rope_pairing"] == "half"
    assert (out / bundle.TOKENIZER).read_bytes() == (tiny_pipeline / "data/bilingual_1k.model").read_bytes()
    assert json.loads((out / bundle.GENERATION).read_text()) == {
        "temperature": 0.8, "top_k": 40, "top_p": 0.95, "do_sample": True,
        "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}

    metrics = json.loads((out / bundle.METRICS).read_text())
    train = json.loads((tiny_pipeline / "metrics/train.json").read_text())["train"]
    assert metrics["validation_loss"] == train["best_validation_loss"]
    assert set(metrics["tokenizer"]) == {"en", "es"} and metrics["budgets"]["rss_mb"] == 64

    provenance = json.loads((out / bundle.PROVENANCE).read_text())
    assert [b["title"] for b in provenance["books"]] == [
        "Pride and Prejudice", "Alice’s Adventures in Wonderland", "Don Quijote"]
    assert abs(sum(b["share"] for b in provenance["books"]) - 1) < 1e-5
    assert all("Project Gutenberg" in text for text in provenance["gutenberg_licences"].values())
    assert provenance["fingerprint"] == checkpoint["fingerprint"]
    assert provenance["inputs_md5"]["data/best_model.pt"] == hashlib.md5(
        (tiny_pipeline / "data/best_model.pt").read_bytes()).hexdigest()

    card = (out / bundle.MODEL_CARD).read_text()
    assert card.startswith("---\nlanguage:\n- en\n- es\nlicense: mit\nlibrary_name: transformers\n")
    assert "\n---\n" in card
    for section in ("## Data", "## Metrics", "## Intended use", "## Limitations"):
        assert section in card


def test_create_bundle_from_the_quickstart_and_refuse_a_tokenizer_of_another_run(tiny_copy, tmp_path):
    done = run_module("src.lib.runtime", tiny_copy, "create_bundle", "--model", "data/best_model.pt",
                      "--tokenizer", "data/bilingual_1k.model", "--out", str(tmp_path / "mine"))
    assert done.returncode == 0 and "verified" in done.stdout, done.stderr
    mine = {name: (tmp_path / "mine" / name).read_bytes() for name in bundle.FILES}
    stage = {name: (tiny_copy / "dist/tinytransformer" / name).read_bytes() for name in bundle.FILES}
    assert mine == stage  # the stage and the command make the same bundle from the same inputs

    other = tmp_path / "other.model"
    proto = bytearray((tiny_copy / "data/bilingual_1k.model").read_bytes())
    proto[len(proto) // 2] ^= 0x20  # a letter of some piece changes case: a valid model, another tokenizer
    other.write_bytes(bytes(proto))
    done = run_module("src.lib.runtime", tiny_copy, "create_bundle", "--model", "data/best_model.pt",
                      "--tokenizer", str(other), "--out", str(tmp_path / "refused"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "is not the tokenizer data/best_model.pt was trained with" in done.stderr
    assert not (tmp_path / "refused").exists()


def tree(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``directory``, with its inode, size and modification time: what a write would change."""
    return {str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*"))}


@pytest.mark.parametrize("out, message", [
    (".", ". is the project's root or holds it"),
    ("..", ".. is the project's root or holds it"),
    ("data", "data is the project's own data/"),
    ("data/bundle", "data/bundle lies in the project's own data/"),
    ("metrics", "metrics is the project's own metrics/"),
    ("dist", "dist holds the project's own dist/tinytransformer/"),
    ("dist/tinytransformer/inner", "lies in the project's own dist/tinytransformer/"),
    ("mine", "mine holds files that are not a bundle's (notes.txt)"),
    ("notes.md", "notes.md is a file, not a bundle"),
    ("o" * 5000, "cannot be used"),
])
def test_create_bundle_never_writes_over_or_into_what_it_did_not_make(tiny_copy, out, message):
    (tiny_copy / "mine").mkdir()
    (tiny_copy / "mine/notes.txt").write_text("the user's")
    (tiny_copy / "notes.md").write_text("the user's too")
    before = tree(tiny_copy)
    done = run_module("src.lib.runtime", tiny_copy, "create_bundle", "--model", "data/best_model.pt",
                      "--tokenizer", "data/bilingual_1k.model", "--out", out)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert tree(tiny_copy) == before


def test_create_bundle_without_out_replaces_the_pipelines_own_bundle(tiny_copy):
    """The quickstart's deploy command: the default, dist/tinytransformer, is an earlier bundle, replaced whole."""
    done = run_module("src.lib.runtime", tiny_copy, "create_bundle", "--model", "data/best_model.pt",
                      "--tokenizer", "data/bilingual_1k.model")
    assert done.returncode == 0 and "bundle written to dist/tinytransformer and verified" in done.stdout, done.stderr
    assert run_module("src.lib.runtime", tiny_copy, "verify", "dist/tinytransformer").returncode == 0
