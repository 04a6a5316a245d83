"""More than one process, through PyTorch's own engine: `torchrun --nproc_per_node=N -m vizkit.train ...`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a no-op for one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0 alone writes the event log, checkpoints, ONNX and metrics, and prints."""
        return self.rank == 0


SINGLE = Dist()  # one process: the default everywhere


def init(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); returns this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank), device


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_sum(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (in place), for metrics that must equal a single-process evaluation."""
    if d.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(d: Dist, flag: bool, device: torch.device) -> bool:
    """True on every rank when it is True on one, so all ranks stop at the same step."""
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_text(d: Dist, text: str) -> str:
    """Rank 0's string on every rank (the run directory it chose, say)."""
    if not d.enabled:
        return text
    box = [text]
    dist.broadcast_object_list(box, src=0)
    return box[0]
