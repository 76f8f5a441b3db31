"""Exact math of the methods against brute-force loops and independent formulations."""
import math

import pytest
import torch
import torch.nn.functional as F
from brute_force import brute_fastclip

import harness  # noqa: F401  (torchvision guard before open_clip)
import methods
from methods import Features, Progress, get_method
from methods.drrho import DRRho, drrho_objective
from methods.gcl import MovingLogMean, gamma_at, off_diagonal


def unit(b: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)


def brute_drrho(img, txt, rimg, rtxt, tau, eps):
    """DRRho objective written as the nested sums of METHODS.md, one scalar at a time."""
    b = img.shape[0]
    s = lambda i, j: float(img[i] @ txt[j])  # noqa: E731
    r = lambda i, j: float(rimg[i] @ rtxt[j])  # noqa: E731
    total = 0.0
    for i in range(b):
        g_img = sum(math.exp(((s(i, j) - s(i, i)) - (r(i, j) - r(i, i))) / tau) for j in range(b) if j != i) / (b - 1)
        g_txt = sum(math.exp(((s(j, i) - s(i, i)) - (r(j, i) - r(i, i))) / tau) for j in range(b) if j != i) / (b - 1)
        total += math.log(eps + g_img) + math.log(eps + g_txt)
    return tau * total / b


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_drrho_objective_matches_brute_force(tau):
    img, txt, rimg, rtxt = unit(6, 5, 0), unit(6, 5, 1), unit(6, 5, 2), unit(6, 5, 3)
    got = drrho_objective(img, txt, rimg, rtxt, tau=tau, eps=1e-4)
    assert float(got) == pytest.approx(brute_drrho(img, txt, rimg, rtxt, tau, 1e-4), rel=1e-10)


def test_drrho_objective_is_stable_at_paper_tau():
    # tau = 0.01 makes margins of +-400: a naive exp overflows, the log-space form must not.
    img, txt = unit(16, 8, 0).float(), unit(16, 8, 1).float()
    rimg, rtxt = -img, txt
    value = drrho_objective(img, txt, rimg, rtxt, tau=0.01)
    assert torch.isfinite(value)
    assert float(value) == pytest.approx(brute_drrho(img.double(), txt.double(), rimg.double(), rtxt.double(), 0.01, 1e-4), rel=1e-4)


def test_constant_reference_equals_fixed_tau_fastclip():
    img, txt = unit(7, 4, 5), unit(7, 4, 6)
    same = F.normalize(torch.ones(7, 4, dtype=torch.float64), dim=-1)  # every reference similarity r_ij = 1
    got = drrho_objective(img, txt, same, same, tau=0.1, eps=1e-4)
    assert float(got) == pytest.approx(brute_fastclip(img, txt, 0.1, 1e-4, rho=0.0), rel=1e-10)


def test_reference_equal_to_model_gives_uniform_weights():
    img, txt = unit(5, 4, 7), unit(5, 4, 8)
    # every margin is 0, so g_i = 1 and the objective is tau * 2 * log(1 + eps)
    assert float(drrho_objective(img, txt, img, txt, tau=0.01, eps=1e-4)) == pytest.approx(0.02 * math.log1p(1e-4))


