"""Multi-process training with torch.distributed (DistributedDataParallel), started by torchrun.

    torchrun --nproc_per_node 4 -m flowkd run CONFIG --out DIR                       # one machine
    torchrun --nnodes 2 --node_rank R --master_addr HOST --master_port 29500 \\
             --nproc_per_node 8 -m flowkd run CONFIG --out DIR                       # several machines

Each rank takes its share of every global batch (``data.batch_size`` is the global batch). The PKT
similarity matrices are computed per rank on its own share, as the paper computes them per batch; with
``distributed.gather_features = true`` every rank all-gathers teacher and student features first, so the
similarity batch is the global one (gradients flow back to each rank's own features) and the loss equals
the single-process loss on the same batch. BatchNorm statistics stay per rank. Rank 0 writes every file
and runs the evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "gather_rows"]


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def same_everywhere(self, value: float, device=None) -> bool:
        """Whether ``value`` is identical on every rank."""
        if not self.enabled:
            return True
        t = torch.tensor([value, -value], dtype=torch.float64, device=device)
        lo, hi = t.clone(), t.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return bool(lo[0] == hi[0])

    def close(self) -> None:
        """Leave the process group: every rank waits for the others, then the group is destroyed while the
        interpreter is fully alive rather than during its teardown."""
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the process group when torchrun started us (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return DistContext(rank, world, local)


class _GatherRows(torch.autograd.Function):
    """All-gather of equal-shaped tensors with synchronous collectives; backward sums every rank's gradient
    for this rank's rows (each rank's loss reads all rows) and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x):
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        ctx.rank = dist.get_rank()
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # summed over ranks, synchronously: no work outlives the call
        return grad[ctx.rank]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """All-gather along the batch dimension, rank order; differentiable for this rank's rows.

    Ranks may hold different numbers of rows (the last batch), so sizes are exchanged first.
    """
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    pad = max(sizes) - x.shape[0]
    xp = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    parts = _GatherRows.apply(xp.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])
