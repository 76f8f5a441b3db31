"""fastclip, kd, fastclip_kd and drrho_kd against brute-force loops, their parents and autograd."""
import math

import pytest
import torch
import torch.nn.functional as F
from brute_force import brute_fastclip

import methods
from methods import Features, Progress, get_method, needs_reference
from methods.drrho import DRRho, drrho_objective
from methods.drrho_kd import DRRhoKD
from methods.fastclip import FastCLIP, fastclip_objective
from methods.fastclip_kd import FastCLIPKD
from methods.kd import KD, distillation_loss


def unit(b: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)


def brute_kd(img, txt, rimg, rtxt, student_scale, teacher_scale):
    """Symmetric cross-entropy of the teacher's batch softmax to the student's, rows and columns."""
    b = img.shape[0]
    s = [[student_scale * float(img[i] @ txt[j]) for j in range(b)] for i in range(b)]
    t = [[teacher_scale * float(rimg[i] @ rtxt[j]) for j in range(b)] for i in range(b)]

    def cross_entropy(teacher_row, student_row):
        t_norm = math.log(sum(math.exp(x) for x in teacher_row))
        s_norm = math.log(sum(math.exp(x) for x in student_row))
        return -sum(math.exp(tx - t_norm) * (sx - s_norm) for tx, sx in zip(teacher_row, student_row))

    rows = sum(cross_entropy(t[i], s[i]) for i in range(b)) / b
    cols = sum(cross_entropy([t[i][j] for i in range(b)], [s[i][j] for i in range(b)]) for j in range(b)) / b
    return (rows + cols) / 2


def raw_pair(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g).requires_grad_(), torch.randn(b, d, generator=g).requires_grad_()


def normalised(raw: tuple[torch.Tensor, torch.Tensor], logit_scale: torch.Tensor | None = None) -> Features:
    return Features(F.normalize(raw[0], dim=-1), F.normalize(raw[1], dim=-1), logit_scale)


def run_two_steps(method, raws, ref, extra=()):
    """Loss values and gradients (raw features and `extra`) of a first-epoch step and a gamma < 1 step."""
    values, grads = [], []
    for raw, epoch in zip(raws, (0.0, 3.0)):
        out = method.loss(normalised(raw), ref, torch.arange(2, 2 + raw[0].shape[0]), Progress(0, epoch))
        values.append(out.loss.detach())
        grads.append(torch.autograd.grad(out.loss, (*raw, *extra)))
    return values, grads


def assert_same_run(a, b):
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    for step_a, step_b in zip(a[1], b[1]):
        for x, y in zip(step_a, step_b):
            assert torch.equal(x, y)


# ---- fastclip ----

@pytest.mark.parametrize("tau, rho", [(0.05, 11.0), (0.5, 0.0), (0.01, 6.5)])
def test_fastclip_objective_matches_brute_force(tau, rho):
    img, txt = unit(6, 5, 0), unit(6, 5, 1)
    got = fastclip_objective(img, txt, tau=tau, eps=1e-14, rho=rho)
    assert float(got) == pytest.approx(brute_fastclip(img, txt, tau, 1e-14, rho), rel=1e-10)


def test_constant_reference_drrho_equals_fastclip_without_the_rho_term():
    img, txt = unit(7, 4, 5), unit(7, 4, 6)
    same = F.normalize(torch.ones(7, 4, dtype=torch.float64), dim=-1)  # every r_ij = 1
    fast = fastclip_objective(img, txt, tau=0.1, eps=1e-4, rho=11.0)
    drrho = drrho_objective(img, txt, same, same, tau=0.1, eps=1e-4)
    assert float(drrho) == pytest.approx(float(fast) - 2 * 11.0 * 0.1, rel=1e-12)


def test_fastclip_gradients_equal_objective_gradients_when_gamma_is_one():
    raw = raw_pair(8, 6, 0)
    method = FastCLIP({"tau_init": 0.05}, num_indices=20)
    out = method.loss(normalised(raw), None, torch.arange(3, 11), Progress(0, 0.4))
    got = torch.autograd.grad(out.loss, (*raw, method.tau))

    tau = torch.tensor(0.05, requires_grad=True)
    objective = fastclip_objective(F.normalize(raw[0], dim=-1), F.normalize(raw[1], dim=-1), tau=tau)
    expected = torch.autograd.grad(objective, (*raw, tau))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert out.logs["objective"] == pytest.approx(float(objective.detach()), rel=1e-6)
    assert out.logs["tau"] == pytest.approx(0.05)


