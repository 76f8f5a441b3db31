"""drrho: DRRho-CLIP, the reference model steers the contrastive loss (Wei et al., ICML 2025).

Margins are taken relative to the reference's: d_ij = [(s_ij - s_ii) - (r_ij - r_ii)] / tau
with a FIXED tau (the reference's own logit scale is ignored), eps = 1e-4, the image-anchor
and text-anchor terms summed, and the inner means tracked per sample with FastCLIP's moving
average u (gamma = 1 in the first epoch, then cosine-decayed to gamma_min).

tau being fixed, of the public code's conventions (variant "code", docs/methods-variants.md) two apply:
the inner mean divides by B rather than B-1, which scales the model's gradient by B/(B-1) where
g >> eps, and gamma is set per whole epoch, reaching gamma_min one epoch earlier (gcl.gamma_at).
"""
from __future__ import annotations

import math
from typing import Any

from methods.base import Features, LossOutput, Method, Progress
from methods.deferred import torch
from methods.gcl import MovingLogMean, check_variant, fcco_surrogate, gamma_at, log_eps_mean_exp, margins


def drrho_objective(image_features: torch.Tensor, text_features: torch.Tensor,
                    ref_image_features: torch.Tensor, ref_text_features: torch.Tensor,
                    tau: float, eps: float = 1e-4) -> torch.Tensor:
    """The DRRho-CLIP objective on one batch (stateless, differentiable).

    tau * mean_i [log(eps + g^I_i) + log(eps + g^T_i)], where g_i is the mean over the
    B-1 negatives of exp(d_ij) and d_ij are the reference-relative margins over tau.
    Features must be L2-normalised.
    """
    d_img, d_txt = margins(Features(image_features, text_features),
                           Features(ref_image_features, ref_text_features), tau)
    return tau * (log_eps_mean_exp(d_img, eps).mean() + log_eps_mean_exp(d_txt, eps).mean())


class DRRho(Method):
    name = "drrho"
    reference = "batch"
    defaults = {"tau": 0.01, "eps": 1e-4, "gamma_min": 0.2, "gamma_decay_epochs": 10.0, "variant": "paper"}
    added_params = frozenset({"variant"})

    @classmethod
    def check(cls, params: dict[str, Any]) -> dict[str, Any]:
        p = super().check(params)
        check_variant(cls.name, p["variant"])
        if not all(0 < p[k] < math.inf for k in ("tau", "eps")):
            raise ValueError(f"method {cls.name!r}: tau and eps must be finite and > 0")
        if not 0.0 < p["gamma_min"] <= 1.0:
            raise ValueError(f"method {cls.name!r}: gamma_min must be in (0, 1]")
        if not 0.0 <= p["gamma_decay_epochs"] < math.inf:
            raise ValueError(f"method {cls.name!r}: gamma_decay_epochs must be finite and >= 0")
        return p

    def __init__(self, params: dict, num_indices: int) -> None:
        super().__init__(params, num_indices)
        self.code = self.params["variant"] == "code"
        self.u_img = MovingLogMean(num_indices)
        self.u_txt = MovingLogMean(num_indices)

    def loss(self, feats: Features, ref: Features | None, indices: torch.Tensor, progress: Progress) -> LossOutput:
        if ref is None:
            raise ValueError(f"method {self.name!r} needs reference features")
        tau, eps = self.params["tau"], self.params["eps"]
        gamma = gamma_at(progress.epoch, self.params["gamma_min"], self.params["gamma_decay_epochs"],
                         whole_epochs=self.code)
        d_img, d_txt = margins(feats, ref, tau)
        log_img, log_txt = (log_eps_mean_exp(d, eps, over_batch=self.code) for d in (d_img, d_txt))
        u_img = self.u_img.update(indices, log_img, gamma)
        u_txt = self.u_txt.update(indices, log_txt, gamma)
        surrogate = tau * (fcco_surrogate(d_img, u_img) + fcco_surrogate(d_txt, u_txt))
        objective = tau * (log_img.mean() + log_txt.mean())
        return LossOutput(surrogate, {"objective": float(objective.detach()), "gamma": gamma, "tau": tau})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"u_img": self.u_img.u.clone(), "u_txt": self.u_txt.u.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.u_img.u = state["u_img"].clone()
        self.u_txt.u = state["u_txt"].clone()
