"""TinyTransformer: a small decoder-only (GPT-style) language model.

    tokens (B, T)
      -> token embedding                                  (B, T, D)
      -> n_layers x Block: x + Attention(LN(x)), x + MLP(LN(x))   (pre-norm residual blocks)
      -> final LayerNorm -> linear head tied to the embedding     (B, T, V)

Positions are rotary (RoPE): queries and keys are rotated by an angle that grows with the position,
so attention scores depend on relative distance, and no position table limits the model's length.
Attention is causal and runs through ``torch.nn.functional.scaled_dot_product_attention``, with the
kernel PyTorch chooses; the training step chooses its own (``src.training.speed_choices``).

Generation reads the prompt into a ``KVCache`` through ``forward``, then one token at a time. Past the
context the cache slides: each token attends to itself and the ``context_length - 1`` before it. The
bundle's runtime (``src.lib.runtime``) computes the same function in numpy; tests hold the two together.

Initialisation (GPT-2): every weight matrix and the embedding ~ N(0, 0.02); the two projections
that write into the residual stream (attention output, MLP output) ~ N(0, 0.02 / sqrt(2 * n_layers)),
so the residual's variance does not grow with depth; biases 0, LayerNorm gain 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from src.config import ModelConfig
from src.model.loss import linear_cross_entropy, token_cross_entropy

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

    Pairing each channel with the one half a head away (as GPT-NeoX and LLaMA do) makes the turn element-wise
    products on the two contiguous halves, which torch.compile fuses into the copies around attention. The
    angles of the first ``max_positions`` positions are a table; past it (generation beyond the context)
    they are computed when needed.
    """

    def __init__(self, head_dim: int, max_positions: int, base: float = 10_000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        cos, sin = self._cos_sin(0, max_positions)
        self.register_buffer("cos", cos, persistent=False)  # (P, 1, hd)
        self.register_buffer("sin", sin, persistent=False)  # (P, 1, hd)

    def _cos_sin(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of p * theta_i for p in start.. start+count-1, each (count, 1, hd) in fp32, both halves.

        The angles are taken in fp64: past the context p * theta_0 reaches thousands of radians, and fp32
        would round the angle itself by up to p * 6e-8 radians."""
        theta = 1.0 / self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
        angles = torch.outer(torch.arange(start, start + count, dtype=torch.float64), theta)  # (count, hd/2)
        cos, sin = angles.cos().float(), angles.sin().float()
        return torch.cat((cos, cos), dim=-1)[:, None, :], torch.cat((sin, sin), dim=-1)[:, None, :]

    def rotate(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """(B, T, N, hd) vectors at positions start.. start+T-1 -> the same, rotated."""
        count = x.shape[1]
        if start + count <= self.cos.shape[0]:
            cos, sin = self.cos[start:start + count], self.sin[start:start + count]
        else:
            cos, sin = (table.to(x.device) for table in self._cos_sin(start, count))
        first, second = x.chunk(2, dim=-1)  # (B, T, N, hd/2) each
        turned = torch.cat((-second, first), dim=-1)  # each pair (a, b) -> (-b, a)
        return x * cos + turned * sin


class KVCache:
    """Keys and values of every layer, for up to ``context_length`` positions.

    A ring: position p lives in slot p % context_length. A prompt is read into an empty cache; past the
    context each new token overwrites the oldest, so it attends to itself and the context_length - 1
    before it (their order in the slots does not matter to a single query, and rotary scores depend only
    on the distance between positions).
    """

    def __init__(self, shape: ModelShape, batch_size: int, dtype: torch.dtype, device: torch.device):
        size = (batch_size, shape.n_heads, shape.context_length, shape.head_dim)
        self.keys = [torch.zeros(size, dtype=dtype, device=device) for _ in range(shape.n_layers)]
        self.values = [torch.zeros(size, dtype=dtype, device=device) for _ in range(shape.n_layers)]
        self.length = 0  # tokens read so far: the next token's position

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' (B, H, t, hd) keys and values; return every cached one they may attend to."""
        keys, values, t = self.keys[layer], self.values[layer], k.shape[-2]
        if self.length + t <= self.capacity:
            keys.narrow(2, self.length, t).copy_(k)
            values.narrow(2, self.length, t).copy_(v)
            return keys.narrow(2, 0, self.length + t), values.narrow(2, 0, self.length + t)
        slot = self.length % self.capacity  # past the context: one token at a time, over the oldest
        keys.narrow(2, slot, 1).copy_(k)
        values.narrow(2, slot, 1).copy_(v)
        return keys, values


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
    """Dropout while training; otherwise ``x`` itself, at no cost (an idle nn.Dropout module call is a
    noticeable share of a one-token decoding step)."""
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
        """(B, T) token ids -> (B, T, D) final hidden states, before the head.

        With a cache: a prompt (T > 1) of at most the context, into an empty cache, then one token at a
        time, for as long as wanted."""
        seen, count = (cache.length if cache else 0), tokens.shape[1]
        if count > self.shape.context_length:
            raise ValueError(f"{count} tokens exceed the context of {self.shape.context_length}")
        if seen and count > 1:
            raise ValueError("a cache takes a prompt only when empty, then one token at a time")
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

    def token_losses(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (nats) of each target, (B, T) from ``tokens`` and ``targets`` (B, T); no gradient."""
        return token_cross_entropy(self.hidden(tokens).flatten(0, 1), self.head.weight,
                                   targets.flatten()).view(targets.shape)
