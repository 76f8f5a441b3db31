"""The `variant` parameter of fastclip, fastclip_kd, drrho and drrho_kd: each convention of "code" (the public
DRRho-CLIP code) against "paper" (METHODS.md), in closed form or by brute force."""
import math

import pytest
import torch
import torch.nn.functional as F

from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.models import build_model
from harness.run.train import TrainConfig, train
from methods import Features, Progress
from methods.base import identity_params
from methods.drrho import DRRho
from methods.drrho_kd import DRRhoKD
from methods.fastclip import FastCLIP
from methods.fastclip_kd import FastCLIPKD
from methods.gcl import gamma_at
from methods.kd import distillation_loss

VARIANT_METHODS = (FastCLIP, FastCLIPKD, DRRho, DRRhoKD)


def unit(b: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)


def by_hand(rows: list[list[float]]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def code_tau_gradient(img: torch.Tensor, txt: torch.Tensor, tau: float, eps: float, rho: float) -> float:
    """-A + rho + mean_i (u^I_i + u^T_i) / 2 at gamma = 1, one scalar at a time: u_i = log(eps + 1/B sum_{j != i}
    exp(d_ij)) and A = mean_i 1/(B-1) sum_{j != i} exp(d_ij - u_i) d_ij, summed over the two sides."""
    b = img.shape[0]
    sim = (img @ txt.T).tolist()
    a_bar = u_sum = 0.0
    for i in range(b):
        for d in ([(sim[i][j] - sim[i][i]) / tau for j in range(b) if j != i],
                  [(sim[j][i] - sim[i][i]) / tau for j in range(b) if j != i]):
            u = math.log(eps + sum(math.exp(x) for x in d) / b)
            a_bar += sum(math.exp(x - u) * x for x in d) / (b - 1) / b
            u_sum += u / b
    return -a_bar + rho + u_sum / 2


def paper_tau_gradient(img: torch.Tensor, txt: torch.Tensor, tau: float, eps: float, rho: float) -> float:
    """METHODS.md's dF/dtau at gamma = 1: 2 rho + mean_i sum over the sides of [u_i - 1/(B-1) sum_j exp(d_ij - u_i)
    d_ij], u_i = log(eps + 1/(B-1) sum_{j != i} exp(d_ij))."""
    b = img.shape[0]
    sim = (img @ txt.T).tolist()
    total = 2 * rho
    for i in range(b):
        for d in ([(sim[i][j] - sim[i][i]) / tau for j in range(b) if j != i],
                  [(sim[j][i] - sim[i][i]) / tau for j in range(b) if j != i]):
            u = math.log(eps + sum(math.exp(x) for x in d) / (b - 1))
            total += (u - sum(math.exp(x - u) * x for x in d) / (b - 1)) / b
    return total


def d_loss_d_tau(method: FastCLIP, img: torch.Tensor, txt: torch.Tensor, ref: Features | None = None) -> float:
    """dL/dtau of one first-epoch step (gamma = 1), through whichever parameter the variant trains."""
    out = method.loss(Features(img, txt), ref, torch.arange(img.shape[0]), Progress(0, 0.0))
    (grad,) = torch.autograd.grad(out.loss, method.tau_param)
    return float(grad) if not method.code else -float(grad) / float(method.tau.detach())  # tau = exp(-theta)


def test_code_tau_gradient_is_minus_a_plus_rho_plus_the_sides_mean_u():
    img = by_hand([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 0, 2]])
    txt = by_hand([[2, 1, 0], [0, 1, 0], [0, 1, 2], [1, 1, 1]])
    method = FastCLIP({"variant": "code", "tau_init": 0.2, "rho": 3.0, "eps": 1e-4}, 4)
    tau = float(method.tau.detach())
    assert d_loss_d_tau(method, img, txt) == pytest.approx(code_tau_gradient(img, txt, tau, 1e-4, 3.0), rel=1e-5)


def test_at_tau_001_and_b_64_the_two_variants_move_tau_in_opposite_directions():
    img, txt = unit(64, 8, 0), unit(64, 8, 1)
    code = FastCLIP({"variant": "code", "tau_init": 0.01}, 64)
    paper = FastCLIP({"tau_init": 0.01}, 64)
    tau = float(code.tau.detach())
    expected_code = code_tau_gradient(img, txt, tau, 1e-14, 11.0)
    expected_paper = paper_tau_gradient(img, txt, 0.01, 1e-14, 11.0)
    assert expected_code * expected_paper < 0
    assert d_loss_d_tau(code, img, txt) == pytest.approx(expected_code, rel=1e-4)
    assert d_loss_d_tau(paper, img, txt) == pytest.approx(expected_paper, rel=1e-4)


