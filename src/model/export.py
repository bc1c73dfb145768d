"""A checkpoint's model as the bundle reads it: safetensors weights under Hugging Face's names, and the config of
its forward pass, for the runtime and for `transformers` (src/lib/runtime/hf_format.py says which architecture)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as save_safetensors

from src.data.tokenizer import SPECIAL_TOKENS
from src.lib.runtime.hf_format import hf_config
from src.model.checkpoint import load_model
from src.model.transformer import TinyTransformer

# The PyTorch name of each block's tensor -> its Hugging Face (Starcoder2) name; the fused qkv is split apart.
_BLOCK_NAMES = {"norm_attn.weight": "input_layernorm.weight", "norm_attn.bias": "input_layernorm.bias",
                "attn.out.weight": "self_attn.o_proj.weight",
                "norm_mlp.weight": "post_attention_layernorm.weight", "norm_mlp.bias": "post_attention_layernorm.bias",
                "mlp.up.weight": "mlp.c_fc.weight", "mlp.up.bias": "mlp.c_fc.bias",
                "mlp.down.weight": "mlp.c_proj.weight", "mlp.down.bias": "mlp.c_proj.bias"}


def runtime_config(model: TinyTransformer) -> dict[str, Any]:
    """Everything that rebuilds ``model``'s forward pass, read off the model itself; then the same for
    `transformers`."""
    shape = model.shape
    config = {
        "architecture": "TinyTransformer",
        "vocab_size": shape.vocab_size, "n_layers": shape.n_layers, "n_heads": shape.n_heads,
        "d_model": shape.d_model, "d_ff": shape.d_ff, "context_length": shape.context_length,
        "rope_base": model.rope.base, "rope_pairing": "half",  # channel i turns with channel i + head_dim / 2
        "norm": "layer_norm", "norm_eps": model.norm.eps, "activation": "gelu",  # the MLP's F.gelu: the erf form
        "tie_embeddings": True, "dtype": "float32",
        "special_tokens": dict(SPECIAL_TOKENS),
    }
    return {**config, **hf_config(config)}


def hf_tensors(model: TinyTransformer) -> dict[str, np.ndarray]:
    """``model``'s weights, fp32, under Hugging Face's names: the head stored once (as the embedding), the fused
    qkv split into its queries, keys and values, and the zero biases of the attention's projections."""
    state = {name: np.ascontiguousarray(tensor.detach().float().numpy()) for name, tensor in model.state_dict().items()}
    tensors = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["norm.weight"],
               "model.norm.bias": state["norm.bias"]}
    zero = np.zeros(model.shape.d_model, np.float32)
    for i in range(model.shape.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        tensors.update({theirs + name: state[ours + mine] for mine, name in _BLOCK_NAMES.items()})
        for name, weight in zip("qkv", np.split(state[ours + "attn.qkv.weight"], 3)):
            tensors[f"{theirs}self_attn.{name}_proj.weight"] = np.ascontiguousarray(weight)
        tensors.update({f"{theirs}self_attn.{name}_proj.bias": zero for name in "qkvo"})
    return tensors


def export_for_runtime(checkpoint: Path) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """(config, safetensors bytes, the checkpoint's metadata) of ``checkpoint``."""
    model, meta = load_model(checkpoint)
    return runtime_config(model), save_safetensors(hf_tensors(model), metadata={"format": "pt"}), meta
