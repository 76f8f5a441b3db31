"""Tests for harness.run.diagnostics: the held-out pool, per-sample losses against open_clip's ClipLoss,
the reducible loss, and where the reference's scores come from."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import harness  # noqa: F401  (its torchvision guard must load before open_clip)
from open_clip.loss import ClipLoss  # noqa: E402

from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.data.sources import digits
from harness.eval.evaluate import evaluate
from harness.models import build_model, encode
from harness.run.diagnostics import heldout_pool, per_sample_loss, reducible_loss, reference_scores
from harness.run.reference import CheckpointReference

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