@pytest.mark.parametrize("cls, params", [
    (FastCLIP, {"tau_init": 0.1}),
    (DRRho, {"tau": 0.5, "eps": 1e-14}),
    (DRRhoKD, {"tau": 0.5, "eps": 1e-14, "lam": 0.0}),
])
def test_the_features_gradient_of_code_is_b_over_b_minus_one_times_papers(cls, params):
    # g >> eps here, so the inner mean over B instead of B-1 only rescales every weight exp(d - u).
    b = 6
    raw = [x.clone().requires_grad_() for x in (unit(b, 4, 2), unit(b, 4, 3))]
    ref = Features(unit(b, 4, 4), unit(b, 4, 5)) if cls.reference else None
    grads = {}
    for variant in ("paper", "code"):
        method = cls({**params, "variant": variant}, b)
        out = method.loss(Features(F.normalize(raw[0], dim=-1), F.normalize(raw[1], dim=-1)), ref,
                          torch.arange(b), Progress(0, 0.0))
        grads[variant] = torch.autograd.grad(out.loss, raw)
    for paper, code in zip(grads["paper"], grads["code"]):
        torch.testing.assert_close(code, paper * b / (b - 1), rtol=1e-5, atol=1e-9)


def cosine(t: float, gamma_min: float) -> float:
    return gamma_min + (1 - gamma_min) * 0.5 * (1 + math.cos(math.pi * t))


def test_gamma_schedules():
    # code: set per whole epoch e at t = e / decay; paper: at the fractional epoch, t = (epoch - 1) / decay
    for epoch, code, paper in ((0.7, 1.0, 1.0), (1.0, cosine(1 / 4, 0.2), 1.0),
                               (1.9, cosine(1 / 4, 0.2), cosine(0.9 / 4, 0.2)),
                               (3.5, cosine(3 / 4, 0.2), cosine(2.5 / 4, 0.2)),
                               (4.0, 0.2, cosine(3 / 4, 0.2)), (5.0, 0.2, 0.2)):
        assert gamma_at(epoch, 0.2, 4.0, whole_epochs=True) == pytest.approx(code)
        assert gamma_at(epoch, 0.2, 4.0) == pytest.approx(paper)
    for e in range(1, 7):  # paper reaches each value one epoch after code
        assert gamma_at(e + 1.0, 0.2, 4.0) == pytest.approx(gamma_at(e, 0.2, 4.0, whole_epochs=True))


@pytest.mark.parametrize("cls", [FastCLIP, DRRho])
def test_the_methods_follow_their_variants_gamma(cls):
    img, txt = unit(4, 3, 0).float(), unit(4, 3, 1).float()
    ref = Features(unit(4, 3, 2).float(), unit(4, 3, 3).float())
    for variant, whole in (("paper", False), ("code", True)):
        method = cls({"variant": variant, "gamma_min": 0.3, "gamma_decay_epochs": 3.0}, 4)
        for epoch in (0.5, 1.5, 2.0, 3.2):
            out = method.loss(Features(img, txt), ref, torch.arange(4), Progress(0, epoch))
            assert out.logs["gamma"] == gamma_at(epoch, 0.3, 3.0, whole_epochs=whole)


def set_tau(method: FastCLIP, tau: float) -> None:
    with torch.no_grad():
        method.tau_param.fill_(-math.log(tau) if method.code else tau)


def test_code_clamps_tau_to_tau_min_and_one_paper_only_below():
    code, paper = FastCLIP({"variant": "code", "tau_min": 0.02}, 4), FastCLIP({"tau_min": 0.02}, 4)
    for tau, code_after, paper_after in ((3.0, 1.0, 3.0), (0.001, 0.02, 0.02), (0.3, 0.3, 0.3)):
        for method, after in ((code, code_after), (paper, paper_after)):
            set_tau(method, tau)
            method.after_step()
            assert float(method.tau.detach()) == pytest.approx(after, rel=1e-6)


def test_code_trains_log_one_over_tau_at_lr_tau_stepped_down_below_003():
    code = FastCLIP({"variant": "code", "tau_init": 0.07, "lr_tau": 0.02}, 4)
    assert code.parameters() == [code.tau_param]
    assert code.tau_param.item() == pytest.approx(-math.log(0.07))
    assert code.parameters_lr(1e-3) == code.parameters_lr(5.0) == 0.02
    set_tau(code, 0.03)
    assert code.parameters_lr(1e-3) == pytest.approx(0.02 / 3)
    paper = FastCLIP({}, 4)
    assert paper.parameters_lr(1e-3) == 1e-3 and paper.tau is paper.tau_param