def test_fastclip_tau_gradient_uses_the_moving_average():
    # After the first epoch (gamma = 0.5) the tau gradient is the FCCO estimate with u, not the objective's.
    img1, txt1, img2 = unit(5, 3, 1).float(), unit(5, 3, 2).float(), unit(5, 3, 3).float()
    method = FastCLIP({"tau_init": 0.2, "rho": 3.0, "eps": 1e-4, "gamma_min": 0.5, "gamma_decay_epochs": 0.0}, 5)
    idx = torch.arange(5)
    method.loss(Features(img1, txt1), None, idx, Progress(0, 0.0))
    out = method.loss(Features(img2, txt1), None, idx, Progress(1, 2.0))
    (grad_tau,) = torch.autograd.grad(out.loss, method.tau)

    sim, u_img, u_txt = (img2 @ txt1.T).tolist(), method.u_img.u.tolist(), method.u_txt.u.tolist()
    tau, b = 0.2, 5
    expected = 2 * 3.0
    for i in range(b):
        for u, d in ((u_img[i], [(sim[i][j] - sim[i][i]) / tau for j in range(b) if j != i]),
                     (u_txt[i], [(sim[j][i] - sim[i][i]) / tau for j in range(b) if j != i])):
            expected += (u - sum(math.exp(x - u) * x for x in d) / (b - 1)) / b
    assert float(grad_tau) == pytest.approx(expected, rel=1e-5)
    log_g = math.log(1e-4 + sum(math.exp((sim[0][j] - sim[0][0]) / tau) for j in range(1, b)) / (b - 1))
    assert u_img[0] != pytest.approx(log_g, rel=1e-3)  # the estimate really lags the batch value


def test_fastclip_tau_is_trained_and_clamped():
    method = FastCLIP({"tau_init": 0.02, "tau_min": 0.015}, 4)
    opt = torch.optim.AdamW(method.parameters(), lr=0.1, weight_decay=0.0)
    assert method.parameters() == [method.tau] and method.tau.requires_grad
    img, txt = unit(4, 3, 0).float(), unit(4, 3, 1).float()
    out = method.loss(Features(img, txt), None, torch.arange(4), Progress(0, 0.0))
    out.loss.backward()
    opt.step()
    assert method.tau.item() != pytest.approx(0.02)
    with torch.no_grad():
        method.tau.fill_(0.001)
    method.after_step()
    assert method.tau.item() == pytest.approx(0.015)
    with torch.no_grad():
        method.tau.fill_(0.3)
    method.after_step()
    assert method.tau.item() == pytest.approx(0.3)


def test_fastclip_state_round_trips_in_place():
    method = FastCLIP({}, 6)
    img, txt = unit(3, 2, 0).float(), unit(3, 2, 1).float()
    method.loss(Features(img, txt), None, torch.tensor([0, 2, 4]), Progress(0, 0.0))
    with torch.no_grad():
        method.tau.fill_(0.042)
    other = FastCLIP({}, 6)
    tau_param = other.tau
    other.load_state_dict(method.state_dict())
    assert other.tau is tau_param and other.parameters() == [tau_param]  # the optimizer's reference stays valid
    assert other.tau.item() == pytest.approx(0.042)
    torch.testing.assert_close(other.u_img.u, method.u_img.u, equal_nan=True)
    torch.testing.assert_close(other.u_txt.u, method.u_txt.u, equal_nan=True)
    assert set(method.state_dict()) == {"tau", "u_img", "u_txt"}


# ---- the distillation term and kd ----

@pytest.mark.parametrize("student_scale, teacher_scale", [(10.0, 100.0), (1 / 0.07, 5.0)])
def test_distillation_loss_matches_brute_force(student_scale, teacher_scale):
    img, txt, rimg, rtxt = (unit(5, 4, k) for k in range(4))
    got = distillation_loss(Features(img, txt), Features(rimg, rtxt), student_scale, teacher_scale)
    assert float(got) == pytest.approx(brute_kd(img, txt, rimg, rtxt, student_scale, teacher_scale), rel=1e-10)


