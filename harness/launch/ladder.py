"""Budget ladders: wsd runs that differ only in samples seen share their warmup and stable phase, so a
sweep trains that phase once.

Runs whose identity (harness.grid.runspec.identity) is the same but for samples seen and stage form a ladder when
their schedule is wsd: the largest budget is the trunk, trained from step 0 and keeping a checkpoint at
each shorter budget's cooldown start; each shorter budget is a branch, a run of its own (own id, result
and compute) that starts from a copy of that checkpoint and does its own cooldown (harness.run.branch).
A branch equals the run trained alone to its budget, bit for bit: before its cooldown a wsd lr does not
depend on the budget, the batches and augmentations are functions of (seed, step), and a method never
sees the budget (methods.base: its state, gamma schedule and selections follow step and epoch alone), so
no method needs to be refused. A shorter budget whose cooldown is the whole run (cooldown 1) shares
nothing and trains alone. A branch requires its trunk to be done, as a run requires its reference.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from harness import io
from harness.grid.runspec import RunSpec, identity
from harness.run.branch import Rung
from harness.run.schedule import cooldown_start


def rungs(units: Iterable[Any]) -> dict[str, Rung]:
    """The trunks and branches among the runs of `units` by run id (runs outside a ladder are left out)."""
    ladders: dict[str, list[RunSpec]] = defaultdict(list)
    for spec in units:
        if isinstance(spec, RunSpec) and spec.train.schedule == "wsd":
            shared = {k: v for k, v in identity(spec.to_json()).items() if k not in ("samples_seen", "stage")}
            ladders[io.digest(shared)].append(spec)
    found: dict[str, Rung] = {}
    for ladder in ladders.values():
        trunk = max(ladder, key=lambda s: s.samples_seen)
        keep = set()
        for spec in ladder:
            step = cooldown_start(spec.samples_seen // spec.train.batch_size, spec.train.cooldown)
            if spec.samples_seen < trunk.samples_seen and step > 0:
                found[spec.run_id] = Rung(trunk=trunk.run_id, step=step)
                keep.add(step)
        if keep:
            found[trunk.run_id] = Rung(keep_at=tuple(sorted(keep)))
    return found


def trunk_of(found: dict[str, Rung], run_id: str) -> set[str]:
    """The trunk that run `run_id` branches from, as a set of requirements (empty for any other run)."""
    rung = found.get(run_id)
    return {rung.trunk} if rung is not None and rung.trunk else set()
