"""train.precision and train.attention: auto measures the machine once, caches the verdict and records why."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import profile

from src.config import ConfigError
from src.model.transformer import ModelShape
from src.training import speed_choices
from src.training.speed_choices import resolve_attention, resolve_precision, step_products
from src.training.step import attention_kernel, precision_context

SHAPE = ModelShape(vocab_size=500, n_layers=2, n_heads=2, d_model=32, d_ff=64, context_length=16, dropout=0.0)
CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(speed_choices.CACHE_ENV, str(tmp_path))
    return tmp_path / "speed_choices.json"


def test_a_set_precision_is_used_as_set(cache):
    assert resolve_precision("fp32", CPU, SHAPE, 16, 16) == ("fp32", "train.precision: fp32")
    assert resolve_precision("bf16", CPU, SHAPE, 16, 16)[0] == "bf16" and not cache.exists()


@pytest.mark.parametrize("fp32_s, bf16_s, chosen", [(2.0, 1.0, "bf16"), (1.0, 2.0, "fp32"), (1.1, 1.0, "fp32")])
def test_auto_takes_bf16_only_when_clearly_faster_and_measures_once(cache, monkeypatch, fp32_s, bf16_s, chosen):
    calls = []
    monkeypatch.setattr(speed_choices, "measure_precision",
                        lambda shape, tokens: calls.append(tokens) or {"fp32": fp32_s, "bf16": bf16_s})
    first = resolve_precision("auto", CPU, SHAPE, 16, 16)
    again = resolve_precision("auto", CPU, SHAPE, 16, 16)
    assert first == again and first[0] == chosen and calls == [256]
    assert f"{fp32_s / bf16_s:.2f}x" in first[1] and str(cache) in first[1]
    assert [v["precision"] for v in json.loads(cache.read_text()).values()] == [chosen]


def test_a_damaged_cache_is_measured_again(cache):
    cache.write_text("{not json")
    chosen, reason = resolve_precision("auto", CPU, SHAPE, 16, 16)
    assert chosen in ("bf16", "fp32") and reason.startswith("auto: bf16 products")
    assert json.loads(cache.read_text())


def test_the_measured_products_are_the_steps():
    forward = step_products(SHAPE, 256)[:5]
    assert forward == [(256, 32, 96), (256, 32, 32), (256, 32, 64), (256, 64, 32), (256, 32, 500)]
    assert len(step_products(SHAPE, 256)) == 15


@pytest.mark.parametrize("seconds, chosen", [({"math": 2.0, "flash": 1.0}, "flash"),
                                             ({"math": 1.0, "flash": 2.0}, "math")])
def test_auto_attention_takes_the_faster_kernel_per_precision_and_measures_once(cache, monkeypatch, seconds, chosen):
    calls = []

    def timed(kernel, precision, shape, batch, length):
        calls.append((kernel, precision))
        return seconds[kernel]

    monkeypatch.setattr(speed_choices, "time_attention", timed)
    first = resolve_attention("auto", "bf16", CPU, SHAPE, 16, 16)
    assert first == resolve_attention("auto", "bf16", CPU, SHAPE, 16, 16) and first[0] == chosen
    assert sorted(set(calls)) == [("flash", "bf16"), ("math", "bf16")] and len(calls) == 2 * speed_choices.ROUNDS
    assert "math 2000.0 ms" in first[1] or "math 1000.0 ms" in first[1]
    resolve_attention("auto", "fp32", CPU, SHAPE, 16, 16)  # another precision is another verdict
    assert ("math", "fp32") in calls and len(json.loads(cache.read_text())) == 2


def test_a_set_kernel_is_used_as_set_and_flash_refuses_dropout_on_a_cpu(cache):
    assert resolve_attention("math", "fp32", CPU, SHAPE, 16, 16) == ("math", "train.attention: math")
    dropout = ModelShape(**{**SHAPE.__dict__, "dropout": 0.1})
    assert resolve_attention("auto", "fp32", CPU, dropout, 16, 16)[0] == "math" and not cache.exists()
    with pytest.raises(ConfigError, match="'train.attention' = 'flash' cannot train with model.dropout = 0.1"):
        resolve_attention("flash", "fp32", CPU, dropout, 16, 16)


def test_auto_attention_measures_real_kernels(cache):
    chosen, reason = resolve_attention("auto", "fp32", CPU, SHAPE, 4, 16)
    assert chosen in ("math", "flash") and "math " in reason and "flash " in reason


@pytest.mark.parametrize("kernel, expected", [("math", "aten::_scaled_dot_product_attention_math"),
                                              ("flash", "aten::_scaled_dot_product_flash_attention_for_cpu")])
def test_the_kernel_context_runs_that_kernel(kernel, expected):
    q = torch.randn(2, 2, 8, 16)
    with attention_kernel(kernel), profile() as prof:
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert expected in {event.name for event in prof.events()}
    assert SDPBackend.MATH in speed_choices.KERNELS["math"]


@pytest.mark.parametrize("precision, upcast", [("bf16", False), ("fp32", True)])
def test_bf16_precision_keeps_the_math_attention_kernel_in_bf16(precision, upcast):
    """SDPA's math kernel casts bf16 inputs to fp32 unless bf16 precision allows it not to; the switch is
    restored afterwards."""
    before = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    q = torch.randn(2, 2, 8, 4, dtype=torch.bfloat16)
    with precision_context(precision), sdpa_kernel(SDPBackend.MATH), profile(record_shapes=True) as prof:
        out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    casts = [e for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes[0] == [2, 2, 8, 4]]
    assert bool(casts) == upcast
    assert out.dtype == torch.bfloat16
    assert torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed() == before


@pytest.mark.parametrize("steps, compiled", [(1000, True), (10, False)])
def test_auto_compile_compiles_when_the_runs_steps_repay_the_compilation_and_measures_once(cache, steps, compiled):
    calls = []

    def measure():
        calls.append(1)
        return {"compile_s": 30.0, "eager_ms": 300.0, "compiled_ms": 200.0}  # 0.1 s saved per step

    chosen, reason = speed_choices.resolve_compile("auto", steps, "shape", measure)
    assert chosen is compiled and f"save {steps // 10} s" in reason and "compiling took 30.0 s" in reason
    assert speed_choices.resolve_compile("auto", steps, "shape", measure)[0] is compiled and calls == [1]
    assert speed_choices.resolve_compile(False, steps, "shape", measure) == (False, "train.compile: false")
