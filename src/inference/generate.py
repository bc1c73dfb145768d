"""Generation from a PyTorch checkpoint: ``TinyTransformer.forward`` over its KV cache, one token at a time.

The bundle's runtime (``src.lib.runtime``) is the deployment path; this one serves checkpoints
(``generate --model x.pt``) with the same sampling and loop (``src.lib.runtime.sampling``), which take
numpy logits from either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from src.model.transformer import KVCache, TinyTransformer


@contextlib.contextmanager
def _decoding() -> Iterator[None]:
    """No autograd, and PyTorch's own kernels rather than oneDNN's (faster for one-token steps); restored after."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.backends.mkldnn.enabled = enabled


class TorchDecoder:
    """One generation through ``forward``: ``prefill`` a prompt, then ``step`` one token at a time."""

    def __init__(self, model: TinyTransformer):
        self.model = model
        self.cache = KVCache(model.shape, 1, model.embed.weight.dtype, model.embed.weight.device)

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Forget what was read and read the last ``context_length`` of ``ids``; the next token's (V,) logits."""
        self.cache.length = 0
        return self._read(ids[-self.model.shape.context_length:])

    def step(self, token: int) -> np.ndarray:
        return self._read([token])

    def _read(self, ids: list[int]) -> np.ndarray:
        with _decoding():
            tokens = torch.tensor([ids], device=self.model.embed.weight.device)
            return self.model(tokens, self.cache)[0, -1].float().cpu().numpy()
