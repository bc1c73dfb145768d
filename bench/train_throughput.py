"""Training throughput: the project's training step beside a plain fp32 eager reference.

    python -m bench.train_throughput --steps 20 [--json] [--params params.yaml]

Both run the default model shape from params.yaml on the same batches (windows of the real token data
when `data/tokens/train.bin` exists, else random ids), alternating in rounds so that the machine's
noise hits both alike. The project's step is `src.training.trainer.make_train_step` with the params'
precision and compile settings; the reference is the same model in fp32, eager, with PyTorch's own choice
of attention kernel, `torch.optim.AdamW`'s default implementation and `F.cross_entropy` over the full
fp32 logits.

The train stage also tells the C allocator to keep freed memory (`src/training/allocator.py`). That is
a setting of the whole process, which a plain PyTorch program would not have: by default neither
variant has it, and `--keep-freed-memory` gives it to both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from src import paths
from src.config import TrainConfig, load_config
from src.data.dataset import TokenSplit
from src.model.transformer import ModelShape, TinyTransformer
from src.training.allocator import keep_freed_memory
from src.training.distributed import single_process
from src.training.optimizers import make_optimizer
from src.training.schedule import make_scheduler
from src.training.step import make_train_step
from src.training.trainer import speed_choices


def pipeline_steps(cfg: TrainConfig) -> int:
    """The optimizer steps of the train stage's run on the token data (1000 without it)."""
    if not (paths.TOKENS_DIR / "meta.json").is_file():
        return 1000
    return TokenSplit(paths.TOKENS_DIR, "train").batches_per_epoch(cfg.max_seq_length, cfg.batch_size) * cfg.epochs


def batches(vocab_size: int, batch_size: int, length: int, count: int, seed: int = 0) -> list[tuple]:
    """``count`` (inputs, targets) batches: real token windows when the token data exists."""
    rng = np.random.default_rng(seed)
    tokens_file = paths.TOKENS_DIR / "train.bin"
    if tokens_file.is_file():
        ids = np.memmap(tokens_file, dtype=np.uint16, mode="r")
        ids = ids[ids < vocab_size] if int(ids.max()) >= vocab_size else ids
    else:
        ids = rng.integers(0, vocab_size, 200_000, dtype=np.int64)
    result = []
    for _ in range(count):
        starts = rng.integers(0, len(ids) - length - 1, batch_size)
        block = torch.from_numpy(np.stack([ids[s:s + length + 1] for s in starts]).astype(np.int64))
        result.append((block[:, :-1], block[:, 1:]))
    return result


def reference_step(model: TinyTransformer, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float):
    """The textbook fp32 eager step: full logits, ``F.cross_entropy``, backward, clip, AdamW.

    Nothing of the project's step applies, not even its attention kernel choice: PyTorch picks."""

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> float:
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def matmul_peak_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def flops_per_token(shape: ModelShape) -> float:
    """Training FLOPs per token: 6 x the parameters used in matrix products, plus 6 x attention's."""
    per_layer = 4 * shape.d_model**2 + 2 * shape.d_model * shape.d_ff
    matmul_params = shape.n_layers * per_layer + shape.vocab_size * shape.d_model  # + the tied head
    attention = shape.n_layers * shape.context_length * shape.d_model  # QK^T and AV: 4Td forward, half causal
    return 6 * matmul_params + 6 * attention


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two variants")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="the train stage's allocator setting, for both variants")
    parser.add_argument("--run-steps", type=int,
                        help="the training run the step belongs to, for train.compile: auto (default: the pipeline's, "
                             "from data/tokens; 1000 without it)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)

    kept = args.keep_freed_memory and keep_freed_memory()
    cfg = load_config(args.params)
    run_steps = args.run_steps or pipeline_steps(cfg.train)
    train_cfg, why, _ = speed_choices(cfg.train, ModelShape.from_config(cfg.model, cfg.tokenizer.vocab_size),
                                   single_process(), run_steps)
    cfg = dataclasses.replace(cfg, train=train_cfg)
    vocab_size = cfg.tokenizer.vocab_size
    shape = ModelShape.from_config(cfg.model, vocab_size)
    length, batch = cfg.train.max_seq_length, cfg.train.batch_size
    data = batches(vocab_size, batch, length, args.steps + args.warmup)

    variants = {}
    for name in ("project", "reference_fp32_eager"):
        torch.manual_seed(cfg.train.seed)
        model = TinyTransformer(shape).train()
        project = name == "project"
        optimizer = make_optimizer(model, cfg.train, fused=project)
        scheduler = make_scheduler(optimizer, cfg.train, 10_000)
        step = (make_train_step(model, optimizer, scheduler, cfg.train) if project
                else reference_step(model, optimizer, scheduler, cfg.train.grad_clip))
        warm_started = time.perf_counter()
        for inputs, targets in data[:args.warmup]:
            step(inputs, targets)
        variants[name] = {"step": step, "seconds": 0.0, "steps": 0,
                          "warmup_seconds": time.perf_counter() - warm_started}

    timed = data[args.warmup:]
    per_round = max(len(timed) // args.rounds, 1)
    for first in range(0, len(timed), per_round):
        for variant in variants.values():
            started = time.perf_counter()
            for inputs, targets in timed[first:first + per_round]:
                variant["step"](inputs, targets)
            variant["seconds"] += time.perf_counter() - started
            variant["steps"] += len(timed[first:first + per_round])

    peak = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    fastest = max(peak.values())  # the machine's peak, whichever precision reaches it
    tokens_per_step = batch * length
    result = {"benchmark": "train_throughput", "batch_size": batch, "max_seq_length": length,
              "vocab_size": vocab_size, "parameters": TinyTransformer(shape).num_parameters(),
              "threads": torch.get_num_threads(), "precision": cfg.train.precision,
              "attention": cfg.train.attention, **why, "compile": cfg.train.compile, "run_steps": run_steps,
              "keep_freed_memory": kept,
              "matmul_peak_gflops": {k: round(v, 1) for k, v in peak.items()}}
    for name, variant in variants.items():
        seconds_per_step = variant["seconds"] / variant["steps"]
        gflops = flops_per_token(shape) * tokens_per_step / seconds_per_step / 1e9
        result[name] = {"tokens_per_sec": round(tokens_per_step / seconds_per_step, 1),
                        "ms_per_step": round(seconds_per_step * 1000, 2),
                        "gflops": round(gflops, 1), "share_of_matmul_peak": round(gflops / fastest, 3),
                        "warmup_seconds": round(variant["warmup_seconds"], 2), "steps": variant["steps"]}
    result["speedup"] = round(result["project"]["tokens_per_sec"] / result["reference_fp32_eager"]["tokens_per_sec"], 3)
    if args.json:
        print(json.dumps(result))
    else:
        for name in variants:
            r = result[name]
            print(f"{name:>22}: {r['tokens_per_sec']:>9.0f} tokens/s  {r['ms_per_step']:>7.1f} ms/step  "
                  f"{r['gflops']:>6.1f} GFLOP/s ({r['share_of_matmul_peak']:.0%} of the machine's fastest matmul peak)")
        print(f"{'speedup':>22}: {result['speedup']:.2f}x")
        print(f"{'precision':>22}: {cfg.train.precision} ({why['precision_choice']}); matmul peak fp32 "
              f"{peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s")
        print(f"{'attention':>22}: {cfg.train.attention} ({why['attention_choice']})")
        print(f"{'compile':>22}: {cfg.train.compile} ({why['compile_choice']})")


if __name__ == "__main__":
    main()
