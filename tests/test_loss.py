"""The fused head + cross-entropy: the same loss and gradients as the plain full-logits computation."""

import pytest
import torch
import torch.nn.functional as F

from src.model import loss as loss_module
from src.model.loss import linear_cross_entropy, softmax_cross_entropy


def _inputs(rows: int, dim: int = 16, vocab: int = 50, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, dim, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, dim, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    return hidden, weight, targets


def _plain(hidden, weight, targets):
    return F.cross_entropy((hidden @ weight.T).float(), targets)


def _assert_matches_plain(fused_loss, hidden, weight, targets):
    """``fused_loss`` gives the loss and gradients of the full-logits computation."""
    fused = fused_loss(hidden, weight, targets)
    fused.backward()
    fused_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    plain = _plain(hidden, weight, targets)
    plain.backward()
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(fused_grads[0], hidden.grad)
    torch.testing.assert_close(fused_grads[1], weight.grad)


@pytest.mark.parametrize("rows", [1, 7, 8, 21])
def test_matches_the_full_logits_loss_and_gradients_across_chunk_edges(monkeypatch, rows):
    monkeypatch.setattr(loss_module, "CHUNK_ROWS", 8)  # chunks of 8: one partial, one whole, several
    _assert_matches_plain(linear_cross_entropy, *_inputs(rows))


def test_upstream_gradient_scales_the_result():
    hidden, weight, targets = _inputs(10)
    (3.0 * linear_cross_entropy(hidden, weight, targets)).backward()
    scaled = hidden.grad.clone()
    hidden.grad = None
    linear_cross_entropy(hidden, weight, targets).backward()
    torch.testing.assert_close(scaled, 3.0 * hidden.grad)


def test_under_bf16_autocast_it_follows_the_autocast_head():
    hidden, weight, targets = _inputs(64, dim=32, vocab=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, targets)
        plain = F.cross_entropy(F.linear(hidden, weight).float(), targets)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=1e-3, atol=1e-3)
    fused.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]])
    loss, grad = softmax_cross_entropy(logits, torch.tensor([0, 2]))
    torch.testing.assert_close(loss, torch.tensor(torch.log(torch.tensor(3.0)).item()))
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, 0.0], [1 / 3, 1 / 3, -2 / 3]]))


def test_without_gradients_it_gives_the_same_loss(monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ROWS", 8)
    hidden, weight, targets = _inputs(21)
    with torch.inference_mode():
        evaluated = linear_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(evaluated, _plain(hidden, weight, targets).detach())


def test_compiled_it_matches_the_full_logits_loss_and_gradients(monkeypatch):
    # torch.compile fuses the loss differently from eager (one exponential per score, kept per row).
    monkeypatch.setattr(loss_module, "CHUNK_ROWS", 8)
    _assert_matches_plain(torch.compile(linear_cross_entropy, fullgraph=True), *_inputs(21))
