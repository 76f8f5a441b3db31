"""jest and jest_topk: joint example selection by conditional learnability (Evans et al. 2024).

A super-batch is filtered to `batch_size` samples in K chunks. A remaining candidate i is scored
by its learnability given the set S chosen so far: its contrastive loss under the learner minus
under the reference, where the softmax runs over i's own pair and the pairs in S only:
    l_i(S) = -a_ii + 1/2 [logsumexp_{j in {i} u S} a_ij + logsumexp_{j in {i} u S} a_ji]
with a = logit_scale * similarities of that model. For the first chunk S is empty and the score
uses the positive-pair term -a_ii alone (the full formula would be 0 for everyone). jest draws
each chunk without replacement with probability proportional to exp(score); jest_topk takes the
top scores. The public JEST code scores with its own pretrained learner; here, as in the DRRho
paper's baseline, the learner is the model being trained.
"""
from __future__ import annotations

from typing import Any

from methods.base import Features, Progress
from methods.deferred import torch
from methods.selection import Selecting


def conditional_loss(feats: Features, chosen: torch.Tensor) -> torch.Tensor:
    """l_i(S) above for every candidate i (rows of feats), S = `chosen` positions, shape [n]."""
    a = feats.logit_scale * feats.image @ feats.text.T
    positive = a.diagonal()
    if len(chosen) == 0:
        return -positive
    rows = torch.logsumexp(torch.cat([positive[:, None], a[:, chosen]], dim=1), dim=1)
    cols = torch.logsumexp(torch.cat([positive[:, None], a.T[:, chosen]], dim=1), dim=1)
    return -positive + 0.5 * (rows + cols)


def sample_proportional(scores: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k positions drawn without replacement, each draw with probability proportional to exp(score)."""
    return torch.multinomial(torch.softmax(scores.double(), dim=0), k, replacement=False, generator=generator)


class Jest(Selecting):
    name = "jest"
    reference = "batch"
    defaults = {"keep": 0.2, "chunks": 2}
    sample = True

    @classmethod
    def check(cls, params: dict[str, Any]) -> dict[str, Any]:
        p = super().check(params)
        if p["chunks"] < 1:
            raise ValueError(f"method {cls.name!r}: chunks must be >= 1, got {p['chunks']}")
        return p

    def select(self, feats: Features, ref: Features | None, indices: torch.Tensor, progress: Progress,
               generator: torch.Generator, batch_size: int) -> torch.Tensor:
        chunks = self.params["chunks"]
        sizes = [batch_size // chunks + (c < batch_size % chunks) for c in range(chunks)]
        chosen = torch.empty(0, dtype=torch.long)
        for size in sizes:
            remaining = torch.ones(len(indices), dtype=torch.bool)
            remaining[chosen] = False
            candidates = remaining.nonzero().squeeze(1)
            score = (conditional_loss(feats, chosen) - conditional_loss(ref, chosen))[candidates]
            pick = sample_proportional(score, size, generator) if self.sample else torch.topk(score, size).indices
            chosen = torch.cat([chosen, candidates[pick]])
        return chosen


class JestTopK(Jest):
    name = "jest_topk"
    sample = False
