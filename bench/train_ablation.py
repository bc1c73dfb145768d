"""Which change bought what: the default training step with its optimisations added one at a time.

    python -m bench.train_ablation [--steps 8] [--json] [--params params.yaml]

Each variant trains the default model shape from params.yaml on the same batches and reports ms per
step. It starts from a textbook step (fp32, eager, full logits and `F.cross_entropy`, PyTorch's own
choice of attention kernel, `torch.optim.AdamW`'s for-each loop) and adds, in turn: bf16 autocast, the
fused AdamW, `torch.compile`, the fused chunked head + loss (`src/model/loss.py`), SDPA's math kernel for
CPU training, that kernel's matrix products kept in bf16, and the allocator keeping freed memory
(`src/training/allocator.py`); the last is the project's step as the train stage runs it. A final
variant flips `model.dropout` (0 <-> 0.1) to show what dropout costs. The attention kernel is the
training step's math attention kernel; its precision is switched off, for the variants before it, by
replacing the project's private switch: this is a measurement, not a way to train. The allocator
setting cannot be undone, so it comes last.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
import warnings
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from bench.train_throughput import batches
from src.config import load_config
from src.model.transformer import ModelShape, TinyTransformer
from src.training.allocator import keep_freed_memory
from src.training import step
from src.training.optimizers import make_optimizer
from src.training.step import attention_kernel, precision_context


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    precision: str = "fp32"
    fused_adamw: bool = False
    compile: bool = False
    chunked_loss: bool = False
    math_attention: bool = False
    bf16_attention: bool = False
    keep_freed_memory: bool = False
    dropout: float | None = None  # None: the params' value


def variants(params_dropout: float) -> list[Variant]:
    textbook = Variant("fp32, eager, full logits + F.cross_entropy, default attention kernel, for-each AdamW")
    bf16 = dataclasses.replace(textbook, name="+ bf16 autocast", precision="bf16")
    fused = dataclasses.replace(bf16, name="+ fused AdamW", fused_adamw=True)
    compiled = dataclasses.replace(fused, name="+ torch.compile", compile=True)
    chunked = dataclasses.replace(compiled, name="+ fused chunked head and loss", chunked_loss=True)
    math = dataclasses.replace(chunked, name="+ SDPA's math kernel for CPU training", math_attention=True)
    bf16_math = dataclasses.replace(math, name="+ its matrix products in bf16", bf16_attention=True)
    project = dataclasses.replace(bf16_math, name="+ allocator keeps freed memory (the project's step)",
                                  keep_freed_memory=True)
    other_dropout = 0.1 if params_dropout == 0 else 0.0
    return [textbook, bf16, fused, compiled, chunked, math, bf16_math, project,
            dataclasses.replace(project, name=f"the project's step with model.dropout {other_dropout:g}",
                                dropout=other_dropout)]


def time_variant(variant: Variant, shape: ModelShape, cfg, data: list[tuple], warmup: int) -> float:
    """Mean seconds per optimizer step over ``data[warmup:]``."""
    torch.manual_seed(cfg.train.seed)
    if variant.dropout is not None:
        shape = dataclasses.replace(shape, dropout=variant.dropout)
    model = TinyTransformer(shape).train()
    optimizer = make_optimizer(model, cfg.train, fused=variant.fused_adamw)

    def loss_of(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if variant.chunked_loss:
            return model.loss(inputs, targets)
        return F.cross_entropy(model(inputs).flatten(0, 1).float(), targets.flatten())

    objective = torch.compile(loss_of) if variant.compile else loss_of
    if variant.keep_freed_memory:
        keep_freed_memory()
    attention_precision = (contextlib.nullcontext() if variant.bf16_attention
                           else mock.patch.object(step, "bf16_math_attention", contextlib.nullcontext))
    with attention_precision:
        for index, (inputs, targets) in enumerate(data):
            if index == warmup:
                started = time.perf_counter()
            kernel = attention_kernel("math") if variant.math_attention else contextlib.nullcontext()
            with kernel, precision_context(variant.precision):
                loss = objective(inputs, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    seconds = (time.perf_counter() - started) / (len(data) - warmup)
    torch._dynamo.reset()  # the next variant compiles its own graph
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (compilation happens here)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)

    # Every variant compiles afresh: torch.compile's caches do not key on SDPA's bf16 switch, so a variant
    # with it would reuse the graph compiled by the one without it.
    torch.compiler.config.force_disable_caches = True
    warnings.filterwarnings("ignore", "dynamo_pgo force disabled")  # what the line above means, said each time
    cfg = load_config(args.params)
    shape = ModelShape.from_config(cfg.model, cfg.tokenizer.vocab_size)
    data = batches(shape.vocab_size, cfg.train.batch_size, cfg.train.max_seq_length, args.warmup + args.steps)
    tokens_per_step = cfg.train.batch_size * cfg.train.max_seq_length
    rows = []
    for variant in variants(cfg.model.dropout):
        seconds = time_variant(variant, shape, cfg, data, args.warmup)
        rows.append({"variant": variant.name, "ms_per_step": round(seconds * 1000, 1),
                     "tokens_per_sec": round(tokens_per_step / seconds, 1)})
        if not args.json:
            print(f"{rows[-1]['ms_per_step']:>8.1f} ms/step  {variant.name}", flush=True)
    if args.json:
        print(json.dumps({"benchmark": "train_ablation", "steps": args.steps, "threads": torch.get_num_threads(),
                          "variants": rows}))


if __name__ == "__main__":
    main()
