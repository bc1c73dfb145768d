"""A bundle, loaded: its verified files turned into weights, a tokenizer and defaults, checked against each other.

Nothing is allocated for a size config.json gives before the weights file's header shows the tensors of that
size (the context length, which no tensor holds, is capped instead); the weights must be finite, the tokenizer
the one provenance.json records the weights were trained with, the special tokens within the vocabulary and
generation_config.json's defaults within the bounds every sampling value has (``SAMPLING_BOUNDS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
from safetensors.numpy import load as load_safetensors

from src.lib.runtime.bundle import (CONFIG, GENERATION, METRICS, PROVENANCE, TOKENIZER, WEIGHTS, BundleError,
                                    BundleFiles, read_bundle, sha256_hex)
from src.lib.runtime.budgets import BUDGETS
from src.lib.runtime.decoder import Decoder, tensor_shapes
from src.lib.runtime.hf_format import hf_config
from src.lib.runtime.sampling import Sampling
from src.lib.runtime.sampling_bounds import out_of_bounds

# The longest context a bundle may ask for: its KV cache is allocated before any token is read.
MAX_CONTEXT = 8192
_SHAPE_KEYS = ("vocab_size", "n_layers", "n_heads", "d_model", "d_ff", "context_length")
_SPECIAL_TOKENS = ("pad", "unk", "bos", "eos")
_GENERATION_KEYS = ("temperature", "top_k", "top_p")
_GENERATION_TOKEN_IDS = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "pad_token_id"}


@dataclass(frozen=True)
class BundleModel:
    """What a bundle holds, ready to generate: ``decoder()`` starts a generation (its own KV cache)."""
    directory: Path
    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    tokenizer: spm.SentencePieceProcessor
    sampling: Sampling  # the bundle's defaults (generation_config.json)
    metrics: dict[str, Any]

    def decoder(self) -> Decoder:
        return Decoder(self.config, self.weights)


def _check_config(config: Any, path: Path) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise BundleError(f"{path}: not a mapping")
    for key in _SHAPE_KEYS:
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BundleError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    if config["d_model"] % config["n_heads"] or (config["d_model"] // config["n_heads"]) % 2:
        raise BundleError(f"{path}: d_model {config['d_model']} does not split into {config['n_heads']} heads of "
                          f"an even width")
    if config["context_length"] > MAX_CONTEXT:
        raise BundleError(f"{path}: a context of {config['context_length']} tokens is more than {MAX_CONTEXT}")
    expected = {"activation": "gelu", "norm": "layer_norm", "rope_pairing": "half", "tie_embeddings": True}
    for key, value in expected.items():
        if config.get(key) != value:
            raise BundleError(f"{path}: '{key}' is {config.get(key)!r}; this runtime computes {value!r}")
    for key in ("rope_base", "norm_eps"):
        value = config.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise BundleError(f"{path}: '{key}' must be a positive number, got {value!r}")
    special = config.get("special_tokens")
    if not isinstance(special, dict) or sorted(special) != sorted(_SPECIAL_TOKENS) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < config["vocab_size"] for i in special.values()):
        raise BundleError(f"{path}: 'special_tokens' must give the ids of {', '.join(_SPECIAL_TOKENS)}, each below "
                          f"vocab_size {config['vocab_size']}, got {special!r}")
    return config


def _check_hf_fields(config: dict[str, Any], path: Path) -> None:
    """``transformers`` reads config.json's Hugging Face fields, this runtime its own: both must be one model."""
    try:
        expected = hf_config(config)
    except (KeyError, TypeError):
        raise BundleError(f"{path}: 'special_tokens' must map pad, unk, bos and eos to ids") from None
    wrong = next((key for key, value in expected.items() if config.get(key) != value), None)
    if wrong is not None:
        raise BundleError(f"{path}: '{wrong}' is {config.get(wrong)!r}; the runtime's fields make it "
                          f"{expected[wrong]!r}")


def _check_tensors(config: dict[str, Any], declared: dict[str, dict[str, Any]], where: Path) -> None:
    """The weights file must declare exactly the tensors ``config`` describes. Their number is compared first:
    listing the tensors of a config's layers costs memory in proportion to the layers it claims."""
    base = len(tensor_shapes({**config, "n_layers": 0}))
    per_layer = len(tensor_shapes({**config, "n_layers": 1})) - base
    if len(declared) != base + per_layer * config["n_layers"]:
        raise BundleError(f"{where / CONFIG}: {config['n_layers']} layers, but {where / WEIGHTS} holds "
                          f"{len(declared)} tensors, not the {base} + {per_layer} per layer they need")
    for name, shape in tensor_shapes(config).items():
        if name not in declared or tuple(declared[name]["shape"]) != shape:
            found = declared[name]["shape"] if name in declared else "nothing"
            raise BundleError(f"{where / WEIGHTS}: holds {found} as {name}, where {where / CONFIG} describes a "
                              f"tensor of shape {list(shape)}")


