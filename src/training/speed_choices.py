"""The training step's speed choices on this machine: precision, attention kernel, compile; measured once, cached.

Which is faster depends on the CPU. With bf16 matrix units (AMX, or AVX-512 bf16 on some cores) a bf16
product runs faster than fp32; without them it can run slower. SDPA's fused flash kernel has a slow backward
in bf16 at a small head width, where the math kernel's plain products (fused by torch.compile with the
softmax around them) win, and the other way round in fp32. So ``auto`` measures, on the machine that runs:
- precision: the step's largest products (the head, the MLP, attention's projections, at the run's batch of
  tokens), forward and backward shapes, in both precisions;
- attention: the step's attention, forward and backward, at the run's shape, with each kernel, in the
  precision chosen;
- compile: the first compiled step (the compilation) and the step's time eager and compiled, at the run's
  shape with both choices above; a run compiles when its steps save more than the compilation costs.
Each in alternating rounds, the best round kept. bf16 is chosen only when clearly faster (``MIN_SPEEDUP``);
fp32 is exact where bf16 rounds.

Verdicts are cached per machine, thread count, PyTorch version and shape (``TT_CACHE_DIR``, else
``~/.cache/tinytransformer``), so every run on a machine makes the same choices and a repeated run is
bit-identical; the metrics record each verdict with its figures.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from src.atomic import write_json
from src.config import ConfigError
from src.model.transformer import ModelShape
from src.training.distributed import processor_name
from src.training.step import KERNELS, attention_kernel, precision_context

log = logging.getLogger(__name__)

CACHE_ENV = "TT_CACHE_DIR"
MIN_SPEEDUP = 1.15  # bf16 over fp32, on the step's products, for auto to choose bf16
ROUNDS = 5


def cache_dir() -> Path:
    """Where the project keeps what it learns about the machine (``TT_CACHE_DIR``, else ~/.cache/tinytransformer)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tinytransformer")


def cache_file() -> Path:
    return cache_dir() / "speed_choices.json"


def machine_key(choice: str, shape: ModelShape, batch: int, length: int, detail: str = "") -> str:
    """What a verdict depends on: the machine, PyTorch, and the whole step's shape (compile's verdict times the
    whole step, so layers and dropout count too)."""
    return (f"{choice}{detail} | {processor_name()} | threads {torch.get_num_threads()} | torch {torch.__version__} | "
            f"layers {shape.n_layers} d {shape.d_model} ff {shape.d_ff} heads {shape.n_heads} vocab {shape.vocab_size} "
            f"dropout {shape.dropout:g} batch {batch} length {length}")


def measured_once(key: str, valid: Callable[[dict], bool], measure: Callable[[], dict]) -> tuple[dict, Path]:
    """The cached verdict under ``key``, or ``measure()``'s, cached; and the cache's path."""
    path = cache_file()
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    cached = cached if isinstance(cached, dict) else {}
    verdict = cached.get(key)
    if isinstance(verdict, dict) and valid(verdict):
        return verdict, path
    verdict = measure()
    try:
        write_json(path, {**cached, key: verdict})
    except OSError as exc:
        log.warning("could not cache a speed verdict in %s (%s): the next run measures again", path, exc)
    return verdict, path


