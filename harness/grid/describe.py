"""The configuration a grid resolves to, for `clipsteer run --dry-run`: every key with its value, the defaults
filled in and marked, so that nothing applies silently (docs/grid.md lists the same keys and defaults)."""
from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from harness.data.poolconfig import PoolConfig
from harness.grid.config import ExecutorConfig, GridConfig, MethodConfig, StageConfig
from harness.run.trainconfig import TrainConfig
from methods import get_method

DEFAULT = "*"
WIDTH = 118


def resolved(grid: GridConfig, executor: ExecutorConfig) -> list[str]:
    """Lines: the grid's data, train and executor sections and each stage, every field shown, a value the grid
    file does not give marked with DEFAULT (the executor: a value equal to its default, the command line's
    overrides applied)."""
    lines = [f"resolved configuration ({DEFAULT}: a default that {grid.source} does not set; for the executor, a "
             "value equal to its default):"]
    lines += _section("data", _given(PoolConfig, grid.data))
    lines += _section("train", _given(TrainConfig, grid.train))
    ex = {f.name: (getattr(executor, f.name), getattr(executor, f.name) == f.default)
          for f in dataclasses.fields(ExecutorConfig) if f.name != "slurm"}
    lines += _section("executor", ex)
    for stage in grid.stages:
        lines += _stage(stage)
    return lines


def _stage(stage: StageConfig) -> list[str]:
    """A stage's sweep, its reference and its own data and train keys (over the grid's), methods resolved."""
    sweep = {"models": (list(stage.models), False), "samples_seen": (list(stage.samples_seen), False),
             "seeds": (list(stage.seeds), stage.seeds == (0,))}
    if stage.reference is not None:
        ref = {k: v for k, v in dataclasses.asdict(stage.reference).items() if v is not None}
        sweep["reference"] = (ref, False)
    for key, section in (("data", stage.data), ("train", stage.train)):
        if section:
            sweep[key] = (dict(section), False)
    if stage.c_total is not None:
        sweep["budget"] = ({"c_total": stage.c_total}, False)
    if stage.tune is not None:  # its validation pairs: data.validation, or harness.grid.tuning's default
        sweep["tune"] = ({**{p: list(v) for p, v in stage.tune.params}, "on": stage.tune.on}, False)
    lines = _section(f"stage {stage.name}", sweep)
    for method in stage.methods:
        lines += _section(f"  method {method.name}", _method(method), indent=6)
    return lines


def _method(method: MethodConfig) -> dict[str, tuple[Any, bool]]:
    params = get_method(method.name).check(method.params)
    return {k: (v, k not in method.params) for k, v in params.items()}


def _given(cls: type, given: dict[str, Any]) -> dict[str, tuple[Any, bool]]:
    """Every field of dataclass `cls`: the value `given` sets, else the default (marked)."""
    full = dataclasses.asdict(cls(**given))
    return {k: (v, k not in given) for k, v in full.items()}


def _section(title: str, values: dict[str, tuple[Any, bool]], indent: int = 4) -> list[str]:
    items = ", ".join(f"{k}={_show(v)}{DEFAULT if default else ''}" for k, (v, default) in values.items())
    return textwrap.wrap(f"{title}: {items or '-'}", WIDTH, initial_indent=" " * (indent - 2),
                         subsequent_indent=" " * indent, break_on_hyphens=False)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
