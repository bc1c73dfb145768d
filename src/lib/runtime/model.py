"""A bundle, loaded: its verified files turned into weights, a tokenizer and defaults, checked against each other."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
from safetensors.numpy import load as load_safetensors

from src.lib.runtime.bundle import CONFIG, GENERATION, METRICS, TOKENIZER, WEIGHTS, BundleError, read_bundle
from src.lib.runtime.decoder import Decoder, tensor_shapes
from src.lib.runtime.hf_format import hf_config
from src.lib.runtime.sampling import Sampling

# The longest context a bundle may ask for: its KV cache is allocated before any token is read.
MAX_CONTEXT = 8192
_SHAPE_KEYS = ("vocab_size", "n_layers", "n_heads", "d_model", "d_ff", "context_length")


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
        if not isinstance(config.get(key), (int, float)) or not math.isfinite(config[key]) or config[key] <= 0:
            raise BundleError(f"{path}: '{key}' must be a positive number, got {config.get(key)!r}")
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


def load_bundle(directory: Path | str) -> BundleModel:
    """Read, verify and load the bundle in ``directory``; BundleError (naming the file) when it cannot be used."""
    contents = read_bundle(Path(directory))
    where = contents.directory
    config = _check_config(contents.json(CONFIG), where / CONFIG)
    _check_hf_fields(config, where / CONFIG)
    weights = load_safetensors(contents.files[WEIGHTS])
    shapes = tensor_shapes(config)
    if sorted(weights) != sorted(shapes):
        raise BundleError(f"{where / WEIGHTS}: does not hold the tensors {where / CONFIG} describes")
    for name, shape in shapes.items():
        if weights[name].shape != shape or weights[name].dtype != np.float32:
            raise BundleError(f"{where / WEIGHTS}: {name} is not an fp32 tensor of shape {shape}")
    try:
        tokenizer = spm.SentencePieceProcessor(model_proto=contents.files[TOKENIZER])
    except RuntimeError as exc:
        raise BundleError(f"{where / TOKENIZER}: not a sentencepiece model ({exc})") from None
    if tokenizer.get_piece_size() != config["vocab_size"]:
        raise BundleError(f"{where / TOKENIZER}: {tokenizer.get_piece_size()} pieces, the model has "
                          f"{config['vocab_size']}")
    generation = contents.json(GENERATION)
    try:
        sampling = Sampling(float(generation["temperature"]), int(generation["top_k"]), float(generation["top_p"]))
    except (KeyError, TypeError, ValueError):
        raise BundleError(f"{where / GENERATION}: expected numbers temperature, top_k and top_p") from None
    return BundleModel(where, config, weights, tokenizer, sampling, contents.json(METRICS))
