"""Compute accounting, in forward GFLOPs per image-text pair (torch FlopCounterMode) times pairs.

C_paper is the DRRho paper's x-axis: the trained model's forward FLOPs x samples seen. C_total
adds, in the same forward-FLOP units, what a method spends besides: the learner's no-gradient
scoring passes over super-batches (jest, rho_topk), the reference's forward passes on the fly
(every drawn sample), the reference's scoring pass over the pool (filter) and, for runs that read
a reference-feature cache, an equal share of the cache's one pass over the pool. Backward passes
are counted in neither (a training sample costs about three forwards in wall time, a scoring
sample one), as the paper counts C.
"""
from __future__ import annotations

import math
from dataclasses import replace

from harness.grid.runspec import RunSpec
from harness.profiles import model_profile
from methods import Method

PARTS = ("c_paper", "learner_scoring", "reference_forward", "pool_scoring")


def run_compute(spec: RunSpec, method: Method, pool_size: int) -> dict[str, float]:
    """GFLOPs a run spends, by part (PARTS); `pool_size` is the pool before any static selection."""
    gflops = model_profile(spec.model)["gflops"]
    batch = spec.train.batch_size
    steps = spec.samples_seen // batch
    drawn = method.candidates(batch)
    ref = spec.reference
    ref_gflops = model_profile(ref.model)["gflops"] if ref is not None else 0.0
    online = ref is not None and ref.features == "online"
    return {
        "gflops_per_pair": gflops,
        "reference_gflops_per_pair": ref_gflops,
        "c_paper": gflops * spec.samples_seen,
        "learner_scoring": gflops * steps * drawn if drawn != batch else 0.0,
        "reference_forward": ref_gflops * steps * drawn if online and method.reference == "batch" else 0.0,
        "pool_scoring": ref_gflops * pool_size if online and method.reference == "pool" else 0.0,
    }


def c_total(compute: dict[str, float], cache_share: float = 0.0) -> float:
    """C_total of a run: the sum of its parts plus its share of a reference-feature cache."""
    return sum(compute[part] for part in PARTS) + cache_share


def samples_for_c_total(target: float, spec: RunSpec, method: Method) -> int:
    """The samples seen (a multiple of the batch size, at least one batch) at which a run like `spec` spends the
    C_total nearest `target` GFLOPs (ties: fewer), counting its own parts as run_compute does (a run's C_total
    is linear in its steps). A share of a reference-feature cache is left out: that pass is paid once, whatever
    the budgets. ValueError for a method that scores its pool on the fly (a fixed cost of the pool's size)."""
    batch = spec.train.batch_size
    if run_compute(spec, method, 1)["pool_scoring"]:
        raise ValueError(f"method {method.name!r} scores the whole pool with an on-the-fly reference, a cost of the "
                         "pool's size that the budget cannot be resolved without: read the reference's features "
                         "cached ('features: cached')")
    per_step = c_total(run_compute(replace(spec, samples_seen=batch), method, 0))
    return batch * max(1, math.ceil(target / per_step - 0.5))

