"""What a sweep would launch: the units not done yet (and the done ones whose files a unit to do reads are gone),
what each requires, and the dry run's listing of them with their estimate. Loads no torch: `clipsteer run
--dry-run` answers at once."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from harness.grid.config import ExecutorConfig, GridConfig
from harness.grid.describe import resolved
from harness.grid.runspec import Unit
from harness.grid.spec import expand_waiting
from harness.launch import estimate
from harness.profiles import model_profile
from harness.run import refcache
from harness.store import records
from harness.store.rundir import RunDir

# What a unit to do reads from each kind of unit it requires, beyond its record (harness.store.rundir)
READS: dict[str, Callable[[RunDir], bool]] = {
    "reference run": lambda d: d.final_model.is_file(),
    "feature cache": lambda d: d.feature_shards.is_dir() or d.feature_table.is_file(),
    "ladder trunk": lambda d: d.branch_points.is_dir()}


def pending(specs: list[Unit], results: Path, required: dict[str, dict[str, str]] | None = None) -> list[Unit]:
    """Units that have no finished result under `results` (missing, failed, stale or interrupted), and the done
    units whose files a unit to do reads are gone (`required`: id -> {required id: kind}, by default
    `requirements`): a committed results directory keeps records, not weights or features, so such a unit
    trains again under the same id."""
    todo = {s.run_id for s in specs if not records.is_done(results, s)}
    required = required if required is not None else {s.run_id: requirements(s) for s in specs}
    known, grew = {s.run_id for s in specs}, True
    while grew:
        gone = {need for run_id in todo for need, kind in required.get(run_id, {}).items()
                if need in known and need not in todo and not READS[kind](RunDir.of(results, need))}
        todo |= gone
        grew = bool(gone)
    return [s for s in specs if s.run_id in todo]


def requirements(unit: Unit) -> dict[str, str]:
    """Ids of the units that must be done before `unit` starts, each with what it is: its reference run
    and, for a run, its feature cache."""
    required = dict.fromkeys(unit.reference.requires() if unit.reference is not None else (), "reference run")
    cache = refcache.cache_unit(unit)
    return required | ({cache.run_id: "feature cache"} if cache else {})


def plan(grid: GridConfig, results: Path, executor: ExecutorConfig | None = None,
         rate: estimate.Throughput | None = None) -> list[str]:
    """Human-readable lines: the runs and feature caches `run` would launch now with `executor` (default: the
    grid's), how many are done, the resources each asks for and the GPU-hours they would take at `rate`."""
    executor = executor or grid.executor
    specs, waiting = expand_waiting(grid, results)
    todo = pending(specs, results)
    caches = refcache.cache_units(todo)
    est = estimate.estimate(todo, caches, executor, rate or estimate.Throughput())
    lines = [f"grid {grid.name}: {len(specs)} runs, {len(specs) - len(todo)} done, {len(todo)} to launch "
             f"(executor {executor.kind}, results {results})"]
    for unit in caches:
        lines.append(f"  {unit.run_id}  reference-feature cache of the pool  "
                     f"{est.gflops[unit.run_id]:.3g} GFLOPs  {est.cost(unit.run_id)}")
    for spec in todo:
        rid, c_paper = spec.run_id, model_profile(spec.model)["gflops"] * spec.samples_seen
        lines.append(f"  {rid}  C_paper={c_paper:.3g} GFLOPs  C_total={est.gflops[rid]:.3g} GFLOPs  "
                     f"{est.cost(rid)}")
    lines.extend(f"  then, once it is done: {line}" for line in waiting)
    lines.extend(estimate.summary(est, executor))
    lines.extend(resolved(grid, executor))
    if executor.slurm is not None:
        from harness.launch.slurm import sbatch_script  # submitit renders the script: only for a Slurm executor

        size = min(max(len(todo), 1), executor.slurm.max_array_size)
        lines.append("the runs ready together go out as job arrays, each run a task; the script of an array of "
                     f"{size} (runs that read a reference wait for its job, --dependency=afterok):")
        lines.extend("  " + line for line in sbatch_script(executor.slurm, results / "submitit",
                                                           size if size > 1 else None).splitlines())
    return lines
