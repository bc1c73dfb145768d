"""Next-token cross-entropy fused with the output head, computed a chunk of tokens at a time.

The plain way, ``F.cross_entropy(head(hidden).float(), targets)``, writes the full (N, V) logits in
fp32, keeps them for backward, and reads them back there: at the default shape (N = 32 x 128 tokens,
V = 8000) that is 131 MB per step, more memory traffic than the four transformer blocks. Here each chunk of rows goes through head -> softmax -> gradient
while it is still in cache, and only the gradients with respect to the hidden states (N, D) and the
head weight (V, D) are kept for backward, which just scales them.

The result is the same mean cross-entropy and the same gradients; under bf16 autocast the head's
matrix products run in bf16 as ``nn.Linear`` would, and softmax and the loss stay in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows of logits alive at once (512 x 8000 x 2 B = 8 MB in bf16): of 256, 512 and 1024, the fastest head + loss
# at the default shape (docs/PERFORMANCE_HISTORY.md).
CHUNK_ROWS = 512


def softmax_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over rows of the cross-entropy, its gradient with respect to ``logits``, in their dtype)."""
    scores = logits.float()  # (n, V)
    top = scores.amax(dim=-1, keepdim=True)  # (n, 1)
    exps = (scores - top).exp()  # (n, V)
    total = exps.sum(dim=-1, keepdim=True)  # (n, 1)
    loss = (top + total.log() - scores.gather(1, targets[:, None])).sum()
    # The gradient, softmax minus the one-hot targets, from the same exponentials. torch.compile keeps one
    # row of them in a per-row buffer (32 KB at V = 8000) and writes the gradient straight in the logits'
    # dtype, so each score is exponentiated once and no (n, V) fp32 tensor exists (exp(scores - logsumexp)
    # plus a scatter of -1 exponentiates every score twice). Eager, where every intermediate is a tensor,
    # this form costs more than that one; compiled, the default, it costs less.
    probabilities = exps / total
    is_target = torch.arange(scores.shape[1], device=scores.device) == targets[:, None]  # (n, V)
    grad = torch.where(is_target, probabilities - 1, probabilities)
    return loss, grad.to(logits.dtype)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # hidden (N, D), weight (V, D), targets (N,), all matrices in one compute dtype.
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], CHUNK_ROWS):
            rows = hidden[start:start + CHUNK_ROWS]  # (n, D)
            chunk_loss, grad_logits = softmax_cross_entropy(rows @ weight.T, targets[start:start + CHUNK_ROWS])
            loss += chunk_loss
            grad_hidden[start:start + CHUNK_ROWS] = grad_logits @ weight  # (n, V) @ (V, D)
            grad_weight += grad_logits.T @ rows  # (V, n) @ (n, D), summed over chunks in fp32
        count = hidden.shape[0]
        ctx.save_for_backward(grad_hidden / count, (grad_weight / count).to(weight.dtype))
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype), None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of ``F.cross_entropy(hidden @ weight.T, targets)`` for hidden (N, D), weight (V, D), targets (N,)."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets)
        # Evaluation: the same chunks, the loss alone.
        total = sum(F.cross_entropy((rows @ weight.T).float(), row_targets, reduction="sum")
                    for rows, row_targets in zip(hidden.split(CHUNK_ROWS), targets.split(CHUNK_ROWS)))
        return total / targets.numel()


@torch.no_grad()
def token_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Evaluation: the cross-entropy of each row, (N,) in fp32, a chunk of rows at a time as above."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        return torch.cat([F.cross_entropy((rows @ weight.T).float(), row_targets, reduction="none")
                          for rows, row_targets in zip(hidden.split(CHUNK_ROWS), targets.split(CHUNK_ROWS))])
