"""Steering overhead per step: methods that read a reference (drrho cached and on the fly; jest and rho_topk,
which score a super-batch) and fastclip, each against clip, all through harness.run.train() on tiny-s."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.fixtures import demo_pool, demo_train, harness_train, references
from benchmarks.timing import Goal, GroupResult, Result, Settings, interleave, ratio, seconds
from harness.run.train import batch_positions, random_shift
from methods import Features, get_method

LABELS = {"clip": "clip", "drrho_cached": "drrho, cached reference", "drrho_online": "drrho, on-the-fly reference",
          "fastclip": "fastclip", "jest": "jest, cached reference", "rho_topk": "rho_topk, cached reference"}


class TimedReference:
    """A feature source that passes every call on to `source` and times its batch() calls: the reference's
    forward pass where it runs, inside the training loop."""

    def __init__(self, source: Any) -> None:
        self.source, self.seconds = source, []

    def batch(self, pool: Any, pos: torch.Tensor, images: torch.Tensor) -> Features:
        """The source's features of the batch, timed."""
        start = time.perf_counter()
        feats = self.source.batch(pool, pos, images)
        self.seconds.append(time.perf_counter() - start)
        return feats

    def pool(self, pool: Any) -> Features:
        """The source's features of the whole pool (untimed)."""
        return self.source.pool(pool)


def run(settings: Settings, out: Path) -> GroupResult:
    """Interleave one training call per method (and the reference's forward pass alone) per round."""
    pool, cfg = demo_pool(), demo_train()
    refs = references(pool)
    timed = TimedReference(refs.online)
    batches = [(pos, random_shift(pool.images[pos], 0, step))
               for step in range(5) for pos in [batch_positions(step, len(pool), cfg.batch_size, seed=0)]]

    def forward() -> float:
        return statistics.median([seconds(lambda: refs.online.batch(pool, pos, images)) for pos, images in batches])

    def online() -> tuple[float, float]:
        timed.seconds.clear()
        step = harness_train("drrho", pool, settings.steps, settings.skip, cfg, reference=timed).step_s
        return step, statistics.median(timed.seconds[settings.skip:])

    def step(method: str, reference: Any = None):
        return lambda: harness_train(method, pool, settings.steps, settings.skip, cfg, reference=reference).step_s

    t = interleave({"clip": step("clip"), "drrho_cached": step("drrho", refs.cached), "drrho_online": online,
                    "fastclip": step("fastclip"), "jest": step("jest", refs.cached),
                    "rho_topk": step("rho_topk", refs.cached), "reference_forward": forward},
                   settings.rounds, settings.warmup_rounds)
    t["drrho_online"], in_loop = [s for s, _ in t["drrho_online"]], [f for _, f in t["drrho_online"]]
    extra = [on - clip for on, clip in zip(t["drrho_online"], t["clip"])]
    steered = [on - cached for on, cached in zip(t["drrho_online"], t["drrho_cached"])]
    drawn = {m: get_method(m)({}, num_indices=1).candidates(cfg.batch_size) for m in ("jest", "rho_topk")}
    result = GroupResult(measurements=[Result(f"harness step, {label} (tiny-s, b{cfg.batch_size})", "s", t[name])
                                       for name, label in LABELS.items()])
    result.measurements += [
        Result(f"reference forward pass inside the loop (drrho on the fly: OnlineReference.batch timed per step, "
               f"tiny-s, {cfg.batch_size} augmented pairs)", "s", in_loop),
        Result(f"reference forward pass alone (OnlineReference.batch back to back, tiny-s, {cfg.batch_size} augmented "
               "pairs; median of 5 batches)", "s", t["reference_forward"]),
        Result("drrho on the fly: extra seconds per step over clip", "s", extra),
        Result(f"building the cached feature table of the pool ({len(pool):,} pairs, tiny-s reference, once)", "s",
               [refs.cache_build_s]),
    ]
    per_sample = "time per trained sample (both train {b} per step; {m} draws and scores {d})"
    on_goal = "the extra time of an on-the-fly reference is at most its forward pass"
    result.ratios = [
        ratio("drrho (cached reference) / clip, per step", ("drrho_cached", t["drrho_cached"]), ("clip", t["clip"]),
              Goal("<=", 1.05)),
        ratio("drrho on the fly: (drrho - clip) / reference forward pass inside the loop",
              ("drrho_online - clip", extra), ("reference forward in the loop", in_loop), Goal("<=", 1.0), on_goal),
        ratio("drrho on the fly: (drrho - clip) / reference forward pass alone", ("drrho_online - clip", extra),
              ("reference_forward alone", t["reference_forward"]), Goal("<=", 1.0),
              on_goal + "; the forward alone runs back to back with warm caches, so it is the optimistic measure"),
        ratio("drrho on the fly: (drrho online - drrho cached) / reference forward pass inside the loop",
              ("drrho_online - drrho_cached", steered), ("reference forward in the loop", in_loop),
              note="the part of the extra time due to the reference alone"),
        ratio("drrho (on-the-fly reference) / clip, per step", ("drrho_online", t["drrho_online"]), ("clip", t["clip"])),
        ratio("fastclip / clip, per step", ("fastclip", t["fastclip"]), ("clip", t["clip"])),
        *[ratio(f"{m} / clip, {per_sample.format(b=cfg.batch_size, m=m, d=d)}", (m, t[m]), ("clip", t["clip"]),
                note="cached reference features; the extra time is the learner's no-gradient scoring pass")
          for m, d in drawn.items()],
    ]
    result.notes.append(
        f"Steering: every method trains through harness.run.train() (demo settings: b{cfg.batch_size}, augment on), "
        f"{settings.steps} steps per call, the first {settings.skip} left out; rounds interleave clip, drrho (cached), "
        "drrho (on the fly), fastclip, jest, rho_topk and the reference's forward pass alone. Inside the loop the "
        "on-the-fly reference is wrapped (benchmarks.steering.TimedReference) so each of its forward passes is "
        "timed where it runs. The reference is a freshly initialised tiny-s saved as a checkpoint and loaded by "
        "harness.run.reference.CheckpointReference.load; its cached table is built with harness.run.features.pool_features, as "
        "harness.run.refcache does.")
    return result
