"""A checkpoint's model as the bundle runtime reads it: safetensors weights and the config of its forward pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as save_safetensors

from src.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from src.model.checkpoint import load_model
from src.model.transformer import TinyTransformer


def runtime_config(model: TinyTransformer) -> dict[str, Any]:
    """Everything that rebuilds ``model``'s forward pass, read off the model itself."""
    shape = model.shape
    return {
        "architecture": "TinyTransformer",
        "vocab_size": shape.vocab_size, "n_layers": shape.n_layers, "n_heads": shape.n_heads,
        "d_model": shape.d_model, "d_ff": shape.d_ff, "context_length": shape.context_length,
        "rope_base": model.rope.base, "rope_pairing": "half",  # channel i turns with channel i + head_dim / 2
        "norm": "layer_norm", "norm_eps": model.norm.eps, "activation": "gelu",  # the MLP's F.gelu: the erf form
        "tie_embeddings": True, "dtype": "float32",
        "special_tokens": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
    }


def export_for_runtime(checkpoint: Path) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """(config, safetensors bytes, the checkpoint's metadata) of ``checkpoint``: fp32, the head stored once."""
    model, meta = load_model(checkpoint)
    tensors = {name: np.ascontiguousarray(tensor.detach().float().numpy())
               for name, tensor in model.state_dict().items() if name != "head.weight"}
    return runtime_config(model), save_safetensors(tensors), meta
