"""fastclip: FastCLIP's global contrastive loss with a learnable global temperature ("RGCL-g", Wei et al. 2024).

Objective (METHODS.md), with the margins d^I_ij = (s_ij - s_ii)/tau and d^T_ij = (s_ji - s_ii)/tau
over the B-1 negatives j != i and g_i = 1/(B-1) sum_j exp(d_ij):
    F(w, tau) = tau * mean_i [log(eps + g^I_i) + log(eps + g^T_i)] + 2 rho tau,   tau >= tau_min.
log(eps + g_i) is tracked per sample by u_i (gcl.MovingLogMean, the gamma schedule of drrho).
Per side, writing m_ij = tau d_ij for the tau-free margin, so that dd_ij/dtau = -d_ij/tau, the
derivatives of F with log(eps + g_i) replaced by u_i (the FCCO estimates) are
    dF/dw   ~ mean_i 1/(B-1) sum_j exp(d_ij - u_i) grad_w m_ij
    dF/dtau ~ mean_i [u_i - 1/(B-1) sum_j exp(d_ij - u_i) d_ij] + rho.
The loss handed to autograd, per side and with tau live in d = m / tau,
    sg(tau) * gcl.fcco_surrogate(d, u) + tau * (mean_i u_i + rho),
has exactly these gradients: the first term gives the model's and the -exp(d - u) d part of
tau's, the second (u is a constant) the u + rho part. With gamma = 1, u_i = log(eps + g_i) and
both equal the gradients of F itself. This is variant "paper": tau is optimised by the loop's AdamW
at the model's learning rate and bounded below only.

Variant "code" follows the public DRRho-CLIP code's FastCLIP (docs/methods-variants.md). Its loss is
    sg(tau) * [S^I + S^T] + tau * (rho + mean_i (u^I_i + u^T_i) / 2),
S being fcco_surrogate per side, so rho enters once and u is averaged over the sides:
    d/dtau = -A + rho + mean_i (u^I_i + u^T_i) / 2,   A = mean_i 1/(B-1) sum_j exp(d_ij - u_i) d_ij summed
over both sides, half the u + rho part of "paper". u tracks log(eps + 1/B sum_j exp(d_ij)) (the inner
mean divides by B), gamma is set per whole epoch (gcl.gamma_at), and the trained parameter is log(1/tau),
kept in [0, log(1/tau_min)] (tau in [tau_min, 1]) at its own learning rate lr_tau, cut to a third once
tau <= 0.03 (the public script's step_thresh schedule, without warmup). Both log F as "objective", with
the variant's inner mean.
"""
from __future__ import annotations

import math
from typing import Any

from methods.base import Features, LossOutput, Method, Progress
from methods.deferred import torch
from methods.gcl import MovingLogMean, check_variant, fcco_surrogate, gamma_at, log_eps_mean_exp, margins

TAU_MAX = 1.0  # variant "code": the public code clamps its logit scale 1/tau at >= 1
LR_TAU_STEP_AT, LR_TAU_STEP_RATIO = 0.03, 1 / 3  # variant "code": lr_tau's step_thresh schedule


def fastclip_objective(image_features: torch.Tensor, text_features: torch.Tensor, tau: float | torch.Tensor,
                       eps: float = 1e-14, rho: float = 11.0) -> torch.Tensor:
    """F(w, tau) above on one batch (stateless, differentiable in the features and in a tensor tau).

    Features must be L2-normalised.
    """
    d_img, d_txt = margins(Features(image_features, text_features), None, tau)
    return tau * (log_eps_mean_exp(d_img, eps).mean() + log_eps_mean_exp(d_txt, eps).mean() + 2 * rho)


