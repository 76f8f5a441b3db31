"""random: plain CLIP on a uniform random subset of the pool, the control for every selection method.

It keeps the same fraction of the pool as `filter` does, chosen without looking at the data, so
filter minus random isolates what the reference's scores buy. (A random subset of each step's
super-batch would be distributed exactly like clip's own batches, so clip is already the
control of the online selectors, jest and rho_topk, at equal samples seen.)
"""
from __future__ import annotations

from methods.base import Features
from methods.deferred import torch
from methods.selection import PoolSelecting


class RandomSubset(PoolSelecting):
    name = "random"

    def select_pool(self, ref: Features | None, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(len(indices), generator=generator)[:self.kept_count(len(indices))]
