"""The bundle runtime (src/lib/runtime): parity with the PyTorch forward pass, no PyTorch, and every refusal."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from src.config import GenerationConfig
from src.inference.generate import TorchDecoder
from src.lib.runtime import bundle
from src.lib.runtime.model import load_bundle
from src.lib.runtime.sampling import Sampling, generate
from src.lib.runtime.sampling_bounds import out_of_bounds
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
    bundle.write_bundle(target, files)  # an empty directory
    bundle.write_bundle(target, files)  # an earlier bundle: replaced whole
    assert sorted(p.name for p in target.iterdir()) == sorted((*bundle.FILES, bundle.MANIFEST))
    assert bundle.read_bundle(target).files == files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left
    assert os.listdir(tmp_path) == ["again"]


def test_a_bundle_an_earlier_version_wrote_is_replaced_whole(tiny_bundle, tmp_path):
    files = {name: (tiny_bundle / name).read_bytes() for name in bundle.FILES}
    target = tmp_path / "format_1"
    target.mkdir()
    earlier = {"model.safetensors": b"weights", "config.json": b"{}", "generation.json": b"{}"}
    for name, data in earlier.items():
        (target / name).write_bytes(data)
    (target / bundle.MANIFEST).write_text(json.dumps(
        {"format": 1, "files": {name: {"sha256": "0" * 64, "size": len(data)} for name, data in earlier.items()}}))
    bundle.write_bundle(target, files)
    assert bundle.read_bundle(target).files == files and not (target / "generation.json").exists()


def tree(directory: Path) -> dict[str, bytes | None]:
    """Every path under ``directory`` (itself included), with a file's bytes."""
    return {str(p.relative_to(directory.parent)): p.read_bytes() if p.is_file() else None
            for p in [directory, *sorted(directory.rglob("*"))]}


# Names no bundle file has (the alphabet cannot spell one).
NAME = st.text(alphabet=st.sampled_from("abcXYZ019_-. "), min_size=1, max_size=12).filter(
    lambda name: name not in (".", ".."))


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user_files=st.dictionaries(NAME, st.binary(max_size=30), min_size=1, max_size=4),
       inside_a_bundle=st.booleans())
def test_a_directory_holding_anything_but_a_bundle_is_refused_and_left_as_it_was(tiny_bundle, tmp_path_factory,
                                                                                 user_files, inside_a_bundle):
    """A user's files, alone or beside an earlier bundle's, are never renamed aside nor deleted."""
    target = tmp_path_factory.mktemp("out") / "target"
    if inside_a_bundle:
        shutil.copytree(tiny_bundle, target)
    else:
        target.mkdir()
    for name, data in user_files.items():
        (target / name).write_bytes(data)
    before = tree(target)
    files = {name: (tiny_bundle / name).read_bytes() for name in bundle.FILES}
    with pytest.raises(bundle.BundleError, match="holds files that are not a bundle's|a bundle with other files"):
        bundle.write_bundle(target, files)
    assert tree(target) == before and os.listdir(target.parent) == ["target"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("my notes"), "is a file, not a bundle"),
    (lambda p: p.symlink_to(p.parent), "is a symbolic link"),
])
def test_a_file_or_a_link_in_the_bundles_place_is_refused_and_kept(tiny_bundle, tmp_path, make, message):
    target = tmp_path / "out"
    make(target)
    before = os.readlink(target) if target.is_symlink() else target.read_bytes()
    with pytest.raises(bundle.BundleError, match=message):
        bundle.write_bundle(target, {name: (tiny_bundle / name).read_bytes() for name in bundle.FILES})
    assert (os.readlink(target) if target.is_symlink() else target.read_bytes()) == before


def forged(tiny_bundle: Path, tmp_path: Path, name: str, change) -> Path:
    """A copy of the bundle whose file ``name`` ``change`` rewrote (a JSON file as a dict), the manifest made to
    agree: what a careful forger, or a hand edit followed by a recomputed manifest, leaves."""
    copy = tmp_path / "forged"
    shutil.copytree(tiny_bundle, copy)
    path = copy / name
    if name.endswith(".json"):
        value = json.loads(path.read_text())
        change(value)
        path.write_text(json.dumps(value))
    else:
        path.write_bytes(change(path.read_bytes()))
    rewrite_manifest(copy, name)
    return copy


