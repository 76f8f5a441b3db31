"""Data-parallel training over torch.distributed, with the global batch as the contrastive batch.

Each rank encodes its contiguous share of the global batch; the features are all-gathered with
their gradient and every rank computes the method's loss (and its selection) on the whole global
batch. Per-sample state (the u of fastclip and drrho) and selections are then deterministic
functions of identical inputs, so every rank keeps an identical copy without exchanging it, and a
W-process run equals the one-process run with the same global batch up to float rounding.

Gradients: all_gather's backward sums what every rank computed for a share, so a rank's encoder
gradient is W times its share of dL/dθ, and the loss's direct parameters (logit scale, a method's
tau) get the full dL/dθ on every rank; averaging over ranks gives exactly dL/dθ for all of them.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import all_gather_single_autograd

from methods import Features

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=10)  # a rank that died leaves the others waiting this long at most


@dataclass(frozen=True)
class World:
    """This process's rank among `size` data-parallel processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 writes the run's files (metrics, checkpoints, model, results); the others only train."""
        return self.rank == 0

    def check_divides(self, count: int, what: str) -> None:
        """Refuse a global batch the ranks cannot share equally."""
        if count % self.size:
            raise ValueError(f"{what} {count} is not divisible by the {self.size} data-parallel processes")

    def share(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch along dim 0."""
        n = len(x) // self.size
        return x[self.rank * n:(self.rank + 1) * n]

    def gather(self, features: Features) -> Features:
        """The global batch's features from every rank's share, in rank order, differentiable."""
        if self.size == 1:
            return features
        image, text = (all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)
                       for x in (features.image, features.text))
        return Features(image, text, features.logit_scale)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over ranks (one all-reduce over a flat buffer)."""
        if self.size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.size
        for grad, mean in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            grad.copy_(mean)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every rank."""
        if self.size == 1:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_main(self, work: Callable[[], T]) -> T:
        """work() run on rank 0 only, its result handed to every rank; if it raised, every rank raises
        (so no rank waits at a later collective for a rank that failed here)."""
        if self.size == 1:
            return work()
        outcome: tuple[bool, Any] | None = None
        if self.main:
            try:
                outcome = (True, work())
            except Exception as error:  # handed to the other ranks, then re-raised here too
                outcome = (False, error)
        ok, value = self.broadcast(outcome)
        if not ok:
            raise value
        return value

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def current() -> World:
    """The world of the initialised default process group, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def join(device: str) -> World:
    """Join the process group this process was started in, if any: a multi-task submitit job (Slurm, or
    the local executor with tasks_per_job > 1) or torchrun (RANK and WORLD_SIZE set); a single process
    otherwise. NCCL on cuda (each rank on its local GPU), gloo on cpu."""
    if current().size > 1:
        return current()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        env = _submitit_tasks()
        if env is None:
            return World()
        env.export(set_cuda_visible_devices=False)
    if int(os.environ["WORLD_SIZE"]) == 1:
        return World()
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=TIMEOUT)
    return current()


def _submitit_tasks() -> Any:
    """submitit's distributed environment inside a submitit job of several tasks, else None."""
    import submitit
    from submitit.helpers import TorchDistributedEnvironment
    try:
        tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job
        return None
    return TorchDistributedEnvironment() if tasks > 1 else None


def leave() -> None:
    """Tear down the process group this process joined (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def joined(device: str) -> Iterator[World]:
    """`join` for the duration of a block; a process group created here is torn down after it."""
    before = current().size > 1
    world = join(device)
    try:
        yield world
    finally:
        if world.size > 1 and not before:
            leave()
