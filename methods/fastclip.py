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
both equal the gradients of F itself.

The gradient follows METHODS.md's objective exactly. The public FastCLIP code differs: it weighs
the rho and u terms of the temperature gradient differently and gives tau its own learning rate
and schedule; here tau is optimised by the loop's AdamW with the model's learning rate.
"""
from __future__ import annotations

import math

import torch

from methods.base import Features, LossOutput, Method, Progress
from methods.gcl import MovingLogMean, fcco_surrogate, gamma_at, log_eps_mean_exp, margins


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
                "gamma_min": 0.2, "gamma_decay_epochs": 10.0}

    def __init__(self, params: dict, num_indices: int) -> None:
        super().__init__(params, num_indices)
        p = self.params
        for key in ("tau_min", "eps"):
            if not 0.0 < p[key] < math.inf:
                raise ValueError(f"method {self.name!r}: {key} must be finite and > 0, got {p[key]!r}")
        if not p["tau_min"] <= p["tau_init"] < math.inf:
            raise ValueError(f"method {self.name!r}: tau_init must be finite and >= tau_min, got {p['tau_init']!r}")
        if not 0.0 <= p["rho"] < math.inf:
            raise ValueError(f"method {self.name!r}: rho must be finite and >= 0, got {p['rho']!r}")
        if not 0.0 < p["gamma_min"] <= 1.0:
            raise ValueError(f"method {self.name!r}: gamma_min must be in (0, 1], got {p['gamma_min']!r}")
        if not 0.0 <= p["gamma_decay_epochs"] < math.inf:
            raise ValueError(f"method {self.name!r}: gamma_decay_epochs must be finite and >= 0, "
                             f"got {p['gamma_decay_epochs']!r}")
        self.tau = torch.nn.Parameter(torch.tensor(p["tau_init"]))
        self.u_img = MovingLogMean(num_indices)
        self.u_txt = MovingLogMean(num_indices)

    def loss(self, feats: Features, ref: Features | None, indices: torch.Tensor, progress: Progress) -> LossOutput:
        tau, eps, rho = self.tau, self.params["eps"], self.params["rho"]
        gamma = gamma_at(progress.epoch, self.params["gamma_min"], self.params["gamma_decay_epochs"])
        d_img, d_txt = margins(feats, None, tau)
        log_img, log_txt = log_eps_mean_exp(d_img, eps), log_eps_mean_exp(d_txt, eps)
        u_img = self.u_img.update(indices, log_img, gamma)
        u_txt = self.u_txt.update(indices, log_txt, gamma)
        surrogate = (tau.detach() * (fcco_surrogate(d_img, u_img) + fcco_surrogate(d_txt, u_txt))
                     + tau * (u_img.mean() + u_txt.mean() + 2 * rho))
        objective = tau * (log_img.mean() + log_txt.mean() + 2 * rho)
        logs = {"objective": float(objective.detach()), "gamma": gamma, "tau": float(tau.detach())}
        return LossOutput(surrogate, logs)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.tau]

    def after_step(self) -> None:
        """Project tau onto its lower bound tau_min."""
        with torch.no_grad():
            self.tau.clamp_(min=self.params["tau_min"])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"tau": self.tau.detach().clone(), "u_img": self.u_img.u.clone(), "u_txt": self.u_txt.u.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore in place: the optimizer keeps a reference to the tau parameter."""
        with torch.no_grad():
            self.tau.copy_(state["tau"])
        self.u_img.u = state["u_img"].clone()
        self.u_txt.u = state["u_txt"].clone()