def test_surrogate_gradient_equals_objective_gradient_when_gamma_is_one():
    # float32 throughout, as in training (the per-sample state is float32)
    raw_img, raw_txt = torch.randn(8, 6, requires_grad=True), torch.randn(8, 6, requires_grad=True)
    rimg, rtxt = unit(8, 6, 11).float(), unit(8, 6, 12).float()
    tau = 0.05

    method = DRRho({"tau": tau}, num_indices=100)
    out = method.loss(Features(F.normalize(raw_img, dim=-1), F.normalize(raw_txt, dim=-1)),
                      Features(rimg, rtxt), torch.arange(10, 18), Progress(step=0, epoch=0.3))
    surrogate_grads = torch.autograd.grad(out.loss, (raw_img, raw_txt))

    objective = drrho_objective(F.normalize(raw_img, dim=-1), F.normalize(raw_txt, dim=-1), rimg, rtxt, tau=tau)
    objective_grads = torch.autograd.grad(objective, (raw_img, raw_txt))
    for a, b in zip(surrogate_grads, objective_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert out.logs["objective"] == pytest.approx(float(objective.detach()), rel=1e-6)


def test_moving_average_follows_the_update_rule():
    state = MovingLogMean(4)
    idx = torch.tensor([1, 3])
    first = torch.log(torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(state.update(idx, first, gamma=0.3), first)  # never visited: the estimate itself
    second = torch.log(torch.tensor([4.0, 1.0]))
    got = state.update(idx, second, gamma=0.3)
    expected = torch.log(torch.tensor([0.7 * 2.0 + 0.3 * 4.0, 0.7 * 5.0 + 0.3 * 1.0]))
    torch.testing.assert_close(got, expected)
    assert torch.isnan(state.u[0]) and torch.isnan(state.u[2])


def test_drrho_weights_use_the_moving_average_after_the_first_epoch():
    img, txt, rimg, rtxt = (unit(4, 3, k).float() for k in range(4))
    method = DRRho({"tau": 0.5, "gamma_min": 0.5, "gamma_decay_epochs": 0.0}, num_indices=4)
    idx = torch.arange(4)
    method.loss(Features(img, txt), Features(rimg, rtxt), idx, Progress(0, 0.0))
    u_before = method.u_img.u.clone()
    img2 = unit(4, 3, 9).float()
    method.loss(Features(img2, txt), Features(rimg, rtxt), idx, Progress(1, 2.0))  # gamma = gamma_min = 0.5
    d = ((img2 @ txt.T - (img2 * txt).sum(1)[:, None]) - (rimg @ rtxt.T - (rimg * rtxt).sum(1)[:, None])) / 0.5
    est = torch.log(1e-4 + off_diagonal(d).exp().mean(1))
    torch.testing.assert_close(method.u_img.u, torch.log(0.5 * u_before.exp() + 0.5 * est.exp()))


def test_gamma_schedule():
    assert gamma_at(0.0, 0.2, 4.0) == 1.0
    assert gamma_at(0.99, 0.2, 4.0) == 1.0
    assert gamma_at(1.0, 0.2, 4.0) == pytest.approx(1.0)
    assert gamma_at(3.0, 0.2, 4.0) == pytest.approx(0.6)
    assert gamma_at(5.0, 0.2, 4.0) == pytest.approx(0.2)
    assert gamma_at(50.0, 0.2, 4.0) == pytest.approx(0.2)


def test_clip_loss_is_symmetric_cross_entropy():
    img, txt = unit(5, 4, 0), unit(5, 4, 1)
    scale = torch.tensor(10.0, dtype=torch.float64)
    out = get_method("clip")({}, 5).loss(Features(img, txt, scale), None, torch.arange(5), Progress(0, 0.0))
    logits = (scale * img @ txt.T).tolist()
    by_hand = 0.0
    for i in range(5):
        row = logits[i]
        col = [logits[j][i] for j in range(5)]
        by_hand += -row[i] + math.log(sum(map(math.exp, row))) - col[i] + math.log(sum(map(math.exp, col)))
    assert float(out.loss) == pytest.approx(by_hand / 10)


def test_state_round_trips():
    method = DRRho({}, 6)
    img, txt, rimg, rtxt = (unit(3, 2, k).float() for k in range(4))
    method.loss(Features(img, txt), Features(rimg, rtxt),
                torch.tensor([0, 2, 4]), Progress(0, 0.0))
    other = DRRho({}, 6)
    other.load_state_dict(method.state_dict())
    torch.testing.assert_close(other.u_txt.u, method.u_txt.u, equal_nan=True)


@pytest.mark.parametrize("params, message", [
    ({"taux": 0.1}, "no parameter 'taux'; allowed: eps, gamma_decay_epochs, gamma_min, tau"),
    ({"tau": "hot"}, "parameter 'tau' must be float"),
    ({"tau": 0.0}, "tau and eps must be finite and > 0"),
    ({"tau": float("nan")}, "tau and eps must be finite and > 0"),
    ({"gamma_decay_epochs": -1.0}, "gamma_decay_epochs must be finite and >= 0"),
])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        DRRho(params, 4)


def test_unknown_method_lists_registry():
    with pytest.raises(ValueError, match="registered: clip, drrho"):
        get_method("drho")
    assert set(methods.REGISTRY) >= {"clip", "drrho"}


def test_clip_loss_is_open_clips_clip_loss_bit_for_bit():
    import open_clip

    g = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(12, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(12, 8, generator=g), dim=-1)
    scale = torch.tensor(14.3)
    ours = get_method("clip")({}, 12).loss(Features(image, text, scale), None, torch.arange(12), Progress(0, 0.0))
    assert torch.equal(ours.loss, open_clip.ClipLoss()(image, text, scale))


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
@pytest.mark.parametrize("batch", [32, 100])
def test_a_method_for_accounting_draws_and_reads_as_the_method_itself(name, batch):
    # the dry run's estimate and budget stages count compute with Method.for_accounting (no per-sample state)
    cls = get_method(name)
    params = {"keep": 0.25} if "keep" in cls.defaults else {}
    real, light = cls(params, num_indices=64), cls.for_accounting(params)
    assert type(light) is cls and light.params == real.params and light.reference == real.reference
    assert light.candidates(batch) == real.candidates(batch)
