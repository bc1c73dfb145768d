"""Where training runs: the device, and the process group when torchrun starts several workers.

A run under ``torchrun --nproc_per_node=N`` (which sets WORLD_SIZE, RANK, LOCAL_RANK) joins a process
group: gloo on CPU, nccl on CUDA. Every worker trains on its share of each global batch, DDP averages
the gradients, and rank 0 alone writes checkpoints and metrics. A plain run is a group of one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workers:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """The main worker's ``value``, on every worker (pickled through the process group)."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0, device=self.device if self.device.type == "cuda" else None)
        return holder[0]

    def mean(self, value: float) -> float:
        """The mean of ``value`` over every worker (the value itself for a group of one)."""
        return self.sum([value])[0] / self.world_size

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of ``values`` over every worker."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def slice(self, batch: torch.Tensor) -> torch.Tensor:
        """This worker's rows of a global batch, on its device (the whole batch for a group of one)."""
        if self.distributed:
            batch = batch.tensor_split(self.world_size)[self.rank]
        return batch.to(self.device)

    def environment(self) -> dict[str, object]:
        """What a run's numbers depend on beyond its recipe: the processor, the threads and workers, PyTorch."""
        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else processor_name()
        return {"device": device, "threads": torch.get_num_threads(), "workers": self.world_size,
                "torch": torch.__version__}

    def check_identical(self, model: torch.nn.Module) -> None:
        """Fail loudly if DDP let the workers' weights drift apart."""
        if not self.distributed:
            return
        digest = hashlib.sha256()
        for tensor in model.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        digests = [None] * self.world_size
        dist.all_gather_object(digests, digest.hexdigest())
        if len(set(digests)) != 1:
            raise RuntimeError(f"the workers' weights differ after training: {digests}")
        log.info("weights identical across %d workers (sha256 %s)", self.world_size, digests[0][:16])


def processor_name() -> str:
    """The CPU's model name as the OS reports it (``lscpu``'s "Model name" on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def single_process() -> Workers:
    return Workers(0, 1, torch.device("cpu"))


def pick_device(choice: str) -> torch.device:
    """'auto' takes CUDA when there is one, else the CPU; 'cuda' insists on it."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but PyTorch sees no CUDA device: use 'auto' or 'cpu'")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def join(device_choice: str) -> Workers:
    """Join torchrun's process group if there is one; otherwise a group of one."""
    device = pick_device(device_choice)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return Workers(0, 1, device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Workers(dist.get_rank(), dist.get_world_size(), device)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