def test_kd_with_lam_zero_is_clip_exactly():
    raw, scale = raw_pair(6, 4, 1), torch.tensor(14.0, requires_grad=True)
    ref = Features(unit(6, 4, 7).float(), unit(6, 4, 8).float())
    results = []
    for method in (get_method("clip")({}, 6), KD({"lam": 0.0}, 6)):
        out = method.loss(normalised(raw, scale), ref, torch.arange(6), Progress(0, 0.0))
        results.append((out.loss.detach(), torch.autograd.grad(out.loss, (*raw, scale))))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.equal(a, b)


def test_kd_mixes_clip_and_distillation():
    img, txt, rimg, rtxt = (unit(5, 4, k) for k in range(4))
    scale = torch.tensor(10.0, dtype=torch.float64)
    feats, ref = Features(img, txt, scale), Features(rimg, rtxt)
    clip = float(get_method("clip")({}, 5).loss(feats, None, torch.arange(5), Progress(0, 0.0)).loss)
    out = KD({"lam": 0.3, "t_scale": 50.0}, 5).loss(feats, ref, torch.arange(5), Progress(0, 0.0))
    kd = brute_kd(img, txt, rimg, rtxt, 10.0, 50.0)
    assert float(out.loss) == pytest.approx(0.7 * clip + 0.3 * kd, rel=1e-10)
    assert out.logs["distill_loss"] == pytest.approx(kd, rel=1e-10)


# ---- drrho_kd and fastclip_kd ----

