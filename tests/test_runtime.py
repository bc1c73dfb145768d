"""The bundle runtime (src/lib/runtime): parity with the PyTorch forward pass, no PyTorch, and every refusal."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.config import GenerationConfig
from src.inference.generate import TorchDecoder
from src.lib.runtime import bundle
from src.lib.runtime.model import load_bundle
from src.lib.runtime.sampling import Sampling, generate
from src.model.checkpoint import load_model
from src.pipeline.bundle import BundleInputs, create_bundle
from tests.conftest import REPO_ROOT

PROMPTS = {"en": "It is a truth universally acknowledged", "es": "En un lugar de la Mancha"}


@pytest.fixture(scope="module")
def tiny_bundle(tiny_pipeline, tmp_path_factory) -> Path:
    """The tiny trained model's bundle (context 32: 300 tokens go far past it)."""
    out = tmp_path_factory.mktemp("bundle") / "tinytransformer"
    create_bundle(tiny_pipeline / "data/best_model.pt", tiny_pipeline / "data/bilingual_1k.model", out,
                  BundleInputs(GenerationConfig(temperature=0.8, top_k=40, top_p=0.95)))
    return out


def runtime_and_torch(tiny_pipeline, tiny_bundle):
    loaded = load_bundle(tiny_bundle)
    model, _ = load_model(tiny_pipeline / "data/best_model.pt")
    return loaded, loaded.decoder(), TorchDecoder(model)


@pytest.mark.parametrize("language", sorted(PROMPTS))
def test_the_runtime_computes_forwards_logits_for_300_tokens_past_the_context(tiny_pipeline, tiny_bundle, language):
    loaded, runtime, reference = runtime_and_torch(tiny_pipeline, tiny_bundle)
    assert loaded.config["context_length"] == 32
    ids = loaded.tokenizer.encode(PROMPTS[language])
    ours, theirs = runtime.prefill(ids), reference.prefill(ids)
    worst = float(np.abs(ours - theirs).max())
    rng = np.random.default_rng(0)
    for _ in range(300):
        token = int(rng.integers(loaded.config["vocab_size"]))
        ours, theirs = runtime.step(token), reference.step(token)
        worst = max(worst, float(np.abs(ours - theirs).max()))
    assert runtime.position == len(ids) + 300 > 9 * loaded.config["context_length"]
    assert worst <= 1e-4, worst


@pytest.mark.parametrize("language", sorted(PROMPTS))
def test_greedy_text_is_the_same_through_the_runtime_and_pytorch(tiny_pipeline, tiny_bundle, language):
    loaded, runtime, reference = runtime_and_torch(tiny_pipeline, tiny_bundle)
    ids = loaded.tokenizer.encode(PROMPTS[language])
    greedy = Sampling(temperature=0, top_k=0, top_p=1.0)
    ours = list(generate(runtime, ids, 100, greedy, seed=0))
    assert ours == list(generate(reference, ids, 100, greedy, seed=0)) and len(ours) == 100


