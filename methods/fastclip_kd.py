"""fastclip_kd: fastclip's objective plus lam * tau * KD from the reference (METHODS.md).

KD is kd.distillation_loss with the student's logits s / tau at fastclip's learnable tau and the
teacher's r * t_scale. With variant "paper" tau gets the exact gradient of lam * tau * KD as METHODS.md
writes it; variant "code" multiplies KD by a detached tau, as the public DRRho code does, so tau's only
KD gradient is through the student's logits. lam = 1 and t_scale = 100 are the public DRRho code's
defaults (METHODS.md gives no lam).
"""
from __future__ import annotations

from methods.base import Features, LossOutput
from methods.fastclip import FastCLIP
from methods.kd import Distilling, add_distillation


class FastCLIPKD(Distilling, FastCLIP):
    name = "fastclip_kd"
    defaults = {**FastCLIP.defaults, "lam": 1.0, "t_scale": 100.0}

    def distill(self, out: LossOutput, feats: Features, ref: Features) -> LossOutput:
        return add_distillation(out, feats, ref, self.tau, self.params, detached_weight=self.code)
