"""Reference diagnostics of a finished run: the reference's own zero-shot scores (for the weak-to-strong
gain), the spread of the per-sample reducible loss l(w) - l(w_ref) on a fixed held-out set, and the
weak-to-strong misfit on each zero-shot classification task (Charikar et al. 2024: a strong model trained
on a weak model's labels gains at least its misfit, its error measured against the weak model's labels).

DRRho's theory ties the gain of training with a reference to the variance of the reducible loss, not to
the reference's accuracy. The held-out set is a pool like the training pool (same sources, caption
noise and seed) drawn from the sources' test images: HELDOUT_SIZE pairs picked by a fixed seed, scored
in fixed consecutive batches of HELDOUT_BATCH, so every run and reference sees the same contrastive
batches and their per-sample losses are comparable.

A shard-set pool has no test images to draw that set from: its runs record the reference's scores
and a reducible loss of NaN with the reason ("skipped"), and say so on stderr.
"""
from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Any

import torch

from harness.data.build import build_pool
from harness.data.pool import ImageTextPool, PoolConfig
from harness.eval.evaluate import class_logits, evaluate
from harness.models import BuiltModel, encode
from harness.run.reference import Reference
from methods.selection import per_sample_clip_loss

HELDOUT_SIZE = 1024
HELDOUT_BATCH = 256
HELDOUT_SEED = 12345


@functools.lru_cache(maxsize=2)
def heldout_pool(cfg: PoolConfig, size: int = HELDOUT_SIZE) -> ImageTextPool:
    """`size` pairs (all, if fewer) of the test-image pool of `cfg`, chosen by a fixed seed (the same for every run)."""
    pool = build_pool(cfg, split="test")
    if len(pool) <= size:
        return pool
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(HELDOUT_SEED))[:size]
    keep = torch.zeros(len(pool), dtype=torch.bool)
    keep[pick] = True
    return pool.subset(keep)


@torch.no_grad()
def per_sample_loss(built: BuiltModel, pool: ImageTextPool, device: str, batch: int = HELDOUT_BATCH) -> torch.Tensor:
    """Symmetric contrastive loss of each pair within consecutive batches of `batch`, at the model's own
    temperature (methods.selection.per_sample_clip_loss, as the selection methods score); float64 [N]."""
    was_training = built.model.training
    built.model.eval()
    tokens = pool.tokenize(built.tokenizer)
    out = []
    for start in range(0, len(pool), batch):
        rows = slice(start, start + batch)
        feats = encode(built, pool.images[rows], tokens[pool.caption_ids[rows]], device)
        out.append(per_sample_clip_loss(feats).double().cpu())
    built.model.train(was_training)
    return torch.cat(out)


def reducible_loss(built: BuiltModel, reference: BuiltModel, pool: ImageTextPool, device: str) -> dict[str, Any]:
    """Mean, variance (population) and size of l(w, z) - l(w_ref, z) over the held-out pairs z."""
    diff = per_sample_loss(built, pool, device) - per_sample_loss(reference, pool, device)
    return {"n": len(diff), "batch": HELDOUT_BATCH, "mean": float(diff.mean()), "var": float(diff.var(unbiased=False))}


def reference_scores(ref: Reference, reference: BuiltModel, tasks: list[str], results: Path,
                     device: str) -> dict[str, Any]:
    """The reference's zero-shot scores on `tasks`: the sweep's stored evaluation of it (a reference run's)
    when that evaluated every one of them (same suite), else computed here."""
    scores = ref.stored_scores(results)
    if scores is not None and set(tasks) <= set(scores["tasks"]):
        return scores
    return evaluate(reference, tasks, device=device)


def misfit(learner: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """From each model's class logits [images, classes] at its own logit scale (its own softmax over the
    class-prompt similarities): the mean over images of -sum_c p_ref(c) log p_learner(c), and the fraction
    of images whose argmax classes differ."""
    p_ref = reference.double().softmax(-1)
    cross_entropy = -(p_ref * learner.double().log_softmax(-1)).sum(-1).mean()
    disagreement = (learner.argmax(-1) != reference.argmax(-1)).double().mean()
    return {"cross_entropy": float(cross_entropy), "disagreement": float(disagreement)}


def task_misfits(built: BuiltModel, reference: BuiltModel, tasks: list[str],
                 device: str) -> dict[str, dict[str, float]]:
    """The misfit of `built` against `reference` on each zero-shot classification task among `tasks`."""
    ref_logits = class_logits(reference, tasks, device)
    return {t: misfit(x, ref_logits[t]) for t, x in class_logits(built, tasks, device).items()}


def reference_diagnostics(built: BuiltModel, reference: BuiltModel, ref: Reference, data: PoolConfig,
                          tasks: list[str], results: Path, device: str) -> dict[str, Any]:
    """What result.json records about a run's reference: its scores on the run's tasks, the reducible loss
    and the misfit per classification task."""
    scores = reference_scores(ref, reference, tasks, results, device)
    if data.shards is None:
        reducible = reducible_loss(built, reference, heldout_pool(data), device)
    else:
        why = f"the shard-set pool {data.shards} has no held-out test images"
        print(f"reference diagnostics: no reducible loss: {why}", file=sys.stderr)
        reducible = {"n": 0, "batch": HELDOUT_BATCH, "mean": math.nan, "var": math.nan, "skipped": why}
    return {"eval": {"average": sum(scores["tasks"][t]["main_metric"] for t in tasks) / len(tasks),
                     "tasks": {t: scores["tasks"][t]["main_metric"] for t in tasks}},
            "reducible_loss": reducible, "misfit": task_misfits(built, reference, tasks, device)}
