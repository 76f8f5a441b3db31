"""Tuning stages: a stage that declares `tune: {param: [values], on: validation}` trains every candidate value of
its methods' parameter(s) on the pool less its validation pairs, scores each on those held-out pairs alone
(harness.eval.validation; never a test task), and hands the best value to the stages after it.

The best candidate has the highest mean validation score over the stage's seeds and budgets, per method
configuration and model; a tie goes to the value listed first. A later stage's method takes the chosen value when
it has the same name and the same parameters but the tuned ones, and does not set a tuned parameter itself; its
runs wait until every run of the tuning stage is done. Reads run records, never torch.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from harness import io
from harness.data.poolconfig import PoolConfig, embedded_pool_size
from harness.store.rundir import RunDir

ON = ("validation",)  # what a tuning stage scores its candidates on
# pairs held out when neither the grid nor the stage sets data.validation: this many, at most a tenth of the pool
DEFAULT_VALIDATION_PAIRS = 2048


@dataclass(frozen=True)
class TuneConfig:
    """A stage's `tune`: candidate values per method parameter (their product is tried), scored `on`."""

    params: tuple[tuple[str, tuple[Any, ...]], ...]
    on: str = "validation"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.params)

    def candidates(self) -> list[dict[str, Any]]:
        """Every combination of the candidate values, in the order listed."""
        names = self.names
        return [dict(zip(names, values)) for values in itertools.product(*(v for _, v in self.params))]


def default_validation(pool: PoolConfig) -> int:
    """The validation pairs a tuning stage holds out by default: DEFAULT_VALIDATION_PAIRS, at most a tenth of an
    embedded pool."""
    return DEFAULT_VALIDATION_PAIRS if pool.shards is not None else \
        max(1, min(DEFAULT_VALIDATION_PAIRS, embedded_pool_size(pool) // 10))


def config_key(name: str, params: dict[str, Any], tuned: Iterable[str]) -> str:
    """What a tuning stage's method and a later stage's must share to hand a value over: the method's name and
    its resolved parameters but the tuned ones."""
    skip = set(tuned)
    return json.dumps({"name": name, "params": {k: v for k, v in sorted(params.items()) if k not in skip}},
                      sort_keys=True, default=str)


def best(candidates: list[dict[str, Any]], scores: list[list[float]]) -> int:
    """The index of the candidate with the highest mean score (its runs' validation scores); the first listed on
    a tie."""
    means = [sum(s) / len(s) for s in scores]
    return max(range(len(means)), key=lambda i: (means[i], -i))


def validation_score(results: Path, run_id: str) -> float | None:
    """A tuning run's validation score (its eval average), None while it is not done."""
    rdir = RunDir.of(results, run_id)
    if rdir.state() != "done":
        return None
    return float(io.read_json(rdir.result)["eval"]["average"])


def choose(runs: list[Any], tune: TuneConfig, results: Path | None) -> dict[tuple[str, str], dict[str, Any]] | None:
    """The values chosen by a tuning stage whose runs are `runs` (RunSpecs): (config key, model) -> {param: value};
    None while any of its runs is not done (or no results directory is given)."""
    if results is None:
        return None
    scores: dict[tuple[str, str], dict[str, list[float]]] = {}
    for spec in runs:
        score = validation_score(results, spec.run_id)
        if score is None:
            return None
        key = (config_key(spec.method.name, spec.method.params, tune.names), spec.model)
        values = json.dumps({p: spec.method.params[p] for p in tune.names}, sort_keys=True)
        scores.setdefault(key, {}).setdefault(values, []).append(score)
    chosen = {}
    for key, by_value in scores.items():
        listed = [json.loads(v) for v in by_value]
        chosen[key] = listed[best(listed, list(by_value.values()))]
    return chosen