def test_generation_imports_no_pytorch_and_only_what_requirements_runtime_lists(tiny_bundle):
    """In a process where importing torch raises, the CLI generates from the bundle; then every installed
    distribution it imported is one requirements-runtime.txt lists."""
    script = ("import atexit, runpy, sys; sys.modules['torch'] = None; before = set(sys.modules); "
              "atexit.register(lambda: print(sorted(set(sys.modules) - before), file=sys.stderr)); "
              "sys.argv = ['minimal_llm', *sys.argv[1:]]; runpy.run_module('src.cli.minimal_llm', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", script, "generate", "--bundle", str(tiny_bundle), "--prompt",
                           PROMPTS["es"], "--max_tokens", "20", "--json", "--seed", "3"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["runtime"] == "bundle" and answer["metrics"]["new_tokens"] == 20
    modules = ast.literal_eval(done.stderr.strip().splitlines()[-1])  # the list printed at exit
    imported = {module.split(".")[0] for module in modules}
    # Of the project's own code, only what the README's "Deploy" says a device needs.
    project = {module for module in modules if module.startswith("src.")}
    device = {"src.cli", "src.cli.minimal_llm", "src.inference", "src.inference.api", "src.lib", "src.paths",
              "src.exit_codes"}
    assert {module for module in project if module not in device and not module.startswith("src.lib.runtime")} \
        == set(), project
    owners = importlib.metadata.packages_distributions()
    # The project's own package, src, is a distribution too once `make setup` installs it (editable).
    distributions = {owner.lower() for module in imported if module != "src" for owner in owners.get(module, [])}
    listed = {line.split("==")[0].strip().lower()
              for line in (REPO_ROOT / "requirements-runtime.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert distributions == listed, imported


# --- a bundle is read only whole and unchanged --------------------------------------------------------------------

def verify(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.lib.runtime", "verify", str(directory)], cwd=REPO_ROOT,
                          capture_output=True, text=True)


def generate_from(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.cli.minimal_llm", "generate", "--bundle", str(directory),
                           "--prompt", "hi"], cwd=REPO_ROOT, capture_output=True, text=True)


def rewrite_manifest(directory: Path, name: str) -> None:
    """What a careful forger does after changing ``name``: make the manifest agree with it."""
    manifest = json.loads((directory / bundle.MANIFEST).read_text())
    data = (directory / name).read_bytes()
    manifest["files"][name] = {"sha256": bundle.sha256_hex(data), "size": len(data)}
    (directory / bundle.MANIFEST).write_text(json.dumps(manifest))


def flip_a_byte(directory: Path) -> None:
    path = directory / bundle.WEIGHTS
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def lying_header(directory: Path, claimed: int) -> None:
    """A safetensors file whose header says it is ``claimed`` bytes long; the manifest made to agree."""
    path = directory / bundle.WEIGHTS
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", claimed) + data[8:])
    rewrite_manifest(directory, bundle.WEIGHTS)


def oversized_tensor(directory: Path) -> None:
    """The header's first tensor claims more bytes than the file holds; the manifest made to agree."""
    path = directory / bundle.WEIGHTS
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    name = next(n for n in header if n != "__metadata__")
    header[name].update(shape=[10**6, 10**6], data_offsets=[0, 4 * 10**12])
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size:])
    rewrite_manifest(directory, bundle.WEIGHTS)


def disagreeing_config(directory: Path) -> None:
    """config.json's Hugging Face fields say another window than its runtime fields; the manifest made to agree."""
    path = directory / bundle.CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), "sliding_window": 64}))
    rewrite_manifest(directory, bundle.CONFIG)


TAMPERING = {
    "a changed byte": (flip_a_byte, "model.safetensors: its sha256 is not the manifest's"),
    "a missing file": (lambda d: (d / bundle.TOKENIZER).unlink(), "tokenizer.model"),
    "an extra file": (lambda d: (d / "payload.pkl").write_bytes(b"\x80\x04K\x01."),
                      "payload.pkl: not part of the bundle"),
    "an edited manifest": (lambda d: (d / bundle.MANIFEST).write_text(
        (d / bundle.MANIFEST).read_text().replace('"format": 2', '"format": 2, "signed": true')),
        "manifest.json: expected exactly the keys"),
    "a manifest with a wrong size": (lambda d: (d / bundle.MANIFEST).write_text(json.dumps({
        **json.loads((d / bundle.MANIFEST).read_text()),
        "files": {**json.loads((d / bundle.MANIFEST).read_text())["files"],
                  bundle.CONFIG: {"sha256": "0" * 64, "size": 1}}})), "config.json"),
    "a header that asks for gigabytes": (lambda d: lying_header(d, 2**40), "model.safetensors: its header claims"),
    "a tensor bigger than the file": (oversized_tensor, "model.safetensors: tensor"),
    "Hugging Face fields that disagree": (disagreeing_config,
                                          "config.json: 'sliding_window' is 64; the runtime's fields make it 32"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_a_tampered_bundle_is_refused_naming_the_file(tiny_bundle, tmp_path, case):
    damaged = tmp_path / "tinytransformer"
    shutil.copytree(tiny_bundle, damaged)
    tamper, message = TAMPERING[case]
    tamper(damaged)
    for done in (verify(damaged), generate_from(damaged)):
        assert done.returncode == 1 and message in done.stderr, (case, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert verify(tiny_bundle).returncode == 0


def test_a_bundle_is_written_whole_and_reads_back(tiny_bundle, tmp_path):
    files = {name: (tiny_bundle / name).read_bytes() for name in bundle.FILES}
    target = tmp_path / "again"
    target.mkdir()
    (target / "stale.txt").write_text("from before")
    bundle.write_bundle(target, files)
    assert sorted(p.name for p in target.iterdir()) == sorted((*bundle.FILES, bundle.MANIFEST))
    assert bundle.read_bundle(target).files == files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left
    assert os.listdir(tmp_path) == ["again"]
