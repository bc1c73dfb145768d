"""TinyTransformer: a small decoder-only (GPT-style) language model.

    tokens (B, T)
      -> token embedding                                  (B, T, D)
      -> n_layers x Block: x + Attention(LN(x)), x + MLP(LN(x))   (pre-norm residual blocks)
      -> final LayerNorm -> linear head tied to the embedding     (B, T, V)

Positions are rotary (RoPE): queries and keys are rotated by an angle that grows with the position,
so attention scores depend on relative distance, and no position table limits the model's length.
Attention is causal and runs through ``torch.nn.functional.scaled_dot_product_attention``.

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


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables; ``rotate`` applies them to (B, H, T, head_dim) tensors."""

    def __init__(self, head_dim: int, max_positions: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (P, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def rotate(self, x: torch.Tensor, start: int) -> torch.Tensor:
        t = x.shape[-2]
        cos = self.cos[start:start + t].to(x.dtype)  # (T, hd/2)
        sin = self.sin[start:start + t].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to the context length."""

    def __init__(self, shape: ModelShape, batch_size: int, dtype: torch.dtype, device: torch.device):
        size = (batch_size, shape.n_heads, shape.context_length, shape.head_dim)
        self.keys = [torch.zeros(size, dtype=dtype, device=device) for _ in range(shape.n_layers)]
        self.values = [torch.zeros(size, dtype=dtype, device=device) for _ in range(shape.n_layers)]
        self.length = 0  # tokens cached so far
        self.capacity = shape.context_length

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, H, t, hd) keys/values; return all cached ones for ``layer``."""
        end = self.length + k.shape[-2]
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.n_heads, self.dropout = shape.n_heads, shape.dropout
        self.qkv = nn.Linear(shape.d_model, 3 * shape.d_model, bias=False)
        self.out = nn.Linear(shape.d_model, shape.d_model, bias=False)
        self.out.residual_projection = True

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)  # 3x (B, H, T, hd)
        start = cache.length if cache else 0
        q, k = rope.rotate(q, start), rope.rotate(k, start)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        # A prompt (t > 1) is causal within itself; a single new token may see every cached one.
        # Prompts are only ever fed into an empty cache, so "causal" is exact there too.
        # Attention runs in fp32 even under bf16 autocast: PyTorch's CPU flash-attention kernel is over
        # twice as fast in fp32 at this head width (measured fwd+bwd, B=32 H=4 T=128 hd=32: 11.9 ms fp32,
        # 28.1 ms bf16), and the scores keep full precision.
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=t > 1,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.to(x.dtype).transpose(1, 2).reshape(b, t, d))


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
        self.drop = nn.Dropout(shape.dropout)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm_attn(x), rope, cache, layer))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class TinyTransformer(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab_size, shape.d_model)
        self.drop = nn.Dropout(shape.dropout)
        self.rope = RotaryEmbedding(shape.head_dim, shape.context_length)
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.n_layers))
        self.norm = nn.LayerNorm(shape.d_model)
        self.head = nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied: one matrix reads and writes tokens
        self.apply(self._init)

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
        x = self.drop(self.embed(tokens))
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
        logits = self(tokens)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
