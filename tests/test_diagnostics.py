"""Tests for harness.run.diagnostics: the held-out pool, per-sample losses against open_clip's ClipLoss,
the reducible loss, where the reference's scores come from, and the weak-to-strong misfit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from open_clip.loss import ClipLoss  # noqa: E402

import harness  # noqa: F401  (its torchvision guard must load before open_clip)
from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.data.sources import digits
from harness.eval.evaluate import class_logits, evaluate
from harness.eval.tasks import TASKS
from harness.models import build_model, encode
from harness.run.diagnostics import (
    heldout_pool,
    misfit,
    per_sample_loss,
    reducible_loss,
    reference_scores,
    task_misfits,
)
from harness.run.reference import CheckpointReference
from harness.store.records import _gain_columns

DATA = PoolConfig(sources=("digits", "shapes"), shapes_count=200, noise=0.3)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    a = build_model("tiny-s")
    torch.manual_seed(1)
    b = build_model("tiny-s")
    return a, b


def test_heldout_pool_is_a_fixed_pool_of_test_images_with_the_same_noise():
    held = heldout_pool(DATA, size=300)
    again = heldout_pool(PoolConfig(sources=("digits", "shapes"), shapes_count=200, noise=0.3), size=300)
    assert len(held) == 300 and torch.equal(held.indices, again.indices) and torch.equal(held.images, again.images)
    full = build_pool(DATA, split="test")
    assert full.noisy.double().mean().item() == pytest.approx(0.3, abs=1e-3)
    test_digits = {bytes(img) for img in digits()[1].images}
    train_digits = {bytes(img) for img in digits()[0].images}
    assert len(test_digits & train_digits) < 5  # the digits split is by sample: a few duplicate images at most
    digit_rows = held.source == held.source_names.index("digits")
    assert digit_rows.sum() > 0 and held.config == DATA


def test_per_sample_loss_averages_to_open_clips_clip_loss(models):
    built, _ = models
    pool = heldout_pool(DATA, size=300)
    losses = per_sample_loss(built, pool, "cpu", batch=128)
    assert losses.shape == (300,) and losses.dtype == torch.float64
    tokens = pool.tokenize(built.tokenizer)
    for start in (0, 128, 256):
        rows = slice(start, start + 128)
        with torch.no_grad():
            f = encode(built, pool.images[rows], tokens[pool.caption_ids[rows]], "cpu")
            expected = ClipLoss()(f.image, f.text, f.logit_scale)
        assert losses[rows].mean().item() == pytest.approx(expected.item(), rel=1e-5)


def test_reducible_loss_is_zero_against_itself_and_the_variance_of_the_differences_otherwise(models):
    a, b = models
    pool = heldout_pool(DATA, size=300)
    same = reducible_loss(a, a, pool, "cpu")
    assert same["mean"] == 0 and same["var"] == 0 and same["n"] == 300
    diff = (per_sample_loss(a, pool, "cpu") - per_sample_loss(b, pool, "cpu")).numpy()
    out = reducible_loss(a, b, pool, "cpu")
    assert out["mean"] == pytest.approx(diff.mean()) and out["var"] == pytest.approx(np.var(diff))
    assert out["var"] > 0


def test_reference_scores_of_a_checkpoint_are_evaluated_here(models, tmp_path):
    _, ref = models
    checkpoint = CheckpointReference(path="x", sha256="0", model="tiny-s")
    scores = reference_scores(checkpoint, ref, ["digits"], tmp_path, "cpu")
    assert scores["tasks"]["digits"]["main_metric"] == evaluate(ref, ["digits"])["tasks"]["digits"]["main_metric"]


def test_misfit_is_the_cross_entropy_against_the_references_softmax_and_the_disagreement_rate():
    ln3, ln4 = math.log(3), math.log(4)
    learner = torch.tensor([[0.0, ln3], [ln3 + 5, 5.0]])  # softmax (1/4, 3/4) and (3/4, 1/4)
    reference = torch.tensor([[ln3, 0.0], [ln4 - 2, -2.0]])  # softmax (3/4, 1/4) and (4/5, 1/5)
    first = 3 / 4 * ln4 + 1 / 4 * math.log(4 / 3)  # -(3/4 log 1/4 + 1/4 log 3/4)
    second = 4 / 5 * math.log(4 / 3) + 1 / 5 * ln4  # -(4/5 log 3/4 + 1/5 log 1/4)
    out = misfit(learner, reference)
    assert out["cross_entropy"] == pytest.approx((first + second) / 2)
    assert out["disagreement"] == 0.5  # the first image's argmax classes differ, the second's agree


def test_class_logits_are_at_the_models_own_scale_and_give_its_accuracy(models):
    a, _ = models
    logits = class_logits(a, ["digits", "shapes_retrieval"])
    assert list(logits) == ["digits"]  # retrieval has no class distribution
    labels = TASKS["digits"].load().labels
    acc1 = evaluate(a, ["digits"])["tasks"]["digits"]["acc1"]
    assert logits["digits"].shape == (len(labels), 10)
    assert (logits["digits"].argmax(1) == labels).double().mean().item() == pytest.approx(acc1)
    assert logits["digits"].abs().max() <= a.model.logit_scale.exp().item() + 1e-4  # scale x cosine


def test_a_model_against_itself_disagrees_nowhere_and_its_misfit_is_its_entropy(models):
    a, b = models
    same = task_misfits(a, a, ["digits", "shapes_retrieval"], "cpu")
    p = class_logits(a, ["digits"])["digits"].double().softmax(1)
    entropy = -(p * p.log()).sum(1).mean().item()
    assert list(same) == ["digits"] and same["digits"]["disagreement"] == 0
    assert same["digits"]["cross_entropy"] == pytest.approx(entropy)
    other = task_misfits(a, b, ["digits"], "cpu")["digits"]
    assert other["disagreement"] > 0 and other["cross_entropy"] > 0


def test_the_results_table_shows_the_misfit_per_task_when_the_result_has_it():
    result = {"eval": {"average": 0.5, "tasks": {"digits": {"main_metric": 0.5}}},
              "reference": {"eval": {"average": 0.25, "tasks": {"digits": 0.25}},
                            "reducible_loss": {"mean": 0.1, "var": 0.2}}}
    assert not any(k.startswith(("misfit_ce:", "disagree:")) for k in _gain_columns(result))  # an older result
    result["reference"]["misfit"] = {"digits": {"cross_entropy": 1.5, "disagreement": 0.125}}
    columns = _gain_columns(result)
    assert columns["misfit_ce:digits"] == 1.5 and columns["disagree:digits"] == 0.125 and columns["gain:digits"] == 0.25
