"""train.precision: auto picks bf16 or fp32 by measuring this machine's matrix products, once.

Whether bf16 pays depends on the CPU: with bf16 matrix units (AMX, or AVX-512 bf16 on some cores) a bf16
product runs faster than fp32; without them it can run slower. So the choice is a measurement: the
training step's largest products (the head, the MLP, attention's projections, at the run's batch of
tokens), forward and backward shapes, timed in both precisions in alternating rounds.
bf16 is chosen only when it is clearly faster (``MIN_SPEEDUP``); fp32 is exact where bf16 rounds.

The verdict is cached per machine, thread count, PyTorch version and shape (``TT_CACHE_DIR``, else
``~/.cache/tinytransformer``), so every run on a machine makes the same choice and a repeated run is
bit-identical; the metrics record the verdict and its figures.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from src.atomic import write_json
from src.model.transformer import ModelShape
from src.training.distributed import processor_name

log = logging.getLogger(__name__)

CACHE_ENV = "TT_CACHE_DIR"
MIN_SPEEDUP = 1.15  # bf16 over fp32, on the step's products, for auto to choose bf16
ROUNDS = 5


def cache_dir() -> Path:
    """Where the project keeps what it learns about the machine (``TT_CACHE_DIR``, else ~/.cache/tinytransformer)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tinytransformer")


def cache_file() -> Path:
    return cache_dir() / "precision.json"


def machine_key(shape: ModelShape, tokens: int) -> str:
    return (f"{processor_name()} | threads {torch.get_num_threads()} | torch {torch.__version__} | d {shape.d_model} "
            f"ff {shape.d_ff} vocab {shape.vocab_size} tokens {tokens}")


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


def measure(shape: ModelShape, tokens: int) -> dict[str, float]:
    """Seconds of the step's products in each precision (the best of ``ROUNDS`` alternating rounds)."""
    products = step_products(shape, tokens)
    seconds = {"fp32": float("inf"), "bf16": float("inf")}
    for _ in range(ROUNDS):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            seconds[name] = min(seconds[name], time_products(products, dtype))
    return seconds


def resolve_precision(setting: str, device: torch.device, shape: ModelShape, tokens: int) -> tuple[str, str]:
    """(the precision a run uses, why). ``auto`` on a CPU measures once per machine and caches the verdict."""
    if setting != "auto":
        return setting, f"train.precision: {setting}"
    if device.type != "cpu":
        return "bf16", "auto: bf16 on an accelerator"
    key = machine_key(shape, tokens)
    path = cache_file()
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    verdict = cached.get(key) if isinstance(cached, dict) else None
    if not (isinstance(verdict, dict) and verdict.get("precision") in ("bf16", "fp32")):
        seconds = measure(shape, tokens)
        speedup = seconds["fp32"] / seconds["bf16"]
        verdict = {"precision": "bf16" if speedup >= MIN_SPEEDUP else "fp32", "bf16_speedup": round(speedup, 3),
                   "fp32_ms": round(seconds["fp32"] * 1e3, 3), "bf16_ms": round(seconds["bf16"] * 1e3, 3)}
        try:
            write_json(path, {**(cached if isinstance(cached, dict) else {}), key: verdict})
        except OSError as exc:
            log.warning("could not cache the precision verdict in %s (%s): the next run measures again", path, exc)
    reason = (f"auto: bf16 products {verdict['bf16_speedup']:.2f}x fp32's here ({verdict['bf16_ms']} against "
              f"{verdict['fp32_ms']} ms; bf16 needs {MIN_SPEEDUP}x), cached in {path}")
    log.info("precision %s (%s)", verdict["precision"], reason)
    return verdict["precision"], reason
