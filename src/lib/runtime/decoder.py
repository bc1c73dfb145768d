"""TinyTransformer's forward pass in numpy, for generation: the runtime's one decoding path.

It computes what ``src.model.transformer.TinyTransformer.forward`` computes over its KV cache (tests hold
the two to 1e-4), from the bundle's config and weights, with no PyTorch:

    x = embedding[token]
    for each block:  n = layernorm(x);  x += o(attention(rope(q(n)), rope(k(n)), v(n)))
                     x += down(gelu(up(layernorm(x))))
    logits = embedding @ layernorm(x)                     (the head is the embedding)

The tensors carry Hugging Face's Starcoder2 names (``hf_format``); the attention's biases, zero in a bundle made
from TinyTransformer, are added all the same. Rotary positions pair channel i with i + head_dim/2. Keys and
values live in a ring of ``context_length`` slots (position p in slot p % context): a prompt is read at once
into an empty cache, causally; then each token is one step, and past the context it overwrites the oldest
slot, so it attends to itself and the context - 1 tokens before it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# erf by Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf, and GELU is the exact, erf form.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x: np.ndarray) -> np.ndarray:
    t = 1.0 / (1.0 + _ERF_P * np.abs(x))
    polynomial = t * (_ERF_A[0] + t * (_ERF_A[1] + t * (_ERF_A[2] + t * (_ERF_A[3] + t * _ERF_A[4]))))
    return np.sign(x) * (1.0 - polynomial * np.exp(-x * x))


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x * np.float32(1 / np.sqrt(2))))


def _block_shapes(d: int, f: int) -> dict[str, tuple[int, ...]]:
    """One block's tensors, in the order ``Decoder`` unpacks them, and their shapes."""
    attention = {f"self_attn.{name}_proj.{part}": shape for name in "qkvo"
                 for part, shape in (("weight", (d, d)), ("bias", (d,)))}
    return {"input_layernorm.weight": (d,), "input_layernorm.bias": (d,), **attention,
            "post_attention_layernorm.weight": (d,), "post_attention_layernorm.bias": (d,),
            "mlp.c_fc.weight": (f, d), "mlp.c_fc.bias": (f,), "mlp.c_proj.weight": (d, f), "mlp.c_proj.bias": (d,)}


def tensor_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor the decoder reads, under its Hugging Face (Starcoder2) name, with its shape (the head is the
    embedding)."""
    v, d, f = config["vocab_size"], config["d_model"], config["d_ff"]
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "model.norm.bias": (d,)}
    for i in range(config["n_layers"]):
        shapes.update({f"model.layers.{i}.{name}": shape for name, shape in _block_shapes(d, f).items()})
    return shapes


def layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """Over the last axis, with the population variance (as torch.nn.LayerNorm)."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(variance + eps) * gain + bias


class Decoder:
    """One generation: ``prefill`` a prompt, then ``step`` one token at a time; each returns the (V,) logits."""

    def __init__(self, config: dict[str, Any], weights: dict[str, np.ndarray]):
        self.n_heads, self.context = config["n_heads"], config["context_length"]
        self.head_dim = config["d_model"] // self.n_heads
        self.eps = config["norm_eps"]
        self.embedding = weights["model.embed_tokens.weight"]  # (V, D): read the token, and write the logits
        names = _block_shapes(config["d_model"], config["d_ff"])
        self.blocks = [tuple(weights[f"model.layers.{i}.{name}"] for name in names) for i in range(config["n_layers"])]
        self.final_norm = (weights["model.norm.weight"], weights["model.norm.bias"])
        self.theta = 1.0 / config["rope_base"] ** (np.arange(0, self.head_dim, 2) / self.head_dim)  # fp64
        cache = (config["n_layers"], self.n_heads, self.context, self.head_dim)
        self.keys, self.values = np.zeros(cache, np.float32), np.zeros(cache, np.float32)
        self.position = 0  # tokens read: the next one's position

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Forget what was read and read the last ``context_length`` of ``ids``; the next token's logits."""
        self.position = 0
        return self._read(ids[-self.context:])

    def step(self, token: int) -> np.ndarray:
        return self._read([token])

    def _rotations(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin of position x theta_i, each (T, 1, hd) in fp32 for both halves; the angles in fp64."""
        angles = np.outer(positions, self.theta)  # (T, hd/2)
        cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
        return np.concatenate((cos, cos), axis=-1)[:, None, :], np.concatenate((sin, sin), axis=-1)[:, None, :]

    def _rotate(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """(T, H, hd) vectors, each pair of channels (i, i + hd/2) turned by its position's angle."""
        half = self.head_dim // 2
        turned = np.concatenate((-x[..., half:], x[..., :half]), axis=-1)
        return x * cos + turned * sin

    def _read(self, ids: list[int]) -> np.ndarray:
        count, start = len(ids), self.position
        positions = np.arange(start, start + count)
        slots = positions % self.context
        seen = min(start + count, self.context)  # cached slots the new tokens may attend to
        # A prompt (into an empty cache) is causal within itself; one token sees every cached slot.
        mask = np.triu(np.full((count, count), -np.inf, np.float32), k=1) if count > 1 else None
        h, hd = self.n_heads, self.head_dim
        cos, sin = self._rotations(positions)
        x = self.embedding[ids]  # (T, D)
        for layer, (g1, b1, q_w, q_b, k_w, k_b, v_w, v_b, out_w, out_b, g2, b2, up_w, up_b, down_w, down_b) \
                in enumerate(self.blocks):
            normed = layer_norm(x, g1, b1, self.eps)
            q, k, v = ((normed @ w.T + b).reshape(count, h, hd) for w, b in ((q_w, q_b), (k_w, k_b), (v_w, v_b)))
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)  # (T, H, hd)
            self.keys[layer][:, slots] = k.transpose(1, 0, 2)
            self.values[layer][:, slots] = v.transpose(1, 0, 2)
            keys, values = self.keys[layer][:, :seen], self.values[layer][:, :seen]  # (H, S, hd)
            scores = q.transpose(1, 0, 2) @ keys.transpose(0, 2, 1) * np.float32(hd ** -0.5)  # (H, T, S)
            if mask is not None:
                scores += mask
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            attended = (scores / scores.sum(axis=-1, keepdims=True)) @ values  # (H, T, hd)
            x = x + attended.transpose(1, 0, 2).reshape(count, h * hd) @ out_w.T + out_b
            x = x + gelu(layer_norm(x, g2, b2, self.eps) @ up_w.T + up_b) @ down_w.T + down_b
        self.position = start + count
        return self.embedding @ layer_norm(x[-1], *self.final_norm, self.eps)
