"""filter: static reference-score filtering, DataComp's "CLIP score" baseline.

The reference scores every pool sample once by its image-text cosine similarity r_ii; the top
round(keep * N) samples are kept and plain CLIP trains on them. The scoring pass over the pool
is counted once in C_total (or shared through the reference-feature cache).
"""
from __future__ import annotations

from methods.base import Features
from methods.deferred import torch
from methods.selection import PoolSelecting


def reference_scores(ref: Features) -> torch.Tensor:
    """r_ii: each pair's cosine similarity under the reference (features are L2-normalised), shape [N]."""
    return (ref.image * ref.text).sum(dim=1)


class Filter(PoolSelecting):
    name = "filter"
    reference = "pool"

    def select_pool(self, ref: Features | None, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if ref is None:
            raise ValueError(f"method {self.name!r} needs the reference's features of the pool")
        return torch.topk(reference_scores(ref), self.kept_count(len(indices))).indices
