"""TinyTransformer: shapes, rotary positions, the causal mask, the KV cache, one-token decoding, weight tying,
initialisation."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from src.config import load_config
from src.model.transformer import INIT_STD, KVCache, ModelShape, RotaryEmbedding, TinyTransformer
from tests.conftest import REPO_ROOT

SHAPE = ModelShape(vocab_size=97, n_layers=2, n_heads=4, d_model=32, d_ff=64, dropout=0.0, context_length=24)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyTransformer(SHAPE).eval()


def test_shapes(model):
    tokens = torch.randint(0, SHAPE.vocab_size, (3, 10))
    assert model.hidden(tokens).shape == (3, 10, SHAPE.d_model)
    assert model(tokens).shape == (3, 10, SHAPE.vocab_size)
    assert model.loss(tokens, tokens).shape == ()


def test_rotary_positions_pair_each_channel_with_the_one_half_a_head_away():
    rope = RotaryEmbedding(head_dim=8, max_positions=6)
    x = torch.randn(2, 6, 3, 8)  # (B, T, N, hd)
    rotated = rope.rotate(x, 0)
    theta = 1.0 / 10_000 ** (torch.arange(0, 8, 2) / 8)  # (hd/2,)
    angle = torch.arange(6)[:, None, None] * theta  # (T, 1, hd/2): broadcast over the batch and the heads
    first, second = x[..., :4], x[..., 4:]
    torch.testing.assert_close(rotated[..., :4], first * angle.cos() - second * angle.sin())
    torch.testing.assert_close(rotated[..., 4:], second * angle.cos() + first * angle.sin())
    torch.testing.assert_close(rope.rotate(x[:, 2:4], 2), rotated[:, 2:4])
    torch.testing.assert_close(rope.rotate(x[:, 4:], 4), rotated[:, 4:])  # partly past the table


def test_rotated_scores_depend_only_on_the_distance_between_positions():
    rope = RotaryEmbedding(head_dim=8, max_positions=12)
    q, k = torch.randn(8), torch.randn(8)

    def score(query_position: int, key_position: int) -> torch.Tensor:
        rotated_q = rope.rotate(q.view(1, 1, 1, 8), query_position).flatten()
        return rotated_q @ rope.rotate(k.view(1, 1, 1, 8), key_position).flatten()

    torch.testing.assert_close(score(5, 2), score(9, 6))
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_rotations_far_past_the_context_are_exact():
    # Decoding past the context turns tokens at positions in the thousands and beyond; in fp32, p * theta_0
    # at p = 100,000 would already be off by up to 4e-3 radians.
    rope = RotaryEmbedding(head_dim=8, max_positions=4)
    x = torch.randn(1, 3, 1, 8, dtype=torch.float64)
    far = rope.rotate(x.float(), 99_998)[0, :, 0]  # (3, hd)
    theta = 1.0 / 10_000 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angle = torch.arange(99_998, 100_001, dtype=torch.float64)[:, None] * theta  # (3, hd/2)
    first, second = x[0, :, 0, :4], x[0, :, 0, 4:]
    expected = torch.cat((first * angle.cos() - second * angle.sin(), second * angle.cos() + first * angle.sin()), -1)
    torch.testing.assert_close(far, expected.float(), rtol=0, atol=1e-5)


def test_a_later_token_never_changes_an_earlier_output(model):
    tokens = torch.randint(0, SHAPE.vocab_size, (2, 16))
    before = model(tokens)
    for t in range(15):
        changed = tokens.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % SHAPE.vocab_size
        after = model(changed)
        torch.testing.assert_close(after[:, :t + 1], before[:, :t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(after[:, t + 1], before[:, t + 1])


def test_kv_cache_gives_the_full_forward_pass(model):
    tokens = torch.randint(0, SHAPE.vocab_size, (2, 20))
    full = model(tokens)
    cache = KVCache(SHAPE, batch_size=2, dtype=torch.float32, device=torch.device("cpu"))
    steps = [model(tokens[:, :7], cache)]  # a prompt, then one token at a time
    steps += [model(tokens[:, t:t + 1], cache) for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 20


def test_decoding_past_the_context_is_sliding_window_attention(model, monkeypatch):
    # The reference: the same weights read the whole text at once, every layer's attention limited to the
    # last `context` positions (a band, not the causal triangle), rotary positions counted from the start.
    context = SHAPE.context_length
    tokens = torch.randint(0, SHAPE.vocab_size, (4 * context,))
    cache = KVCache(SHAPE, batch_size=1, dtype=torch.float32, device=torch.device("cpu"))
    with torch.no_grad():
        logits = [model(tokens[None, :context], cache)[0, -1]]
        logits += [model(tokens[None, t:t + 1], cache)[0, -1] for t in range(context, len(tokens))]
    assert cache.length == len(tokens)

    whole_text = TinyTransformer(replace(SHAPE, context_length=len(tokens))).eval()
    whole_text.load_state_dict(model.state_dict())
    position = torch.arange(len(tokens))
    band = (position[None, :] <= position[:, None]) & (position[None, :] > position[:, None] - context)  # (T, T)
    attention = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda q, k, v, is_causal, dropout_p: attention(q, k, v, attn_mask=band))
    with torch.no_grad():
        reference = whole_text(tokens[None])[0, context - 1:]
    torch.testing.assert_close(torch.stack(logits), reference, rtol=1e-5, atol=1e-5)


def test_the_context_length_is_enforced(model):
    with pytest.raises(ValueError, match="exceed the context of 24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    cache = KVCache(SHAPE, 1, torch.float32, torch.device("cpu"))
    model(torch.zeros(1, 20, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="a cache takes a prompt only when empty"):
        model(torch.zeros(1, 2, dtype=torch.long), cache)


def test_the_output_head_is_the_embedding(model):
    assert model.head.weight is model.embed.weight
    assert model.num_parameters() == sum(p.numel() for p in set(model.parameters()))


def test_initialisation_scales_the_residual_projections():
    torch.manual_seed(0)
    shape = ModelShape(vocab_size=2000, n_layers=8, n_heads=4, d_model=256, d_ff=1024, dropout=0.0,
                       context_length=16)
    model = TinyTransformer(shape)
    assert model.embed.weight.std().item() == pytest.approx(INIT_STD, rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(INIT_STD, rel=0.05)
    residual = INIT_STD / math.sqrt(2 * shape.n_layers)
    assert model.blocks[0].attn.out.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.blocks[0].mlp.down.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert torch.count_nonzero(model.blocks[0].mlp.up.bias) == 0


def test_the_default_model_has_about_1_8_million_parameters():
    cfg = load_config(REPO_ROOT / "params.yaml")
    model = TinyTransformer(ModelShape.from_config(cfg.model, cfg.tokenizer.vocab_size))
    assert 1.7e6 < model.num_parameters() < 1.9e6


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = TinyTransformer(ModelShape(**{**SHAPE.__dict__, "dropout": 0.5}))
    tokens = torch.randint(0, SHAPE.vocab_size, (1, 8))
    model.train()
    assert not torch.equal(model(tokens), model(tokens))
    model.eval()
    assert torch.equal(model(tokens), model(tokens))


@pytest.mark.parametrize("shape", [SHAPE, replace(SHAPE, n_layers=3, d_ff=48, vocab_size=50)])
def test_the_parameter_count_of_a_shape_is_the_models(shape):
    assert shape.parameter_count == TinyTransformer(shape).num_parameters()
