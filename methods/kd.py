"""kd: MobileCLIP-style distillation from the reference model mixed with plain CLIP (Vasu et al., CVPR 2024).

    loss = (1 - lam) * ClipLoss(s * logit_scale) + lam * KD,
KD (`distillation_loss`) being the symmetric cross-entropy from the teacher's softmax(r * t_scale) to
the student's log_softmax(s * logit_scale) over the batch, rows (image -> text) and columns
(text -> image), averaged over the two directions and the batch. It is written as a cross-entropy
(METHODS.md, and open_clip's and the public DRRho code's distillation loss); MobileCLIP writes a KL
divergence, which differs by the teacher's entropy: the same gradient, a different logged value.
METHODS.md gives no lam for kd, so the default 0.5 weighs the two terms equally; t_scale 100 is
METHODS.md's teacher scale.

`Distilling` (the parameter and reference checks) and `distillation_loss` serve all three KD
methods; fastclip_kd and drrho_kd add lam * tau * KD to their objective with `add_distillation`.
"""
from __future__ import annotations

import math
from typing import Any

from methods.base import Features, LossOutput, Method, Progress
from methods.clip import Clip
from methods.deferred import torch


def distillation_loss(feats: Features, ref: Features, student_scale: float | torch.Tensor,
                      teacher_scale: float) -> torch.Tensor:
    """Symmetric cross-entropy of the student's batch softmax against the teacher's (rows and columns, averaged)."""
    student = student_scale * feats.image @ feats.text.T
    teacher = teacher_scale * ref.image @ ref.text.T
    rows = -(teacher.softmax(dim=1) * student.log_softmax(dim=1)).sum(dim=1).mean()
    cols = -(teacher.softmax(dim=0) * student.log_softmax(dim=0)).sum(dim=0).mean()
    return (rows + cols) / 2


def check_distillation_params(name: str, params: dict[str, Any]) -> None:
    """Refuse a distillation weight lam outside [0, 1] and a teacher scale t_scale that is not finite and > 0."""
    if not 0.0 <= params["lam"] <= 1.0:
        raise ValueError(f"method {name!r}: lam must be in [0, 1], got {params['lam']!r}")
    if not 0.0 < params["t_scale"] < math.inf:
        raise ValueError(f"method {name!r}: t_scale must be finite and > 0, got {params['t_scale']!r}")


def add_distillation(out: LossOutput, feats: Features, ref: Features, tau: float | torch.Tensor,
                     params: dict[str, Any], detached_weight: bool = False) -> LossOutput:
    """`out` plus lam * tau * KD with student logits s / tau (fastclip_kd, drrho_kd); tau may be trainable,
    and with `detached_weight` (a tensor tau, the public code's convention) the factor tau passes no gradient."""
    distill = distillation_loss(feats, ref, 1.0 / tau, params["t_scale"])
    weight = tau.detach() if detached_weight else tau
    return LossOutput(out.loss + params["lam"] * weight * distill,
                      {**out.logs, "distill_loss": float(distill.detach())})


class Distilling(Method):
    """Mixin placed before a contrastive method: checks lam and t_scale, requires reference features,
    and hands the parent's loss to `distill` to add the distillation term."""

    reference = "batch"

    @classmethod
    def check(cls, params: dict[str, Any]) -> dict[str, Any]:
        p = super().check(params)
        check_distillation_params(cls.name, p)
        return p

    def loss(self, feats: Features, ref: Features | None, indices: torch.Tensor, progress: Progress) -> LossOutput:
        if ref is None:
            raise ValueError(f"method {self.name!r} needs reference features")
        return self.distill(super().loss(feats, ref, indices, progress), feats, ref)

    def distill(self, out: LossOutput, feats: Features, ref: Features) -> LossOutput:
        raise NotImplementedError


class KD(Distilling, Clip):
    """(1 - lam) * clip + lam * KD, the student using the model's learnable logit scale as clip does."""

    name = "kd"
    defaults = {"lam": 0.5, "t_scale": 100.0}

    def distill(self, out: LossOutput, feats: Features, ref: Features) -> LossOutput:
        distill = distillation_loss(feats, ref, feats.logit_scale, self.params["t_scale"])
        lam = self.params["lam"]
        return LossOutput((1.0 - lam) * out.loss + lam * distill,
                          {"contrastive_loss": float(out.loss.detach()), "distill_loss": float(distill.detach())})
