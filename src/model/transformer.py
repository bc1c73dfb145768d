"""TinyTransformer: a small decoder-only (GPT-style) language model.

    tokens (B, T)
      -> token embedding                                  (B, T, D)
      -> n_layers x Block: x + Attention(LN(x)), x + MLP(LN(x))   (pre-norm residual blocks)
      -> final LayerNorm -> linear head tied to the embedding     (B, T, V)

Positions are rotary (RoPE): queries and keys are rotated by an angle that grows with the position,
so attention scores depend on relative distance, and no position table limits the model's length.
Attention is causal and runs through ``torch.nn.functional.scaled_dot_product_attention``, with the
kernel PyTorch chooses; the training step chooses its own (``src.training.trainer.training_attention``).

Generation feeds one token at a time through a ``Decoder``: the same function as ``forward`` for that
token, written with matrix-vector products on the model's tensors.

Initialisation (GPT-2): every weight matrix and the embedding ~ N(0, 0.02); the two projections
that write into the residual stream (attention output, MLP output) ~ N(0, 0.02 / sqrt(2 * n_layers)),
so the residual's variance does not grow with depth; biases 0, LayerNorm gain 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from src.config import ModelConfig
from src.model.loss import linear_cross_entropy

INIT_STD = 0.02


@dataclass(frozen=True)
class ModelShape:
    """Everything that fixes the model's parameters: the config plus the tokenizer's vocabulary size."""
    vocab_size: int
    n_layers: int
    n_heads: int
    d_model: int
    d_ff: int
    dropout: float
    context_length: int

    @classmethod
    def from_config(cls, cfg: ModelConfig, vocab_size: int) -> "ModelShape":
        return cls(vocab_size, cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_ff, cfg.dropout, cfg.context_length)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def parameter_count(self) -> int:
        """Parameters of the model this shape builds, counted without building it (the head is the embedding)."""
        d, f = self.d_model, self.d_ff
        block = 2 * d + 3 * d * d + d * d + 2 * d + d * f + f + f * d + d  # norm, qkv, out, norm, up, down
        return self.vocab_size * d + self.n_layers * block + 2 * d


class RotaryEmbedding(nn.Module):
    """RoPE: position p turns each pair of channels (i, i + hd/2) by the angle p * theta_i.

    Pairing each channel with the one half a head away (as GPT-NeoX and LLaMA do), rather than with its
    neighbour (2i, 2i+1), makes the turn element-wise products on the two contiguous halves, which
    torch.compile fuses into the copies around attention. The neighbour pairing, written as one matrix
    product per position, made the default training step slower (two models alternating in one process,
    8 rounds: median 217.9 against 208.1 ms, each round's ratio median 0.974). The two pairings are the
    same model up to an order of the query and key channels; only checkpoints tell them apart.

    For one token (``Decoder``) the same turn is one (hd, hd) matrix R_p, precomputed for a window of
    positions: a single small matrix product keeps the decoding step short.
    """

    def __init__(self, head_dim: int, max_positions: int, base: float = 10_000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        cos, sin = self._cos_sin(0, max_positions)  # (P, hd/2) each
        self.register_buffer("cos", torch.cat((cos, cos), dim=-1)[:, None, :], persistent=False)  # (P, 1, hd)
        self.register_buffer("sin", torch.cat((sin, sin), dim=-1)[:, None, :], persistent=False)  # (P, 1, hd)

    def _cos_sin(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of p * theta_i for p in start.. start+count-1, each (count, hd/2) in fp32.

        The angles are taken in fp64: decoding goes on past the context, where p * theta_0 reaches
        thousands of radians, and fp32 would round the angle itself by up to p * 6e-8 radians."""
        theta = 1.0 / self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
        angles = torch.outer(torch.arange(start, start + count, dtype=torch.float64), theta)
        return angles.cos().float(), angles.sin().float()

    def rotation_matrices(self, start: int, count: int) -> torch.Tensor:
        """(count, hd, hd): R_p for p in start.. start+count-1, turning row vectors (x_rotated = x @ R_p)."""
        half = self.head_dim // 2
        cos, sin = self._cos_sin(start, count)
        rotations = torch.zeros(count, self.head_dim, self.head_dim)
        rotations[:, :half, :half] = torch.diag_embed(cos)
        rotations[:, :half, half:] = torch.diag_embed(sin)
        rotations[:, half:, :half] = torch.diag_embed(-sin)
        rotations[:, half:, half:] = torch.diag_embed(cos)
        return rotations.to(self.cos.device)

    def rotate(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """(B, T, N, hd) vectors at positions start.. start+T-1 -> the same, rotated."""
        positions = slice(start, start + x.shape[1])
        first, second = x.chunk(2, dim=-1)  # (B, T, N, hd/2) each
        turned = torch.cat((-second, first), dim=-1)  # each pair (a, b) -> (-b, a)
        return x * self.cos[positions] + turned * self.sin[positions]


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to the context length."""

    def __init__(self, shape: ModelShape, batch_size: int, dtype: torch.dtype, device: torch.device):
        size = (batch_size, shape.n_heads, shape.context_length, shape.head_dim)
        self.keys = [torch.zeros(size, dtype=dtype, device=device) for _ in range(shape.n_layers)]
        self.values = [torch.zeros(size, dtype=dtype, device=device) for _ in range(shape.n_layers)]
        self.length = 0  # tokens cached so far

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, H, t, hd) keys/values; return all cached ones for ``layer``."""
        keys, values, t = self.keys[layer], self.values[layer], k.shape[-2]
        keys.narrow(2, self.length, t).copy_(k)
        values.narrow(2, self.length, t).copy_(v)
        return keys.narrow(2, 0, self.length + t), values.narrow(2, 0, self.length + t)


class CausalSelfAttention(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.n_heads, self.dropout = shape.n_heads, shape.dropout
        self.qkv = nn.Linear(shape.d_model, 3 * shape.d_model, bias=False)
        self.out = nn.Linear(shape.d_model, shape.d_model, bias=False)
        self.out.residual_projection = True

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t, d = x.shape
        h, hd = self.n_heads, d // self.n_heads
        qkv = self.qkv(x).view(b, t, 3 * h, hd)  # (B, T, 3H, hd): queries, keys, values
        start = cache.length if cache else 0
        qk = rope.rotate(qkv[:, :, :2 * h], start)  # (B, T, 2H, hd), rotated by position
        q, k = qk.view(b, t, 2, h, hd).permute(2, 0, 3, 1, 4)  # 2x (B, H, T, hd)
        v = qkv[:, :, 2 * h:].transpose(1, 2)  # (B, H, T, hd)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        # A prompt (t > 1) is causal within itself; a single new token may see every cached one.
        # Prompts are only ever fed into an empty cache, so "causal" is exact there too.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


def training_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout while training; otherwise ``x`` itself, at no cost (idle nn.Dropout module calls took about
    7 % of a one-token decoding step, measured: 0.80 against 0.74 ms)."""
    return F.dropout(x, p, training=True) if training and p > 0 else x


class MLP(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.up = nn.Linear(shape.d_model, shape.d_ff)
        self.down = nn.Linear(shape.d_ff, shape.d_model)
        self.down.residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.norm_attn = nn.LayerNorm(shape.d_model)
        self.attn = CausalSelfAttention(shape)
        self.norm_mlp = nn.LayerNorm(shape.d_model)
        self.mlp = MLP(shape)
        self.dropout = shape.dropout

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + training_dropout(self.attn(self.norm_attn(x), rope, cache, layer), self.dropout, self.training)
        return x + training_dropout(self.mlp(self.norm_mlp(x)), self.dropout, self.training)


class TinyTransformer(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab_size, shape.d_model)
        self.rope = RotaryEmbedding(shape.head_dim, shape.context_length)
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.n_layers))
        self.norm = nn.LayerNorm(shape.d_model)
        self.head = nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        self.tie_weights()
        self.apply(self._init)

    def tie_weights(self) -> None:
        """One matrix reads and writes tokens: the head is the embedding."""
        self.head.weight = self.embed.weight

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            scale = 1 / math.sqrt(2 * self.shape.n_layers) if getattr(module, "residual_projection", False) else 1
            nn.init.normal_(module.weight, std=INIT_STD * scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=INIT_STD)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hidden(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, D) final hidden states, before the head."""
        if (cache.length if cache else 0) + tokens.shape[1] > self.shape.context_length:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the context of {self.shape.context_length}")
        x = training_dropout(self.embed(tokens), self.shape.dropout, self.training)
        for layer, block in enumerate(self.blocks):
            x = block(x, self.rope, cache, layer)
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) next-token logits."""
        return self.head(self.hidden(tokens, cache))

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats per token) of predicting ``targets`` (B, T) from ``tokens`` (B, T)."""
        return linear_cross_entropy(self.hidden(tokens).flatten(0, 1), self.head.weight, targets.flatten())


class _BlockTensors(NamedTuple):
    """One block's parameters as plain tensors, in the order ``Decoder.step`` uses them."""
    norm_attn_weight: torch.Tensor  # (D,)
    norm_attn_bias: torch.Tensor  # (D,)
    qkv: torch.Tensor  # (3D, D)
    out: torch.Tensor  # (D, D)
    norm_mlp_weight: torch.Tensor  # (D,)
    norm_mlp_bias: torch.Tensor  # (D,)
    up: torch.Tensor  # (F, D)
    up_bias: torch.Tensor  # (F,)
    down: torch.Tensor  # (D, F)
    down_bias: torch.Tensor  # (D,)


class Decoder:
    """A model's ``forward`` one new token at a time over a KV cache: generation, batch size 1, no dropout.

    ``prefill`` reads a prompt through ``forward``; each ``step`` then takes one token to the next logits
    with matrix-vector products on the model's tensors, which are looked up once, here. A step is ~100
    tiny operations whose fixed costs outweigh their arithmetic: the same step through the modules, with
    their calls and attribute lookups at every token, took 0.16-0.23 ms more (default model, one thread,
    the two alternating token by token in one process, eight rounds of 1,200 tokens on a busy machine:
    median 1.37-1.65 against 1.53-1.87 ms; each token's ratio: median 0.87-0.89).

    Past the context the cache slides: a token's key and value overwrite the oldest ones, so in every layer
    a token attends to itself and the ``context_length - 1`` tokens before it (sliding-window attention;
    the tests compare it with the whole text read at once under that band). Rotary scores depend only on
    the distance between positions, which stays inside the trained context however long the text grows.
    The cached keys of deeper layers keep the context they were computed with, so this is not ``forward``
    over the window; on the validation text (five stretches of 1,072 tokens, default model) it predicted
    as well as re-reading the last half of the window whenever the cache filled, as generation did before:
    mean loss 3.9960 / 4.2194 / 4.3070 / 4.2620 / 4.1265 against 3.9943 / 4.2213 / 4.3107 / 4.2632 /
    4.1251 nats per token, without the 3-5 ms pause of each re-read.
    """

    def __init__(self, model: TinyTransformer):
        self.model, self.rope, self.embedding = model, model.rope, model.embed.weight
        self.context_length, self.n_heads, self.head_dim = (model.shape.context_length, model.shape.n_heads,
                                                            model.shape.head_dim)
        self.cache = KVCache(model.shape, 1, self.embedding.dtype, self.embedding.device)
        self.blocks = [_BlockTensors(b.norm_attn.weight, b.norm_attn.bias, b.attn.qkv.weight, b.attn.out.weight,
                                     b.norm_mlp.weight, b.norm_mlp.bias, b.mlp.up.weight, b.mlp.up.bias,
                                     b.mlp.down.weight, b.mlp.down.bias) for b in model.blocks]
        self.norm = (model.norm.weight, model.norm.bias)
        self.position = 0  # tokens read since the prefill: the next token's position
        # R_p for the positions of one window, window x P .. window x P + P - 1: the cache slot's index picks it.
        self.rotations_window, self.rotations = 0, self.rope.rotation_matrices(0, self.context_length)  # (P, hd, hd)

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Forget the cache and read the last ``context_length`` of ``ids`` into it; the (V,) next-token logits."""
        ids = ids[-self.context_length:]
        self.cache.length = 0
        tokens = torch.tensor([ids], device=self.embedding.device)
        logits = self.model.head(self.model.hidden(tokens, self.cache)[0, -1])
        self.position = len(ids)
        return logits

    def step(self, token: int) -> torch.Tensor:
        """The (V,) next-token logits after one more ``token``, which the cache then holds."""
        cache, position, context = self.cache, self.position, self.context_length
        window, slot = divmod(position, context)  # slot: where this token goes in the cache
        if window != self.rotations_window:  # once per context_length tokens
            self.rotations_window, self.rotations = window, self.rope.rotation_matrices(window * context, context)
        rotation = self.rotations[slot]  # (hd, hd)
        seen = min(position + 1, context)  # tokens attended
        h, hd = self.n_heads, self.head_dim
        d = h * hd
        x = self.embedding[token]  # (D,)
        for layer, (g1, b1, qkv_weight, out, g2, b2, up, up_bias, down, down_bias) in enumerate(self.blocks):
            qkv = torch.mv(qkv_weight, F.layer_norm(x, (d,), g1, b1))  # (3D,): query, key, value
            qk = qkv[:2 * d].view(2 * h, hd) @ rotation  # (2H, hd), rotated by position
            keys, values = cache.keys[layer], cache.values[layer]  # (1, H, P, hd)
            keys.select(2, slot).copy_(qk[h:].view(1, h, hd))
            values.select(2, slot).copy_(qkv[2 * d:].view(1, h, hd))
            # (1, H, 1, hd). One query sees every cached token; their order in the cache does not matter.
            y = F.scaled_dot_product_attention(qk[:h].view(1, h, 1, hd), keys.narrow(2, 0, seen),
                                               values.narrow(2, 0, seen))
            x = x + torch.mv(out, y.view(d))
            x = x + torch.addmv(down_bias, down, F.gelu(torch.addmv(up_bias, up, F.layer_norm(x, (d,), g2, b2))))
        self.position, cache.length = position + 1, seen
        return torch.mv(self.embedding, F.layer_norm(x, (d,), *self.norm))  # (V,): the head is the embedding
