"""Command-line latency: cold `clipsteer` processes (a fresh interpreter each, as a user types them) for --help,
every subcommand's --help, a grid validation error, `status` and `run --dry-run` of the demo grid."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.timing import Goal, GroupResult, Result, Settings, interleave

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("run", "status", "cache-ref", "make-shards", "models", "report", "fit", "compare")
BAD_GRID = "train: {learning_rate: 0.002}\nstages: []\n"
AT_ONCE, QUICK = Goal("<=", 1.0), Goal("<=", 3.0)


def cold(*args: str, expect: int = 0) -> float:
    """Seconds for `python -m harness ARGS` in a fresh interpreter, from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != expect:
        raise RuntimeError(f"clipsteer {' '.join(args)} exited {out.returncode}, not {expect}: {out.stderr[-500:]}")
    return seconds


def run(settings: Settings, out: Path) -> GroupResult:
    """Interleave the commands over rounds (fewer than the training groups': status and the dry run take seconds)."""
    rounds = 2 if settings.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.yaml"
        bad.write_text(BAD_GRID, encoding="utf-8")
        cases = {"--help": lambda: cold("--help"), "validation error": lambda: cold("run", str(bad), expect=2),
                 **{f"{s} --help": (lambda s=s: cold(s, "--help")) for s in SUBCOMMANDS},
                 "status grids/demo.yaml": lambda: cold("status", "grids/demo.yaml"),
                 "run grids/demo.yaml --dry-run": lambda: cold("run", "grids/demo.yaml", "--dry-run")}
        times = interleave(cases, rounds, warmup_rounds=1)
    result = GroupResult()
    for name, values in times.items():
        goal = AT_ONCE if name.endswith("--help") or name in ("--help", "validation error") else QUICK
        result.measurements.append(Result(f"clipsteer {name}, cold process", "s", values, goal))
    result.notes.append(
        f"CLI: each command a fresh `python -m harness` process from the repository root (interpreter start "
        f"included), {rounds} interleaved rounds after one warm-up round, median; the validation error is an "
        "unknown train key. Goals: 1 s for help and validation errors, 3 s for status and the dry run.")
    return result