def test_code_state_round_trips_its_log_one_over_tau_in_place():
    method = FastCLIP({"variant": "code"}, 6)
    method.loss(Features(unit(3, 2, 0).float(), unit(3, 2, 1).float()), None, torch.tensor([0, 2, 4]), Progress(0, 0.0))
    set_tau(method, 0.042)
    other = FastCLIP({"variant": "code"}, 6)
    param = other.tau_param
    other.load_state_dict(method.state_dict())
    assert set(method.state_dict()) == {"log_inv_tau", "u_img", "u_txt"}
    assert other.tau_param is param and torch.equal(other.tau_param, method.tau_param)
    torch.testing.assert_close(other.u_img.u, method.u_img.u, equal_nan=True)


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_the_training_loop_steps_tau_at_the_methods_learning_rate(tmp_path, variant):
    # AdamW's first step moves a parameter by its lr times g / (|g| + eps): by the lr itself, up to 1e-6.
    pool = build_pool(PoolConfig(sources=("shapes",), shapes_count=64, noise=0.2))
    cfg = TrainConfig(batch_size=32, lr=1e-3, warmup_steps=2)
    method = FastCLIP({"variant": variant, **({"lr_tau": 0.02} if variant == "code" else {})}, pool.num_indices)
    before = method.tau_param.item()
    torch.manual_seed(0)
    train(build_model("tiny-s"), method, pool, 32, cfg, 0, tmp_path, show_progress=False)
    step_lr = 0.02 if variant == "code" else 1e-3 / 2  # paper: the model's warmup lr at step 0
    assert abs(method.tau_param.item() - before) == pytest.approx(step_lr, rel=1e-4)


def test_code_weighs_kd_by_a_detached_tau():
    img, txt, rimg, rtxt = (unit(5, 4, k) for k in range(4))
    lam, t_scale = 0.4, 30.0
    params = {"variant": "code", "tau_init": 0.25}
    plain, distilled = FastCLIP(params, 5), FastCLIPKD({**params, "lam": lam, "t_scale": t_scale}, 5)
    tau = float(plain.tau.detach())
    grad = d_loss_d_tau(distilled, img, txt, Features(rimg, rtxt)) - d_loss_d_tau(plain, img, txt)

    def kd(t: float) -> float:
        return float(distillation_loss(Features(img, txt), Features(rimg, rtxt), 1 / t, t_scale))

    h = 1e-6  # tau's gradient of lam * sg(tau) * KD(s / tau): only through the student's logits
    assert grad == pytest.approx(lam * tau * (kd(tau + h) - kd(tau - h)) / (2 * h), rel=1e-4)


@pytest.mark.parametrize("cls", VARIANT_METHODS)
def test_an_unknown_variant_is_refused(cls):
    with pytest.raises(ValueError, match=f"method '{cls.name}': variant must be 'paper' .* or 'code' .*, "
                                         "got 'official'"):
        cls({"variant": "official"}, 4)
    with pytest.raises(ValueError, match="parameter 'variant' must be str"):
        cls({"variant": 1}, 4)


@pytest.mark.parametrize("params, message", [
    ({"lr_tau": 0.01}, "lr_tau applies to variant 'code' only"),
    ({"variant": "code", "lr_tau": -1.0}, "lr_tau must be finite and >= 0"),
    ({"variant": "code", "tau_init": 2.0}, "tau_init must be <= 1.0 with variant 'code'"),
])
def test_fastclip_code_settings_are_checked(params, message):
    for cls in (FastCLIP, FastCLIPKD):
        with pytest.raises(ValueError, match=message):
            cls(params, 4)


@pytest.mark.parametrize("cls", VARIANT_METHODS)
def test_the_added_parameters_name_a_run_only_away_from_their_defaults(cls):
    earlier = set(cls.defaults) - cls.added_params  # the parameters runs had before `variant`
    assert identity_params(cls, cls({}, 4).params).keys() == earlier
    assert identity_params(cls, cls({"variant": "paper"}, 4).params).keys() == earlier
    assert identity_params(cls, cls({"variant": "code"}, 4).params).keys() == earlier | {"variant"}
    assert "variant" in cls.added_params and cls.defaults["variant"] == "paper"