def refused_in_one_line(directory: Path, message: str) -> None:
    """verify and generate refuse ``directory`` with one line naming ``message``, in bounded memory and time."""
    def limited_memory():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    for command in (["-m", "src.lib.runtime", "verify", str(directory)],
                    ["-m", "src.cli.minimal_llm", "generate", "--bundle", str(directory), "--prompt", "hi"]):
        done = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                              preexec_fn=limited_memory)
        assert done.returncode == 1 and message in done.stderr, (command, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("key, value", [("n_layers", 10**9), ("n_layers", 3), ("vocab_size", 10**9),
                                        ("d_model", 2**20), ("d_ff", 10**12)])
def test_every_size_in_config_json_is_held_to_the_tensors_the_weights_file_holds(tiny_bundle, tmp_path, key, value):
    forgery = forged(tiny_bundle, tmp_path, bundle.CONFIG, lambda config: config.update({key: value}))
    refused_in_one_line(forgery, "config.json: " if key == "n_layers" else "model.safetensors: holds")


@pytest.mark.parametrize("special", [{"pad": 0, "unk": 1, "bos": 2, "eos": 1000000}, {"pad": 0, "unk": 1, "bos": 2},
                                     {"pad": 0, "unk": 1, "bos": 2, "eos": -1}, None])
def test_special_tokens_must_be_ids_of_the_vocabulary(tiny_bundle, tmp_path, special):
    forgery = forged(tiny_bundle, tmp_path, bundle.CONFIG, lambda config: config.update(special_tokens=special))
    refused_in_one_line(forgery, "config.json: 'special_tokens' must give the ids of pad, unk, bos, eos")


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["temperature", "top_k", "top_p"]),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**20), st.booleans(),
                       st.text(max_size=4), st.none()))
def test_generation_config_is_held_to_the_bounds_every_sampling_value_has(tiny_bundle, tmp_path_factory, name, value):
    assume(out_of_bounds(name, value))
    forgery = forged(tiny_bundle, tmp_path_factory.mktemp("g"), bundle.GENERATION,
                     lambda generation: generation.update({name: value}))
    with pytest.raises(bundle.BundleError, match=f"{bundle.GENERATION}: {name} must be "):
        load_bundle(forgery)


def test_a_bundle_whose_generation_config_says_nan_is_refused_by_verify_and_generate(tiny_bundle, tmp_path):
    forgery = forged(tiny_bundle, tmp_path, bundle.GENERATION, lambda generation: generation.update(temperature=-1))
    refused_in_one_line(forgery, "generation_config.json: temperature must be in [0, 10] (0 = greedy), got -1")


@pytest.mark.parametrize("change, message", [
    ({"eos_token_id": 1000000}, "'eos_token_id' is 1000000, config.json's eos token is 3"),
    ({"pad_token_id": 2}, "'pad_token_id' is 2, config.json's pad token is 0"),
    ({"do_sample": False}, "'do_sample' is False with temperature 0.8 (0 is greedy)")])
def test_generation_config_says_what_the_runtime_does(tiny_bundle, tmp_path, change, message):
    """`transformers` reads generation_config.json's token ids and do_sample, the runtime config.json's: one model."""
    forgery = forged(tiny_bundle, tmp_path, bundle.GENERATION, lambda generation: generation.update(change))
    refused_in_one_line(forgery, f"generation_config.json: {message}")


def test_non_finite_weights_are_refused(tiny_bundle, tmp_path):
    def poisoned(data: bytes) -> bytes:
        weights = load_safetensors(data)
        weights["model.norm.weight"][3] = np.nan
        return save_safetensors(weights)

    refused_in_one_line(forged(tiny_bundle, tmp_path, bundle.WEIGHTS, poisoned),
                        "model.safetensors: model.norm.weight holds non-finite weights")


def test_a_tokenizer_swapped_inside_a_bundle_is_refused(tiny_bundle, tmp_path):
    """The same number of pieces, another tokenizer: provenance.json records the one the weights were trained with."""
    def other_tokenizer(proto: bytes) -> bytes:
        changed = bytearray(proto)
        changed[len(changed) // 2] ^= 0x20  # a letter of some piece changes case: a valid model, another tokenizer
        return bytes(changed)

    forgery = forged(tiny_bundle, tmp_path, bundle.TOKENIZER, other_tokenizer)
    refused_in_one_line(forgery, "tokenizer.model: not the tokenizer the weights were trained with")


@pytest.mark.parametrize("budgets", [{"rss_mb": "lots", "peak_mb": 80, "latency_p95_ms": 250},
                                     {"rss_mb": 64, "peak_mb": 80}, [64, 80, 250], {"rss_mb": float("nan"),
                                                                                    "peak_mb": 80,
                                                                                    "latency_p95_ms": 250}])
def test_budgets_that_strict_mode_would_compare_against_must_be_numbers(tiny_bundle, tmp_path, budgets):
    forgery = forged(tiny_bundle, tmp_path, bundle.METRICS, lambda metrics: metrics.update(budgets=budgets))
    with pytest.raises(bundle.BundleError, match="metrics.json: 'budgets' must give"):
        load_bundle(forgery)


@pytest.mark.parametrize("path, message", [("missing", "missing not found: build a bundle"),
                                           ("a" * 5000, "cannot be read as a bundle (File name too long)")])
def test_a_bundle_path_that_is_not_there_says_so(tmp_path, path, message):
    with pytest.raises(bundle.BundleError, match=re.escape(message)):
        load_bundle(tmp_path / path)
