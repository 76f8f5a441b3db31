"""Selection methods: what they pick, against brute-force formulas and sampling statistics."""
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from methods import Features, Progress, get_method
from methods.jest import sample_proportional


def feats(n, d, seed, scale=10.0):
    g = torch.Generator().manual_seed(seed)
    return Features(F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1),
                    F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1),
                    torch.tensor(scale, dtype=torch.float64))


def brute_conditional_loss(f, i, chosen):
    """JEST's conditional loss of candidate i given the chosen set, one scalar at a time."""
    a = lambda p, q: float(f.logit_scale * f.image[p] @ f.text[q])  # noqa: E731
    if not chosen:
        return -a(i, i)
    members = [i, *chosen]
    row = math.log(sum(math.exp(a(i, j)) for j in members))
    col = math.log(sum(math.exp(a(j, i)) for j in members))
    return -a(i, i) + 0.5 * (row + col)


def brute_jest_topk(learner, ref, batch, chunks):
    chosen = []
    sizes = [batch // chunks + (c < batch % chunks) for c in range(chunks)]
    for size in sizes:
        rest = [i for i in range(len(learner.image)) if i not in chosen]
        score = {i: brute_conditional_loss(learner, i, chosen) - brute_conditional_loss(ref, i, chosen) for i in rest}
        chosen += sorted(rest, key=lambda i: -score[i])[:size]
    return chosen


@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_jest_topk_picks_exactly_the_top_conditional_learnability(chunks):
    learner, ref = feats(20, 6, 0), feats(20, 6, 1, scale=5.0)
    method = get_method("jest_topk")({"keep": 0.4, "chunks": chunks}, 20)
    assert method.candidates(8) == 20
    got = method.select(learner, ref, torch.arange(20), Progress(0, 0.0), torch.Generator(), 8)
    assert got.tolist() == brute_jest_topk(learner, ref, 8, chunks)


def test_jest_sampling_frequencies_follow_exp_score():
    scores = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_proportional(scores, 1, g) for _ in range(20000)]).flatten()
    observed = torch.bincount(draws, minlength=5).double()
    expected = torch.softmax(scores.double(), 0) * len(draws)
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > 0.01
    # the most learnable candidate is drawn most: p = e^2 / (1 + e + e^-1 + e^2 + e^0.5) = 0.5630
    assert observed.argmax() == 3 and abs(observed[3] / len(draws) - 0.5630) < 0.015


def test_jest_first_chunk_samples_by_positive_pair_learnability():
    learner, ref = feats(6, 4, 2), feats(6, 4, 3)
    method = get_method("jest")({"keep": 1 / 6, "chunks": 1}, 6)
    g = torch.Generator().manual_seed(1)
    picks = torch.cat([method.select(learner, ref, torch.arange(6), Progress(0, 0.0), g, 1) for _ in range(12000)])
    score = -(learner.logit_scale * (learner.image * learner.text).sum(1)) + ref.logit_scale * (ref.image * ref.text).sum(1)
    expected = torch.softmax(score, 0) * len(picks)
    assert chisquare(torch.bincount(picks, minlength=6).double().numpy(), expected.numpy()).pvalue > 0.01


def test_rho_topk_selects_the_largest_reducible_losses():
    learner, ref = feats(10, 5, 4), feats(10, 5, 5, scale=20.0)

    def loss(f, i):
        logits = (f.logit_scale * f.image @ f.text.T).tolist()
        row = -logits[i][i] + math.log(sum(math.exp(x) for x in logits[i]))
        col = -logits[i][i] + math.log(sum(math.exp(logits[j][i]) for j in range(10)))
        return 0.5 * (row + col)

    reducible = [loss(learner, i) - loss(ref, i) for i in range(10)]
    expected = sorted(range(10), key=lambda i: -reducible[i])[:4]
    got = get_method("rho_topk")({"keep": 0.4}, 10).select(learner, ref, torch.arange(10), Progress(0, 0.0), torch.Generator(), 4)
    assert got.tolist() == expected


@pytest.mark.parametrize("name", ["rho_topk", "jest", "jest_topk"])
@pytest.mark.parametrize("keep", [0.2, 0.3, 1 / 3, 0.5])
def test_keep_fraction_is_respected_exactly(name, keep):
    method = get_method(name)({"keep": keep}, 1000)
    n = method.candidates(64)
    assert n == round(64 / keep)
    learner, ref = feats(n, 4, 6), feats(n, 4, 7)
    got = method.select(learner, ref, torch.arange(n), Progress(0, 0.0), torch.Generator().manual_seed(0), 64)
    assert len(got) == 64 and len(set(got.tolist())) == 64 and 0 <= got.min() and got.max() < n


@pytest.mark.parametrize("name", ["random", "filter"])
@pytest.mark.parametrize("n, keep, kept", [(1000, 0.3, 300), (10, 0.25, 2), (7, 0.5, 4), (5, 1.0, 5), (3, 0.01, 1)])
def test_static_keep_fraction_is_respected_exactly(name, n, keep, kept):
    method = get_method(name)({"keep": keep}, n)
    assert method.candidates(64) == 64  # no super-batch: the subset is chosen once
    got = method.select_pool(feats(n, 4, 2), torch.arange(n), torch.Generator().manual_seed(0))
    assert len(got) == kept == round(keep * n) or (kept == 1 and round(keep * n) == 0)
    assert len(set(got.tolist())) == kept and 0 <= got.min() and got.max() < n


def test_filter_keeps_the_top_reference_similarities():
    # hand-built reference features: pair i has cosine similarity cos(angle_i) between image and text
    angles = torch.tensor([1.2, 0.1, 0.9, 0.3, 1.5, 0.0, 0.6, 1.0], dtype=torch.float64)
    image = torch.stack([torch.ones_like(angles), torch.zeros_like(angles)], dim=1)
    text = torch.stack([angles.cos(), angles.sin()], dim=1)
    ref = Features(image, text, torch.tensor(100.0))
    got = get_method("filter")({"keep": 0.375}, 8).select_pool(ref, torch.arange(8), torch.Generator())
    assert sorted(got.tolist()) == [1, 3, 5]  # the three smallest angles: 0.0, 0.1, 0.3


def test_filter_needs_the_pool_features():
    with pytest.raises(ValueError, match="needs the reference's features of the pool"):
        get_method("filter")({}, 4).select_pool(None, torch.arange(4), torch.Generator())


def test_random_subset_is_uniform():
    method = get_method("random")({"keep": 0.25}, 8)
    g = torch.Generator().manual_seed(3)
    counts = torch.zeros(8)
    for _ in range(4000):
        counts[method.select_pool(None, torch.arange(8), g)] += 1
    assert chisquare(counts.numpy()).pvalue > 0.01


@pytest.mark.parametrize("params, message", [
    ({"keep": 0.0}, "keep must be in \\(0, 1\\]"), ({"keep": 1.5}, "keep must be in"), ({"chunks": 0}, "chunks must be >= 1"),
])
def test_bad_selection_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        get_method("jest")(params, 4)
