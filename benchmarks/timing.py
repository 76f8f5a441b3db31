"""Shared timing machinery: settings, interleaved rounds, results with goals, and what machine ran them."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """How hard to measure: kept interleaved rounds, training steps per timed call and warm-up steps left out."""

    quick: bool
    rounds: int
    steps: int
    skip: int
    threads: int = 1
    warmup_rounds: int = 1

    @classmethod
    def make(cls, quick: bool) -> "Settings":
        """The quick smoke settings or the full ones."""
        return cls(quick=True, rounds=2, steps=8, skip=3) if quick else cls(quick=False, rounds=15, steps=10, skip=3)


@dataclass(frozen=True)
class Goal:
    """A pass condition on a result's median: `op` is '<=', '<' or '>='."""

    op: str
    limit: float

    def met(self, value: float) -> bool:
        """True when `value` satisfies the goal."""
        return {"<=": value <= self.limit, "<": value < self.limit, ">=": value >= self.limit}[self.op]

    def __str__(self) -> str:
        return f"{self.op} {self.limit:g}"


@dataclass
class Result:
    """One measured quantity over its repeats; a ratio names what it divides (`of`) and has unit 'x'."""

    name: str
    unit: str
    values: list[float]
    goal: Goal | None = None
    note: str = ""
    of: tuple[str, str] | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def passed(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self.median)

    def summary(self) -> dict[str, Any]:
        """The JSON record: median, min, max, repeats, unit, goal and pass/fail."""
        record = {"name": self.name, "unit": self.unit, "median": self.median, "min": min(self.values),
                  "max": max(self.values), "repeats": len(self.values), "values": self.values,
                  "goal": None if self.goal is None else str(self.goal), "pass": self.passed, "note": self.note}
        if self.of is not None:
            record["numerator"], record["denominator"] = self.of
        return record


@dataclass
class GroupResult:
    """What one benchmark group found: measurements, ratios, other facts (counts, skips) and notes."""

    measurements: list[Result] = field(default_factory=list)
    ratios: list[Result] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)


def interleave(cases: dict[str, Callable[[], T]], rounds: int, warmup_rounds: int = 1) -> dict[str, list[T]]:
    """Call the cases in turn (A, B, A, B, ...): `warmup_rounds` discarded rounds, then `rounds` kept ones."""
    kept: dict[str, list[T]] = {name: [] for name in cases}
    for r in range(warmup_rounds + rounds):
        for name, case in cases.items():
            value = case()
            if r >= warmup_rounds:
                kept[name].append(value)
    return kept


def seconds(work: Callable[[], Any]) -> float:
    """Wall seconds of one call of `work`."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def ratio(name: str, numerator: tuple[str, list[float]], denominator: tuple[str, list[float]],
          goal: Goal | None = None, note: str = "") -> Result:
    """Per-round ratios of two interleaved series (paired by round), so a slow round slows both sides."""
    values = [a / b for a, b in zip(numerator[1], denominator[1])]
    return Result(name, "x", values, goal, note, of=(numerator[0], denominator[0]))


def machine(threads: int) -> dict[str, Any]:
    """What ran the benchmarks: CPU count and model, library versions, threads used, load and date."""
    import open_clip
    import torch

    import harness  # noqa: F401  (torchvision guard before open_clip)

    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), platform.processor())
    return {"cpu_count": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "torch_threads_used": threads, "torch_threads_default": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read().splitlines()
    except OSError:
        return []
