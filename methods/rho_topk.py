"""rho_topk: RHO-LOSS selection (Mindermann et al. 2022), the CVaR form of DRRho.

Each candidate's reducible loss is its two-way contrastive loss under the learner minus under
the reference, both within the super-batch and each with its own model's logit scale; the top
`batch_size` candidates are trained on with plain CLIP.
"""
from __future__ import annotations

from methods.base import Features, Progress
from methods.deferred import torch
from methods.selection import Selecting, per_sample_clip_loss


class RhoTopK(Selecting):
    name = "rho_topk"
    reference = "batch"

    def select(self, feats: Features, ref: Features | None, indices: torch.Tensor, progress: Progress,
               generator: torch.Generator, batch_size: int) -> torch.Tensor:
        reducible = per_sample_clip_loss(feats) - per_sample_clip_loss(ref)
        return torch.topk(reducible, batch_size).indices