def best_of_rounds(variants: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each variant's fastest time over ``ROUNDS`` rounds in which the variants alternate."""
    seconds = dict.fromkeys(variants, float("inf"))
    for _ in range(ROUNDS):
        for name, timed in variants.items():
            seconds[name] = min(seconds[name], timed())
    return seconds


# --- precision ---------------------------------------------------------------------------------------------

def step_products(shape: ModelShape, tokens: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the training step's matrix products per layer and head: forward, and backward's two."""
    d, ff, v = shape.d_model, shape.d_ff, shape.vocab_size
    forward = [(tokens, d, 3 * d), (tokens, d, d), (tokens, d, ff), (tokens, ff, d), (tokens, d, v)]
    backward = [(m, n, k) for m, k, n in forward] + [(k, m, n) for m, k, n in forward]
    return forward + backward


def time_products(products: list[tuple[int, int, int]], dtype: torch.dtype) -> float:
    operands = [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)) for m, k, n in products]
    for a, b in operands:
        a @ b
    started = time.perf_counter()
    for a, b in operands:
        a @ b
    return time.perf_counter() - started


def measure_precision(shape: ModelShape, tokens: int) -> dict[str, float]:
    """Seconds of the step's products in each precision."""
    products = step_products(shape, tokens)
    return best_of_rounds({"fp32": lambda: time_products(products, torch.float32),
                           "bf16": lambda: time_products(products, torch.bfloat16)})


def resolve_precision(setting: str, device: torch.device, shape: ModelShape, batch: int, length: int) -> tuple[str, str]:
    """(the precision a run uses, why). ``auto`` on a CPU measures once per machine and caches the verdict."""
    if setting != "auto":
        return setting, f"train.precision: {setting}"
    if device.type != "cpu":
        return "bf16", "auto: bf16 on an accelerator"

    def measure() -> dict:
        seconds = measure_precision(shape, batch * length)
        speedup = seconds["fp32"] / seconds["bf16"]
        return {"precision": "bf16" if speedup >= MIN_SPEEDUP else "fp32", "bf16_speedup": round(speedup, 3),
                "fp32_ms": round(seconds["fp32"] * 1e3, 3), "bf16_ms": round(seconds["bf16"] * 1e3, 3)}

    verdict, path = measured_once(machine_key("precision", shape, batch, length),
                                  lambda v: v.get("precision") in ("bf16", "fp32"), measure)
    reason = (f"auto: bf16 products {verdict['bf16_speedup']:.2f}x fp32's here ({verdict['bf16_ms']} against "
              f"{verdict['fp32_ms']} ms; bf16 needs {MIN_SPEEDUP}x), cached in {path}")
    log.info("precision %s (%s)", verdict["precision"], reason)
    return verdict["precision"], reason


# --- attention kernel --------------------------------------------------------------------------------------

def time_attention(kernel: str, precision: str, shape: ModelShape, batch: int, length: int) -> float:
    """Seconds of a causal attention's forward and backward at the step's shape (per layer), after a warm-up."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    q, k, v = (torch.randn(batch, shape.n_heads, length, shape.d_model // shape.n_heads, dtype=dtype,
                           requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)
    with attention_kernel(kernel), precision_context(precision):
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)
        started = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)
        return time.perf_counter() - started


def resolve_attention(setting: str, precision: str, device: torch.device, shape: ModelShape, batch: int,
                      length: int) -> tuple[str, str]:
    """(the attention kernel the training step uses, why). ``auto`` on a CPU measures once per machine and
    precision; on an accelerator it leaves the choice to PyTorch (``default``). The fused CPU kernel has no
    dropout, so with dropout a CPU run uses the math kernel."""
    cpu_dropout = device.type == "cpu" and shape.dropout > 0
    if setting == "flash" and cpu_dropout:
        raise ConfigError(f"'train.attention' = 'flash' cannot train with model.dropout = {shape.dropout:g} on a CPU "
                         f"(PyTorch's fused CPU kernel has no dropout): set it to math or auto")
    if setting != "auto":
        return setting, f"train.attention: {setting}"
    if device.type != "cpu":
        return "default", "auto: PyTorch's own choice on an accelerator"
    if cpu_dropout:
        return "math", "auto: math, the CPU kernel with dropout"

    def measure() -> dict:
        seconds = best_of_rounds({kernel: (lambda kernel=kernel: time_attention(kernel, precision, shape, batch, length))
                                  for kernel in KERNELS})
        fastest = min(seconds, key=seconds.get)
        return {"attention": fastest, **{f"{kernel}_ms": round(s * 1e3, 3) for kernel, s in seconds.items()}}

    verdict, path = measured_once(machine_key("attention", shape, batch, length, f" {precision}"),
                                  lambda v: v.get("attention") in KERNELS, measure)
    figures = ", ".join(f"{kernel} {verdict[f'{kernel}_ms']} ms" for kernel in KERNELS)
    reason = f"auto: the faster in {precision} here, forward and backward ({figures}), cached in {path}"
    log.info("attention %s (%s)", verdict["attention"], reason)
    return verdict["attention"], reason


# --- compile -----------------------------------------------------------------------------------------------

def resolve_compile(setting: bool | str, total_steps: int, key: str,
                    measure: Callable[[], dict[str, float]]) -> tuple[bool, str]:
    """(whether the run compiles its step, why). ``auto`` measures once per machine and ``key`` (shape, precision,
    attention) with ``measure`` (its ``compile_s``, ``eager_ms``, ``compiled_ms``), and compiles when
    ``total_steps`` save more than the compilation took. The first measurement compiles cold; torch.compile's
    own cache makes later compilations cheaper, so the verdict errs towards eager."""
    if setting != "auto":
        return setting, f"train.compile: {str(setting).lower()}"
    verdict, path = measured_once(f"compile {key}", lambda v: {"compile_s", "eager_ms", "compiled_ms"} <= set(v),
                                  lambda: {name: round(value, 3) for name, value in measure().items()})
    saved_s = total_steps * (verdict["eager_ms"] - verdict["compiled_ms"]) / 1e3
    compiled = saved_s > verdict["compile_s"]
    reason = (f"auto: {'compiled' if compiled else 'eager'}, as {total_steps} steps at {verdict['compiled_ms']} "
              f"against {verdict['eager_ms']} ms eager save {saved_s:.0f} s, and compiling took "
              f"{verdict['compile_s']} s here, cached in {path}")
    log.info("compile %s (%s)", compiled, reason)
    return compiled, reason
