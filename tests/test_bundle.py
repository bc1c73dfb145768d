"""The bundle stage and `python -m src.lib.runtime create_bundle`: what a bundle says of itself."""

import hashlib
import json

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
