"""The bundle as a Hugging Face model: the `transformers` architecture that computes the runtime's forward pass,
and the config.json fields that say so, derived from the runtime's own.

``Starcoder2ForCausalLM`` computes TinyTransformer's function: pre-norm LayerNorm blocks with biases, rotary
positions turning channel i with i + head_dim/2 over the whole head, an exact-GELU MLP with biases, the output
head tied to the embedding, and a sliding window. With ``sliding_window`` = the context, each token attends to
itself and the context - 1 tokens before it, which is what the runtime's ring cache does past the context; so
the logits agree at every position of any text, not only within the context. (GPT-NeoX, the other fit, has no
sliding window: past the context it attends to every earlier token, at distances this model never saw.)
Starcoder2's one ``use_bias`` flag covers attention and MLP alike, so the attention projections, which have no
bias in TinyTransformer, carry zero biases; the runtime adds them as it adds every other bias.
"""

from __future__ import annotations

from typing import Any

ARCHITECTURE = "Starcoder2ForCausalLM"


def hf_config(config: dict[str, Any]) -> dict[str, Any]:
    """The fields `transformers` reads from config.json, from the runtime's ``config`` (checked: see model.py)."""
    special = config["special_tokens"]
    return {
        "architectures": [ARCHITECTURE], "model_type": "starcoder2",
        "vocab_size": config["vocab_size"], "hidden_size": config["d_model"], "intermediate_size": config["d_ff"],
        "num_hidden_layers": config["n_layers"], "num_attention_heads": config["n_heads"],
        "num_key_value_heads": config["n_heads"],
        "max_position_embeddings": config["context_length"], "sliding_window": config["context_length"],
        "rope_theta": config["rope_base"], "norm_epsilon": config["norm_eps"],
        "hidden_act": "gelu",  # transformers' "gelu" is the exact, erf form, as the runtime's
        "use_bias": True, "tie_word_embeddings": True, "dtype": "float32",
        "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0,
        "bos_token_id": special["bos"], "eos_token_id": special["eos"], "pad_token_id": special["pad"],
    }
