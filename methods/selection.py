"""Shared pieces of the data-selection methods: a super-batch of candidates, plain CLIP training on
the chosen ones, and per-sample contrastive losses for scoring."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.base import Features
from methods.clip import Clip


class Selecting(Clip):
    """A method that draws candidates = batch / keep per step, selects `batch` of them and trains
    them with open_clip's ClipLoss. Subclasses implement `select`."""

    defaults = {"keep": 0.2}

    def __init__(self, params: dict, num_indices: int) -> None:
        super().__init__(params, num_indices)
        if not 0.0 < self.params["keep"] <= 1.0:
            raise ValueError(f"method {self.name!r}: keep must be in (0, 1], got {self.params['keep']}")

    def candidates(self, batch_size: int) -> int:
        return round(batch_size / self.params["keep"])


def per_sample_clip_loss(feats: Features) -> torch.Tensor:
    """Each pair's two-way InfoNCE loss within the batch: (CE of row i + CE of column i) / 2, shape [B]."""
    logits = feats.logit_scale * feats.image @ feats.text.T
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none"))
