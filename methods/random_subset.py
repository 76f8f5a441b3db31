"""random: a uniform random subset of each super-batch, the control for every selection method."""
from __future__ import annotations

import torch

from methods.base import Features, Progress
from methods.selection import Selecting


class RandomSubset(Selecting):
    name = "random"

    def select(self, feats: Features, ref: Features | None, indices: torch.Tensor, progress: Progress,
               generator: torch.Generator, batch_size: int) -> torch.Tensor:
        return torch.randperm(len(indices), generator=generator)[:batch_size]
