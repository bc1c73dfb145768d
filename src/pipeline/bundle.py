"""Stage `bundle`: the trained model as a verified, self-describing bundle that runs without PyTorch (exit code 4).

    python -m src.pipeline.bundle [--params params.yaml]

``python -m src.lib.runtime create_bundle --model ... --tokenizer ...`` runs the same ``create_bundle``.
It writes the files src/lib/runtime/bundle.py lists into ``dist/tinytransformer/``: the checkpoint's
weights as safetensors and its forward pass as config, the tokenizer (sentencepiece's, and the same as
tokenizer.json), the generation defaults, the metrics, where it all came from, and a model card; then it
reads the bundle back as a device would. The directory is also a Hugging Face model directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from src import paths
from src.atomic import json_bytes
from src.config import BudgetConfig, GenerationConfig, TokenizerName, load_config
from src.data.hf_tokenizer import special_tokens_map, tokenizer_config, tokenizer_json
from src.data.tokenizer import TokenizerError, load_tokenizer
from src.lib.runtime import bundle
from src.lib.runtime.model import load_bundle
from src.model.checkpoint import CheckpointError, file_digest
from src.model.export import export_for_runtime
from src.pipeline.stage import missing_input, run_stage, stage_arguments

log = logging.getLogger(__name__)

PUBLIC_DOMAIN = ("Project Gutenberg eBooks of works in the public domain in the United States; the licence text "
                 "cleaning removed from each is kept below. Check the laws of your country before using them "
                 "elsewhere.")


class BundleInputError(ValueError):
    """The checkpoint or tokenizer cannot make a bundle (missing, damaged, or not of one run)."""


@dataclass(frozen=True)
class BundleInputs:
    """What a bundle is made of besides the checkpoint and the tokenizer; the pipeline's files where they exist."""
    generation: GenerationConfig
    budgets: BudgetConfig | None = None
    train_metrics: dict[str, Any] = field(default_factory=dict)
    tokenizer_metrics: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    recorded: dict[str, str] = field(default_factory=dict)  # input file -> md5 of its content (dvc.lock's hash)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def md5_of(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def rights(books: list[dict[str, Any]]) -> str:
    """What can be said of the books' rights: Gutenberg's for the books that carried its licence."""
    others = [book["name"] for book in books if not book["licence"]]
    if not others:
        return PUBLIC_DOMAIN
    return (f"{PUBLIC_DOMAIN if len(others) < len(books) else ''} Not from Project Gutenberg: {', '.join(others)}; "
            f"whoever trained this model answers for their rights.").strip()


def git_commit() -> str | None:
    """The commit checked out here, or None outside a git repository."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def model_card(config: dict[str, Any], metrics: dict[str, Any], provenance: dict[str, Any]) -> str:
    """README.md: what the model is, its data and figures, its use and limits, with the Hugging Face metadata."""
    languages = metrics["languages"]
    books = "\n".join(f"| {b['title'] or b['name']} | {b['author'] or '-'} | {b['language']} | {b['share']:.1%} | "
                      f"`{b['sha256'][:12]}` |" for b in provenance["books"]) or "| (not recorded) | | | | |"
    loss, bits = metrics["validation_loss"], metrics["validation_bits_per_byte"]
    figures = (f"- validation loss **{loss:.4f}** nats per token, **{bits:.4f}** bits per byte, after "
               f"{metrics['best_epoch']:g} of {metrics['epochs']:g} epochs" if loss is not None and bits is not None
               else "- validation figures: not recorded with this bundle")
    bits_by_language = metrics.get("bits_per_byte_by_language") or {}
    per_language = "\n".join(
        f"- {language}: " + (f"{bits_by_language[language]:.4f} bits per byte, " if language in bits_by_language else "")
        + f"{m['tokens_per_character']} tokens per character on its held-out text"
        for language, m in metrics.get("tokenizer", {}).items())
    header = "\n".join(["---", "language:", *(f"- {code}" for code in languages), "license: mit",
                        "library_name: transformers", "pipeline_tag: text-generation",
                        "tags:", "- tinytransformer", "- safetensors", "- dvc", "---"])
    return f"""{header}

# TinyTransformer

A small decoder-only language model ({config['n_layers']} layers, {config['n_heads']} heads, width {config['d_model']},
context {config['context_length']} tokens, {config['vocab_size']} sentencepiece pieces, {metrics.get('parameters', '?')}
parameters), trained by the TinyTransformer DVC pipeline on the books below.

With `transformers` (as `{config['architectures'][0]}`: the same logits, the same token ids):

```python
from transformers import pipeline

generate = pipeline("text-generation", model="<this folder or its Hub id>")
print(generate("<some text>", max_new_tokens=40, do_sample=False)[0]["generated_text"])
```

Or with numpy, sentencepiece and safetensors alone, through the TinyTransformer runtime:
`python -m src.cli.minimal_llm generate --bundle <this folder> --prompt "..."`.

## Data

| book | author | language | share of the corpus | sha256 |
| --- | --- | --- | ---: | --- |
{books}

{provenance["rights"]} `provenance.json` names each source, its hash, the commit and the pipeline inputs
this bundle was made from.

## Metrics

{figures}
{per_language}

The memory and latency budgets it is held to are in `metrics.json`; the pipeline's validate stage measures
this bundle against them.

## Intended use

Learning and demonstration: how a language model is trained, versioned, measured and shipped to a small
device. Text continuation in {", ".join(languages)}, in the style of the books above.

## Limitations