def check_generation(generation: Any, config: dict[str, Any], path: Path) -> Sampling:
    """generation_config.json's defaults, held to the bounds every sampling value has; the special token ids it
    gives `transformers` must be config.json's (the runtime's), and do_sample must say whether it samples."""
    if not isinstance(generation, dict) or not all(name in generation for name in _GENERATION_KEYS):
        raise BundleError(f"{path}: expected the numbers {', '.join(_GENERATION_KEYS)}")
    for name in _GENERATION_KEYS:
        bounds = out_of_bounds(name, generation[name])
        if bounds:
            raise BundleError(f"{path}: {name} must be {bounds}, got {generation[name]!r}")
    for special, key in _GENERATION_TOKEN_IDS.items():
        if key in generation and generation[key] != config["special_tokens"][special]:
            raise BundleError(f"{path}: '{key}' is {generation[key]!r}, config.json's {special} token is "
                              f"{config['special_tokens'][special]}")
    if "do_sample" in generation and generation["do_sample"] is not (generation["temperature"] > 0):
        raise BundleError(f"{path}: 'do_sample' is {generation['do_sample']!r} with temperature "
                          f"{generation['temperature']!r} (0 is greedy)")
    return Sampling(float(generation["temperature"]), int(generation["top_k"]), float(generation["top_p"]))


def _check_tokenizer_pairing(contents: BundleFiles, where: Path) -> None:
    """The bundle's tokenizer is the one the weights were trained with: its sha256 is the one provenance.json
    records (the checkpoint's fingerprint), as the checkpoint path checks it."""
    provenance = contents.json(PROVENANCE)
    fingerprint = provenance.get("fingerprint") if isinstance(provenance, dict) else None
    recorded = fingerprint.get("tokenizer") if isinstance(fingerprint, dict) else None
    if recorded != sha256_hex(contents.files[TOKENIZER]):
        said = "records another sha256" if recorded else "records no tokenizer fingerprint"
        raise BundleError(f"{where / TOKENIZER}: not the tokenizer the weights were trained with "
                          f"({where / PROVENANCE} {said})")


def _check_metrics(metrics: Any, path: Path) -> dict[str, Any]:
    """metrics.json: a mapping whose budgets, where it records them, are positive numbers (strict mode's limits)."""
    if not isinstance(metrics, dict):
        raise BundleError(f"{path}: not a mapping")
    budgets = metrics.get("budgets")
    if budgets is not None and (not isinstance(budgets, dict) or sorted(budgets) != sorted(BUDGETS) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in budgets.values())):
        raise BundleError(f"{path}: 'budgets' must give {', '.join(BUDGETS)} as positive numbers, got {budgets!r}")
    return metrics


def load_bundle(directory: Path | str) -> BundleModel:
    """Read, verify and load the bundle in ``directory``; BundleError (naming the file) when it cannot be used."""
    contents = read_bundle(Path(directory))
    where = contents.directory
    config = _check_config(contents.json(CONFIG), where / CONFIG)
    _check_tensors(config, contents.tensors, where)
    _check_hf_fields(config, where / CONFIG)
    _check_tokenizer_pairing(contents, where)
    sampling = check_generation(contents.json(GENERATION), config, where / GENERATION)
    weights = load_safetensors(contents.files[WEIGHTS])
    for name, tensor in weights.items():
        if not np.isfinite(tensor).all():
            raise BundleError(f"{where / WEIGHTS}: {name} holds non-finite weights (NaN or infinity)")
    try:
        tokenizer = spm.SentencePieceProcessor(model_proto=contents.files[TOKENIZER])
    except RuntimeError as exc:
        raise BundleError(f"{where / TOKENIZER}: not a sentencepiece model ({exc})") from None
    if tokenizer.get_piece_size() != config["vocab_size"]:
        raise BundleError(f"{where / TOKENIZER}: {tokenizer.get_piece_size()} pieces, the model has "
                          f"{config['vocab_size']}")
    return BundleModel(where, config, weights, tokenizer, sampling, _check_metrics(contents.json(METRICS),
                                                                                  where / METRICS))
