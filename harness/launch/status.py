"""Where every run of a grid stands: done, failed (and why), running (where), interrupted (resumes from
which step), requeued, never started; and which run directories belong to earlier versions of the grid.
Loads no torch and no pandas: `clipsteer status` answers at once."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from harness import io
from harness.grid.config import GridConfig
from harness.grid.runspec import RunSpec, unit_from_json
from harness.grid.spec import expand_waiting
from harness.run import refcache
from harness.store import lease, records
from harness.store.rundir import RunDir, checkpoint_files, checkpoint_step, requeue_count

COLUMNS = ("run_id", "stage", "state", "attempts", "requeued", "detail")


def grid_status(grid: GridConfig, results: Path) -> tuple[list[dict[str, Any]], list[RunSpec], list[str]]:
    """Every unit of `grid` with its state under `results` (run_states), the specs of runs stored there that the
    grid no longer names (orphans), and the runs not expanded yet: they wait for a tuning stage."""
    specs, waiting = expand_waiting(grid, Path(results))
    return run_states(specs, Path(results)), orphans(specs, Path(results)), waiting


def run_states(specs: list[RunSpec], results: Path) -> list[dict[str, Any]]:
    """One row per unit (feature caches first, then runs): its COLUMNS, id, state and a detail line."""
    units = refcache.cache_units(specs) + list(specs)
    rows = []
    for unit in units:
        rdir = records.run_dir(results, unit.run_id)
        state = records.state(results, unit.run_id, unit)
        is_run = isinstance(unit, RunSpec)
        status = records.read_status(rdir) or {}
        detail = ""
        if state == "failed":
            detail = status.get("error") or ""
        elif state == "running":
            holder = lease.holder(rdir)
            if holder is None:
                state = "interrupted"
                ckpts = checkpoint_files(rdir)
                detail = f"resumes from step {checkpoint_step(ckpts[0])}" if ckpts else \
                    "restarts from the beginning"
            else:
                detail = f"on {lease.describe(holder)}"
        elif state == "done":
            detail = f"average {io.read_json(RunDir(rdir).result)['eval']['average']:.4f}" if is_run else \
                "features cached"
        elif state == "conflict":
            detail = "the directory holds a different spec under this id"
        requeued = requeue_count(rdir)
        rows.append({"run_id": unit.run_id, "stage": unit.stage if is_run else "cache", "state": state,
                     "attempts": records.attempts(rdir), "requeued": requeued, "detail": detail})
    return rows


def orphans(specs: list[RunSpec], results: Path) -> list[RunSpec]:
    """Specs of the run directories under `results` that the grid no longer names (an edited grid file):
    kept on disk, left out of the leaderboard unless asked for."""
    known = {u.run_id for u in refcache.cache_units(specs) + list(specs)}
    found = []
    for rdir in RunDir.all(results):
        if rdir.path.name not in known and rdir.spec.is_file():
            unit = unit_from_json(io.read_json(rdir.spec))
            if isinstance(unit, RunSpec):
                found.append(unit)
    return found


def summary(rows: list[dict[str, Any]]) -> str:
    """'N units: a done, b failed, ...' in a fixed order of states."""
    order = ["done", "running", "interrupted", "failed", "stale", "conflict", "missing"]
    counts = Counter(row["state"] for row in rows)
    parts = [f"{counts[s]} {s}" for s in order if s in counts]
    return f"{len(rows)} units: " + ", ".join(parts)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width table under a header of COLUMNS, each column right-aligned, for a terminal."""
    cells = [COLUMNS] + [tuple(str(row[c]) for c in COLUMNS) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join(" ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in cells)
