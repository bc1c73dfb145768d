"""The training step and the data order: the code that decides a run's numbers.

A checkpoint's fingerprint hashes this module with the model, its loss, the token dataset, the optimizers and
the schedule (``checkpointing.RECIPE_CODE``): a run resumes only from checkpoints made by the same such code.
Everything else about training (the loop's bookkeeping, evaluation, checkpoint files) may change without
orphaning a run in progress.

Every kernel the step runs is deterministic (``deterministic_algorithms``), and each epoch's data order comes
from its own generator seeded by (seed, epoch), so a run repeats bit for bit on one machine.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

from src.config import TrainConfig
from src.model.transformer import TinyTransformer
from src.training.distributed import Workers, single_process

KERNELS = {"math": [SDPBackend.MATH], "flash": [SDPBackend.FLASH_ATTENTION]}


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Only deterministic kernels while training; the previous setting is restored afterwards.

    Without it, torch.compile's CPU code adds up the embedding's gradient with atomic adds from several
    threads, in an order that changes from run to run, and so do the sum's last bits. Inductor reads the
    setting when it compiles and keys its caches on it. ``warn_only``: an operation that has no
    deterministic kernel (on CUDA, some) warns instead of stopping the run.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


class NextTokenLoss(nn.Module):
    """The training objective as one module, so that DDP and torch.compile wrap a single forward."""

    def __init__(self, model: TinyTransformer):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model.loss(inputs, targets)


def make_train_step(model: TinyTransformer, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: TrainConfig,
                    workers: Workers = single_process()) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """One optimizer step on a global batch; returns its loss. A non-finite loss is returned unapplied.

    ``cfg`` holds the precision and attention kernel the step runs, resolved (``speed_choices``).

    Each worker computes the loss of its slice of the batch; DDP averages the gradients in backward.
    """
    objective: nn.Module = NextTokenLoss(model)
    if workers.distributed:
        objective = DistributedDataParallel(
            objective, device_ids=[workers.device] if workers.device.type == "cuda" else None)
    if cfg.compile:
        if workers.distributed:
            # Dynamo's DDP optimizer, which cuts the graph at DDP's gradient buckets to overlap their
            # all-reduce with backward, fails on this model in PyTorch 2.13 ("'int' object has no
            # attribute 'meta'"). One graph per step is compiled instead; DDP's hooks still reduce.
            torch._dynamo.config.optimize_ddp = False
        objective = torch.compile(objective)

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> float:
        inputs, targets = workers.slice(inputs), workers.slice(targets)
        with attention_kernel(cfg.attention), precision_context(cfg.precision, workers.device):
            loss = objective(inputs, targets)
        value = workers.mean(loss.item())  # every worker sees a NaN on any one of them
        if not math.isfinite(value):
            return value
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return value

    return step


@contextlib.contextmanager
def bf16_math_attention() -> Iterator[None]:
    """Let SDPA's math kernel keep bf16 queries, keys and values in bf16 (it casts them to fp32 by default).

    Kept in bf16, its matrix products run at the bf16 rate and its softmax still sums in fp32. The switch is
    process-wide in PyTorch and read when torch.compile traces, so it is set around every call of the step,
    not inside the compiled model; Inductor's caches key on the graph it traces, which the switch changes.
    """
    allowed = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()  # despite the name, every device
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        yield
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device = torch.device("cpu")) -> Iterator[None]:
    """bf16: autocast, with attention's matrix products in bf16 too; fp32: nothing changes."""
    if precision != "bf16":
        yield
        return
    with bf16_math_attention(), torch.autocast(device.type, dtype=torch.bfloat16):
        yield


def attention_kernel(kernel: str) -> contextlib.AbstractContextManager:
    """SDPA restricted to ``kernel`` (math | flash); ``default``: PyTorch's own choice. Like the precision
    switch, it is read when torch.compile traces, so it is set around every call of the step."""
    return contextlib.nullcontext() if kernel == "default" else sdpa_kernel(KERNELS[kernel])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders epoch ``epoch``'s batches: the same for a run, a resumed run and a benchmark."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)