def test_drrho_kd_with_lam_zero_is_drrho_exactly():
    raws = (raw_pair(6, 4, 2), raw_pair(6, 4, 3))
    ref = Features(unit(6, 4, 7).float(), unit(6, 4, 8).float())
    params = {"tau": 0.05, "gamma_min": 0.5, "gamma_decay_epochs": 0.0}
    plain, distilled = DRRho(params, 10), DRRhoKD({**params, "lam": 0.0}, 10)
    assert_same_run(run_two_steps(plain, raws, ref), run_two_steps(distilled, raws, ref))
    torch.testing.assert_close(plain.u_img.u, distilled.u_img.u, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(plain.u_txt.u, distilled.u_txt.u, rtol=0, atol=0, equal_nan=True)


def test_drrho_kd_adds_lam_tau_kd():
    img, txt, rimg, rtxt = (unit(5, 4, k) for k in range(4))
    feats, ref = Features(img, txt), Features(rimg, rtxt)
    plain = DRRho({"tau": 0.1}, 5).loss(feats, ref, torch.arange(5), Progress(0, 0.0))
    out = DRRhoKD({"tau": 0.1, "lam": 0.4, "t_scale": 30.0}, 5).loss(feats, ref, torch.arange(5), Progress(0, 0.0))
    kd = brute_kd(img, txt, rimg, rtxt, 1 / 0.1, 30.0)
    assert float(out.loss) == pytest.approx(float(plain.loss) + 0.4 * 0.1 * kd, rel=1e-10)
    assert out.logs["objective"] == plain.logs["objective"]
    assert out.logs["distill_loss"] == pytest.approx(kd, rel=1e-10)


def test_fastclip_kd_with_lam_zero_is_fastclip_exactly():
    raws = (raw_pair(6, 4, 4), raw_pair(6, 4, 5))
    ref = Features(unit(6, 4, 7).float(), unit(6, 4, 8).float())
    params = {"tau_init": 0.05, "gamma_min": 0.5, "gamma_decay_epochs": 0.0}
    plain, distilled = FastCLIP(params, 10), FastCLIPKD({**params, "lam": 0.0}, 10)
    assert_same_run(run_two_steps(plain, raws, None, (plain.tau,)),
                    run_two_steps(distilled, raws, ref, (distilled.tau,)))
    torch.testing.assert_close(plain.u_img.u, distilled.u_img.u, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(plain.u_txt.u, distilled.u_txt.u, rtol=0, atol=0, equal_nan=True)


def test_fastclip_kd_adds_lam_tau_kd_with_its_tau_gradient():
    img, txt, rimg, rtxt = (unit(5, 4, k) for k in range(4))
    feats, ref = Features(img, txt), Features(rimg, rtxt)
    lam, t_scale, tau = 0.4, 30.0, 0.25
    plain = FastCLIP({"tau_init": tau}, 5)
    distilled = FastCLIPKD({"tau_init": tau, "lam": lam, "t_scale": t_scale}, 5)
    out_plain = plain.loss(feats, None, torch.arange(5), Progress(0, 0.0))
    out = distilled.loss(feats, ref, torch.arange(5), Progress(0, 0.0))
    (g_plain,) = torch.autograd.grad(out_plain.loss, plain.tau)
    (g_kd,) = torch.autograd.grad(out.loss, distilled.tau)

    def term(t):
        return lam * t * brute_kd(img, txt, rimg, rtxt, 1 / t, t_scale)

    assert out.loss.item() == pytest.approx(out_plain.loss.item() + term(tau), rel=1e-6)
    h = 1e-6
    assert float(g_kd - g_plain) == pytest.approx((term(tau + h) - term(tau - h)) / (2 * h), rel=1e-4)


# ---- interface ----

def test_registry_and_reference_needs():
    for name, cls, needs in (("fastclip", FastCLIP, False), ("kd", KD, True),
                             ("fastclip_kd", FastCLIPKD, True), ("drrho_kd", DRRhoKD, True)):
        assert methods.REGISTRY[name] is cls and needs_reference(get_method(name)) is needs


@pytest.mark.parametrize("cls", [KD, FastCLIPKD, DRRhoKD])
def test_distilling_methods_refuse_a_missing_reference(cls):
    method = cls({}, 4)
    feats = Features(unit(4, 3, 0).float(), unit(4, 3, 1).float(), torch.tensor(10.0))
    with pytest.raises(ValueError, match=f"method '{cls.name}' needs reference features"):
        method.loss(feats, None, torch.arange(4), Progress(0, 0.0))


@pytest.mark.parametrize("cls, params, message", [
    (FastCLIP, {"tau": 0.1},
     "no parameter 'tau'; allowed: eps, gamma_decay_epochs, gamma_min, lr_tau, rho, tau_init, tau_min, variant$"),
    (FastCLIP, {"tau_init": "cold"}, "parameter 'tau_init' must be float"),
    (FastCLIP, {"tau_min": 0.0}, "tau_min must be finite and > 0"),
    (FastCLIP, {"eps": float("nan")}, "eps must be finite and > 0"),
    (FastCLIP, {"tau_init": 0.005}, "tau_init must be finite and >= tau_min"),
    (FastCLIP, {"tau_init": float("inf")}, "tau_init must be finite and >= tau_min"),
    (FastCLIP, {"rho": -1.0}, "rho must be finite and >= 0"),
    (FastCLIP, {"gamma_min": 0.0}, "gamma_min must be in \\(0, 1\\]"),
    (FastCLIP, {"gamma_decay_epochs": -2.0}, "gamma_decay_epochs must be finite and >= 0"),
    (KD, {"lam": 1.5}, "method 'kd': lam must be in \\[0, 1\\]"),
    (KD, {"lam": float("nan")}, "lam must be in \\[0, 1\\]"),
    (KD, {"t_scale": 0.0}, "method 'kd': t_scale must be finite and > 0"),
    (KD, {"tau": 0.1}, "no parameter 'tau'; allowed: lam, t_scale"),
    (FastCLIPKD, {"lam": -0.1}, "method 'fastclip_kd': lam must be in \\[0, 1\\]"),
    (FastCLIPKD, {"tau_min": -1.0}, "method 'fastclip_kd': tau_min must be finite and > 0"),
    (DRRhoKD, {"t_scale": float("inf")}, "method 'drrho_kd': t_scale must be finite and > 0"),
    (DRRhoKD, {"lam": 2}, "lam must be in \\[0, 1\\]"),
])
def test_bad_parameters_are_refused(cls, params, message):
    with pytest.raises(ValueError, match=message):
        cls(params, 4)
