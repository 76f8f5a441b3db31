"""drrho_kd: the DRRho-CLIP objective plus lam * tau * KD from the reference (METHODS.md).

KD is kd.distillation_loss with the student's logits s / tau at drrho's fixed tau and the teacher's
r * t_scale; the reference thus both steers the contrastive loss and is distilled. lam = 1 and
t_scale = 100 are the public DRRho code's defaults (METHODS.md gives no lam). Variant "code" changes
drrho's part only (its inner mean's B/(B-1) then also shifts the balance between the two terms).
"""
from __future__ import annotations

from methods.base import Features, LossOutput
from methods.drrho import DRRho
from methods.kd import Distilling, add_distillation


class DRRhoKD(Distilling, DRRho):
    name = "drrho_kd"
    defaults = {**DRRho.defaults, "lam": 1.0, "t_scale": 100.0}

    def distill(self, out: LossOutput, feats: Features, ref: Features) -> LossOutput:
        return add_distillation(out, feats, ref, self.params["tau"], self.params)