A model this small writes fluent-looking but incoherent text, repeats itself, and knows nothing beyond
its few books; it has no safety training. Do not use it for anything where the content matters.
"""


def tokenizer_files(model: bytes, special: dict[str, int]) -> dict[str, bytes]:
    """The sentencepiece ``model``, and the same tokenizer as `transformers` loads it."""
    return {bundle.TOKENIZER: model, bundle.HF_TOKENIZER: json_bytes(tokenizer_json(model)),
            bundle.HF_TOKENIZER_CONFIG: json_bytes(tokenizer_config(special, model)),
            bundle.HF_SPECIAL_TOKENS: json_bytes(special_tokens_map(special, model))}


def generation_config(generation: GenerationConfig, special: dict[str, int]) -> dict[str, Any]:
    """generation_config.json: the default sampling, as the runtime and `transformers` read it (temperature 0:
    greedy, do_sample false), with the special token ids."""
    return {**asdict(generation), "do_sample": generation.temperature > 0,
            "bos_token_id": special["bos"], "eos_token_id": special["eos"], "pad_token_id": special["pad"]}


def create_bundle(model: Path, tokenizer: Path, out: Path, inputs: BundleInputs) -> Path:
    """Write the bundle of ``model`` and ``tokenizer`` to ``out``, read it back as a device would, return ``out``."""
    try:
        config, weights, meta = export_for_runtime(model)
        load_tokenizer(tokenizer)
        tokenizers = tokenizer_files(Path(tokenizer).read_bytes(), config["special_tokens"])
    except (CheckpointError, TokenizerError) as exc:
        raise BundleInputError(str(exc)) from None
    if file_digest(tokenizer) != (meta.get("fingerprint") or {}).get("tokenizer"):
        raise BundleInputError(f"{tokenizer} is not the tokenizer {model} was trained with (its sha256 differs from "
                               f"the one the checkpoint records)")
    state = meta.get("training_state") or {}
    train = inputs.train_metrics
    metrics = {
        "validation_loss": train.get("best_validation_loss", state.get("best_validation_loss")),
        "validation_bits_per_byte": train.get("best_validation_bits_per_byte"),
        "best_epoch": train.get("best_epoch", state.get("best_epoch")), "epochs": train.get("epochs"),
        "parameters": train.get("parameters"),
        "tokenizer": {language: {k: m[k] for k in ("tokens_per_character", "character_coverage")}
                      for language, m in inputs.tokenizer_metrics.get("held_out", {}).items()},
        "budgets": asdict(inputs.budgets) if inputs.budgets else None,
        "languages": sorted({book["language"] for book in inputs.sources}),
        "bits_per_byte_by_language": train.get("best_bits_per_byte_by_language"),
    }
    provenance = {
        "books": [{k: book[k] for k in ("name", "title", "author", "url", "sha256", "language", "share")}
                  for book in inputs.sources],
        "rights": rights(inputs.sources),
        "gutenberg_licences": {book["name"]: book["licence"] for book in inputs.sources if book["licence"]},
        "git_commit": git_commit(),
        "inputs_md5": inputs.recorded,  # as dvc.lock records each input
        "fingerprint": meta.get("fingerprint"),
    }
    files = {
        bundle.WEIGHTS: weights,
        bundle.CONFIG: json_bytes(config),
        **tokenizers,
        bundle.GENERATION: json_bytes(generation_config(inputs.generation, config["special_tokens"])),
        bundle.METRICS: json_bytes(metrics),
        bundle.PROVENANCE: json_bytes(provenance),
        bundle.MODEL_CARD: model_card(config, metrics, provenance).encode("utf-8"),
    }
    bundle.write_bundle(out, files)
    load_bundle(out)  # what a device will do first: refuse to ship what it would refuse to load
    return out


def pipeline_inputs(generation: GenerationConfig, budgets: BudgetConfig | None, model: Path, tokenizer: Path, *,
                    required: bool) -> BundleInputs:
    """The pipeline's metrics and sources for a bundle of ``model`` and ``tokenizer``; ``required``: each must exist
    (the stage), else each is taken when it exists (a bundle made by hand from a checkpoint)."""
    files = {"train_metrics": (paths.TRAIN_METRICS, "train"),
             "tokenizer_metrics": (paths.TOKENIZER_METRICS, "tokenize"),
             "sources": (paths.CORPUS_SOURCES, "download")}
    found: dict[str, Any] = {}
    for name, (path, stage) in files.items():
        if path.is_file():
            found[name] = read_json(path)
        elif required:
            raise missing_input(path, stage)
    inputs = (Path(model), Path(tokenizer), *(path for path, _ in files.values()))
    recorded = {str(path): md5_of(path) for path in inputs if path.is_file()}
    return BundleInputs(generation, budgets, train_metrics=found.get("train_metrics", {}).get("train", {}),
                        tokenizer_metrics=found.get("tokenizer_metrics", {}).get("tokenizer", {}),
                        sources=found.get("sources", {}).get("books", []), recorded=recorded)


def make_bundle(generation: GenerationConfig, budgets: BudgetConfig, tokenizer_name: TokenizerName) -> Path:
    """The stage: the best model and its tokenizer, with every pipeline input required."""
    for needed, stage in ((paths.BEST_MODEL, "train"), (tokenizer_name.model, "tokenize")):
        if not needed.is_file():
            raise missing_input(needed, stage)
    out = create_bundle(paths.BEST_MODEL, tokenizer_name.model, paths.BUNDLE_DIR,
                        pipeline_inputs(generation, budgets, paths.BEST_MODEL, tokenizer_name.model, required=True))
    log.info("bundle written to %s and verified", out)
    return out


def main() -> None:
    args = stage_arguments(__doc__)

    def body() -> None:
        cfg = load_config(args.params)
        make_bundle(cfg.generation, cfg.validate.budgets, cfg.tokenizer_name)

    run_stage("bundle", body, expected=(BundleInputError, bundle.BundleError))


if __name__ == "__main__":
    main()