class FastCLIP(Method):
    """RGCL-g with FCCO gradients; owns the global temperature tau (a trainable parameter)."""

    name = "fastclip"
    defaults = {"tau_init": 0.07, "tau_min": 0.01, "rho": 11.0, "eps": 1e-14,
                "gamma_min": 0.2, "gamma_decay_epochs": 10.0, "variant": "paper", "lr_tau": 7.8125e-5}
    added_params = frozenset({"variant", "lr_tau"})

    @classmethod
    def check(cls, params: dict[str, Any]) -> dict[str, Any]:
        p = super().check(params)
        check_variant(cls.name, p["variant"])
        code = p["variant"] == "code"
        for key in ("tau_min", "eps"):
            if not 0.0 < p[key] < math.inf:
                raise ValueError(f"method {cls.name!r}: {key} must be finite and > 0, got {p[key]!r}")
        if not p["tau_min"] <= p["tau_init"] < math.inf:
            raise ValueError(f"method {cls.name!r}: tau_init must be finite and >= tau_min, got {p['tau_init']!r}")
        if code and p["tau_init"] > TAU_MAX:
            raise ValueError(f"method {cls.name!r}: tau_init must be <= {TAU_MAX} with variant 'code' "
                             f"(its bound on tau), got {p['tau_init']!r}")
        if not 0.0 <= p["rho"] < math.inf:
            raise ValueError(f"method {cls.name!r}: rho must be finite and >= 0, got {p['rho']!r}")
        if not 0.0 < p["gamma_min"] <= 1.0:
            raise ValueError(f"method {cls.name!r}: gamma_min must be in (0, 1], got {p['gamma_min']!r}")
        if not 0.0 <= p["gamma_decay_epochs"] < math.inf:
            raise ValueError(f"method {cls.name!r}: gamma_decay_epochs must be finite and >= 0, "
                             f"got {p['gamma_decay_epochs']!r}")
        if not 0.0 <= p["lr_tau"] < math.inf:
            raise ValueError(f"method {cls.name!r}: lr_tau must be finite and >= 0, got {p['lr_tau']!r}")
        if not code and p["lr_tau"] != cls.defaults["lr_tau"]:
            raise ValueError(f"method {cls.name!r}: lr_tau applies to variant 'code' only (variant 'paper' "
                             "trains tau at the model's learning rate); leave it out")
        return p

    def __init__(self, params: dict, num_indices: int) -> None:
        super().__init__(params, num_indices)
        p = self.params
        self.code = p["variant"] == "code"
        self.tau_param = torch.nn.Parameter(torch.tensor(-math.log(p["tau_init"]) if self.code else p["tau_init"]))
        self.u_img = MovingLogMean(num_indices)
        self.u_txt = MovingLogMean(num_indices)

    @property
    def tau(self) -> torch.Tensor:
        """The temperature: the trained parameter itself ("paper"), or exp(-theta) of the trained theta = log(1/tau)
        ("code")."""
        return torch.exp(-self.tau_param) if self.code else self.tau_param

    def loss(self, feats: Features, ref: Features | None, indices: torch.Tensor, progress: Progress) -> LossOutput:
        tau, eps, rho = self.tau, self.params["eps"], self.params["rho"]
        gamma = gamma_at(progress.epoch, self.params["gamma_min"], self.params["gamma_decay_epochs"],
                         whole_epochs=self.code)
        d_img, d_txt = margins(feats, None, tau)
        log_img, log_txt = (log_eps_mean_exp(d, eps, over_batch=self.code) for d in (d_img, d_txt))
        u_img = self.u_img.update(indices, log_img, gamma)
        u_txt = self.u_txt.update(indices, log_txt, gamma)
        share = 0.5 if self.code else 1.0  # "code": rho once and u averaged over the two sides
        surrogate = (tau.detach() * (fcco_surrogate(d_img, u_img) + fcco_surrogate(d_txt, u_txt))
                     + share * tau * (u_img.mean() + u_txt.mean() + 2 * rho))
        objective = tau * (log_img.mean() + log_txt.mean() + 2 * rho)
        logs = {"objective": float(objective.detach()), "gamma": gamma, "tau": float(tau.detach())}
        return LossOutput(surrogate, logs)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.tau_param]

    def parameters_lr(self, lr: float) -> float:
        """The model's `lr` with variant "paper"; with "code", lr_tau, a third of it once tau <= 0.03."""
        if not self.code:
            return lr
        return self.params["lr_tau"] * (LR_TAU_STEP_RATIO if float(self.tau.detach()) <= LR_TAU_STEP_AT else 1.0)

    def after_step(self) -> None:
        """Project tau onto [tau_min, inf) ("paper") or [tau_min, 1] ("code", through log(1/tau))."""
        with torch.no_grad():
            if self.code:
                self.tau_param.clamp_(min=-math.log(TAU_MAX), max=-math.log(self.params["tau_min"]))
            else:
                self.tau_param.clamp_(min=self.params["tau_min"])

    def _param_key(self) -> str:
        """The state key of the trained parameter, named by what it holds."""
        return "log_inv_tau" if self.code else "tau"

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {self._param_key(): self.tau_param.detach().clone(), "u_img": self.u_img.u.clone(),
                "u_txt": self.u_txt.u.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore in place: the optimizer keeps a reference to the temperature parameter."""
        with torch.no_grad():
            self.tau_param.copy_(state[self._param_key()])
        self.u_img.u = state["u_img"].clone()
        self.u_txt.u = state["u_txt"].clone()
