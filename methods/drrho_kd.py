"""drrho_kd: the DRRho-CLIP objective plus lam * tau * KD from the reference (METHODS.md).

KD is kd.distillation_loss with the student's logits s / tau at drrho's fixed tau and the teacher's
r * t_scale; the reference thus both steers the contrastive loss and is distilled. lam = 1 and
t_scale = 100 are the public DRRho code's defaults (METHODS.md gives no lam).
"""
from __future__ import annotations

import torch

from methods.base import Features, LossOutput, Progress
from methods.drrho import DRRho
from methods.kd import add_distillation, check_distillation_params


class DRRhoKD(DRRho):
    name = "drrho_kd"
    defaults = {**DRRho.defaults, "lam": 1.0, "t_scale": 100.0}

    def __init__(self, params: dict, num_indices: int) -> None:
        super().__init__(params, num_indices)
        check_distillation_params(self.name, self.params)

    def loss(self, feats: Features, ref: Features | None, indices: torch.Tensor, progress: Progress) -> LossOutput:
        if ref is None:
            raise ValueError(f"method {self.name!r} needs reference features")
        return add_distillation(super().loss(feats, ref, indices, progress), feats, ref, self.params["tau"],
                                self.params)
