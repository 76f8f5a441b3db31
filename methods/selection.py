"""Shared pieces of the data-selection methods: a keep fraction, plain CLIP training on the chosen
samples, and per-sample contrastive losses for scoring.

Two kinds of selection: online (`Selecting`: every step draws a super-batch of batch / keep
candidates and keeps `batch` of them) and static (`PoolSelecting`: a subset of round(keep * N)
pool samples is chosen once, before training).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.base import Features
from methods.clip import Clip


class KeepFraction(Clip):
    """Plain CLIP on selected samples; `keep` is the kept fraction, checked to lie in (0, 1]."""

    def __init__(self, params: dict, num_indices: int) -> None:
        super().__init__(params, num_indices)
        if not 0.0 < self.params["keep"] <= 1.0:
            raise ValueError(f"method {self.name!r}: keep must be in (0, 1], got {self.params['keep']}")


class Selecting(KeepFraction):
    """Online selection: candidates = batch / keep per step; subclasses implement `select`."""

    defaults = {"keep": 0.2}

    def candidates(self, batch_size: int) -> int:
        return round(batch_size / self.params["keep"])


class PoolSelecting(KeepFraction):
    """Static selection: keep round(keep * N) of the N pool samples; subclasses implement `select_pool`."""

    defaults = {"keep": 0.3}

    def kept_count(self, pool_size: int) -> int:
        """How many of `pool_size` samples are kept (at least one)."""
        return max(1, round(self.params["keep"] * pool_size))


def per_sample_clip_loss(feats: Features) -> torch.Tensor:
    """Each pair's two-way InfoNCE loss within the batch: (CE of row i + CE of column i) / 2, shape [B]."""
    logits = feats.logit_scale * feats.image @ feats.text.T
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none"))
