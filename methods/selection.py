"""Shared pieces of the data-selection methods: a keep fraction, plain CLIP training on the chosen
samples, and per-sample contrastive losses for scoring.

Two kinds of selection: online (`Selecting`: every step draws a super-batch of batch / keep
candidates and keeps `batch` of them) and static (`PoolSelecting`: a subset of round(keep * N)
pool samples is chosen once, before training).
"""
from __future__ import annotations

from typing import Any

from methods.base import Features
from methods.clip import Clip
from methods.deferred import F, torch


class KeepFraction(Clip):
    """Plain CLIP on selected samples; `keep` is the kept fraction, checked to lie in (0, 1]."""

    @classmethod
    def check(cls, params: dict[str, Any]) -> dict[str, Any]:
        p = super().check(params)
        if not 0.0 < p["keep"] <= 1.0:
            raise ValueError(f"method {cls.name!r}: keep must be in (0, 1], got {p['keep']}")
        return p


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
