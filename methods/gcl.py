"""Global contrastive loss machinery shared by fastclip and drrho (FastCLIP's FCCO estimator).

Per anchor i and negative j != i the methods define margins d_ij (image anchors over text
negatives, text anchors over image negatives) and the inner mean
g_i = 1/(B-1) sum_{j != i} exp(d_ij). The objective is tau * mean_i log(eps + g_i), summed
over the two anchor sides. Its gradient is estimated with a per-sample moving average u_i
of log(eps + g_i), indexed by the sample's dataset index:
    u_i <- log((1 - gamma) exp(u_i) + gamma (eps + g_i))
    surrogate = tau * mean_i 1/(B-1) sum_{j != i} sg(exp(d_ij - u_i)) * d_ij
With gamma = 1, u_i = log(eps + g_i) and the surrogate's gradient equals the objective's.
Everything runs in log space: with tau = 0.01 the margins reach hundreds and exp overflows.

Each method using it has a `variant` (docs/methods-variants.md): "paper" follows METHODS.md as above,
"code" the public DRRho-CLIP code, whose inner mean divides by B (`over_batch`) and whose gamma
schedule reads the whole epoch (`whole_epochs`).
"""
from __future__ import annotations

import math

from methods.base import Features
from methods.deferred import torch

VARIANTS = ("paper", "code")


def margins(feats: Features, ref: Features | None, tau: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Margins d^I (row i: image anchor i over texts j) and d^T (row i: text anchor i over images j), [B, B].

    With `ref`, the reference's margins are subtracted (DRRho). The diagonal is meaningless
    and must be masked by the caller (see `off_diagonal`).
    """
    sim = feats.image @ feats.text.T
    pos = sim.diagonal()
    d_img = sim - pos[:, None]
    d_txt = sim.T - pos[:, None]
    if ref is not None:
        rsim = ref.image @ ref.text.T
        rpos = rsim.diagonal()
        d_img = d_img - (rsim - rpos[:, None])
        d_txt = d_txt - (rsim.T - rpos[:, None])
    return d_img / tau, d_txt / tau


def off_diagonal(d: torch.Tensor) -> torch.Tensor:
    """The [B, B-1] matrix of d without its diagonal (negatives only)."""
    b = d.shape[0]
    return d.flatten()[1:].view(b - 1, b + 1)[:, :-1].reshape(b, b - 1)


def check_variant(name: str, variant: str) -> None:
    """Refuse a variant other than "paper" (METHODS.md's objective) and "code" (the public code's conventions)."""
    if variant not in VARIANTS:
        raise ValueError(f"method {name!r}: variant must be 'paper' (METHODS.md's objective) or 'code' "
                         f"(the public DRRho-CLIP code's conventions), got {variant!r}")


def log_eps_mean_exp(d: torch.Tensor, eps: float, over_batch: bool = False) -> torch.Tensor:
    """log(eps + 1/(B-1) sum_{j != i} exp(d_ij)) per row, computed stably; with `over_batch` the sum
    is divided by B instead (the public code's inner mean)."""
    neg = off_diagonal(d)
    log_g = torch.logsumexp(neg, dim=1) - math.log(d.shape[0] if over_batch else d.shape[0] - 1)
    return torch.logaddexp(log_g, torch.full_like(log_g, math.log(eps)))


def gamma_at(epoch: float, gamma_min: float, decay_epochs: float, whole_epochs: bool = False) -> float:
    """gamma schedule: 1 during the first epoch, then a cosine decay to gamma_min over decay_epochs.

    By default the decay starts at epoch 1 and follows the fractional epoch, reaching gamma_min at
    1 + decay_epochs; with `whole_epochs` (the public code) it is set once per epoch e = floor(epoch)
    at t = e / decay_epochs, reaching gamma_min at epoch decay_epochs, one epoch earlier.
    """
    start = 0.0 if whole_epochs else 1.0
    epoch = math.floor(epoch) if whole_epochs else epoch
    if epoch < 1.0 or decay_epochs <= 0:
        return 1.0 if epoch < 1.0 else gamma_min
    t = min((epoch - start) / decay_epochs, 1.0)
    return gamma_min + (1.0 - gamma_min) * 0.5 * (1.0 + math.cos(math.pi * t))


class MovingLogMean:
    """Per-sample moving average u of log(eps + g), one slot per dataset index, NaN until first visit."""

    def __init__(self, num_indices: int) -> None:
        self.u = torch.full((num_indices,), float("nan"))

    def update(self, indices: torch.Tensor, log_estimate: torch.Tensor, gamma: float) -> torch.Tensor:
        """Fold this batch's log(eps + g) into u at `indices` and return the updated u for the batch."""
        est = log_estimate.detach().to(self.u.device, self.u.dtype)
        old = self.u[indices]
        if gamma >= 1.0:
            new = est
        else:
            mixed = torch.logaddexp(old + math.log1p(-gamma), est + math.log(gamma))
            new = torch.where(torch.isnan(old), est, mixed)
        self.u[indices] = new
        return new.to(log_estimate.device, log_estimate.dtype)


def fcco_surrogate(d: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """mean_i 1/(B-1) sum_{j != i} sg(exp(d_ij - u_i)) d_ij: its gradient is the FCCO estimate."""
    neg = off_diagonal(d)
    weights = torch.exp(neg.detach() - u[:, None])
    return (weights * neg).mean(dim=1).mean()
