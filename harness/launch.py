"""Launch a grid's runs through submitit, skipping what is already done, references first.

The units launched are the runs plus the reference-feature caches they read (harness.refcache);
a unit starts once the units it requires (its reference run, its cache) are done. Local sweeps are throttled here (submitit's LocalExecutor starts every job at once): at
most `max_parallel` jobs run, each with `cpus_per_job` threads. A failed run is recorded
and does not stop the others; runs whose reference failed are recorded as failed unstarted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.local.debug import DebugJob
from tqdm import tqdm

from harness import refcache, store
from harness.config import ExecutorConfig
from harness.job import run_job
from harness.models import model_profile


@dataclass
class LaunchReport:
    """What a launch did: run ids done now, skipped (done before) and failed (with the reason)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def pending(specs: list[dict[str, Any]], results: Path) -> list[dict[str, Any]]:
    """Specs that have no finished result under `results` (missing, failed or stale)."""
    return [s for s in specs if not store.is_done(results, s)]


def requirements(unit: dict[str, Any]) -> set[str]:
    """Ids of the units that must be done before `unit` starts: its reference run and its feature cache."""
    ref = unit.get("reference")
    required = {ref["run_id"]} if ref and ref["kind"] == "run" else set()
    cache = refcache.cache_unit(unit)
    return required | ({cache["run_id"]} if cache else set())


def _compute(unit: dict[str, Any]) -> float:
    """C_paper of a run (0 for a cache), to start the largest runs first."""
    return 0.0 if unit.get("kind") == refcache.KIND else model_profile(unit["model"])["gflops"] * unit["samples_seen"]


def make_executor(cfg: ExecutorConfig, folder: Path) -> submitit.Executor:
    """submitit executor for `cfg.kind` ('local': subprocesses, 'debug': in this process)."""
    if cfg.kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=cfg.timeout_min)
    return executor


def launch(specs: list[dict[str, Any]], results: Path, cfg: ExecutorConfig, log=tqdm.write) -> LaunchReport:
    """Run every spec (and every feature cache the specs read) that is not done; a unit starts once the
    units it requires are done.

    Units without a pending requirement start at once (up to max_parallel), whatever their stage,
    so a reference stage does not leave cores idle. Among ready units, those that others require
    go first, then the largest compute first (so the sweep does not end on one long run).
    """
    results = Path(results)
    report = LaunchReport()
    units = refcache.cache_units(pending(specs, results)) + list(specs)  # only caches that a run still to do reads
    required = {u["run_id"]: requirements(u) for u in units}
    needed = set().union(*required.values())
    todo = sorted(pending(units, results), key=lambda u: (u["run_id"] not in needed, -_compute(u)))
    launching = {u["run_id"] for u in todo}
    report.skipped = [u["run_id"] for u in units if u["run_id"] not in launching]
    log(f"{len(todo)} units to launch, {len(report.skipped)} already done")
    executor = make_executor(cfg, results / "submitit")
    queue, running = list(todo), {}
    show = cfg.kind == "debug"  # per-run training bars only in-process; local jobs log to submitit's folder
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=show or not todo, dynamic_ncols=True)
    while queue or running:
        for spec in _ready(queue, running, required, results, report, bar, log):
            if len(running) >= cfg.max_parallel:
                break
            queue.remove(spec)
            function = refcache.build_cache_job if spec.get("kind") == refcache.KIND else run_job
            job = executor.submit(function, spec, str(results), cfg.cpus_per_job, show)
            running[spec["run_id"]] = job
            log(f"  started {spec['run_id']} (job {job.job_id})")
        for run_id, job in list(running.items()):
            finished, error = _outcome(job)
            if not finished:
                continue
            del running[run_id]
            bar.update(1)
            if error is None:
                report.done.append(run_id)
                log(f"  done    {run_id}")
            else:
                rdir = store.run_dir(results, run_id)
                if store.state(results, run_id) != "failed":  # killed (OOM, SIGKILL) before it could say so
                    store.fail(rdir, error)
                reason = store.read_status(rdir)["error"]
                report.failed[run_id] = reason
                log(f"  FAILED  {run_id}: {reason}")
        if running:
            time.sleep(0.5)
    bar.close()
    return report


def _ready(queue: list[dict[str, Any]], running: dict, required: dict[str, set[str]], results: Path,
           report: LaunchReport, bar: tqdm, log) -> list[dict[str, Any]]:
    """Queued units that can start now. A unit with a requirement that is neither done nor still queued
    or running in this launch (it failed) is recorded as failed and dropped from the queue. Done-ness
    comes from this launch's own record (done now or skipped as done before); a requirement outside
    this launch is looked up on disk."""
    waiting = {s["run_id"] for s in queue} | set(running)
    finished = set(report.done) | set(report.skipped)
    ready = []
    for spec in list(queue):
        unmet = required[spec["run_id"]] - finished
        if unmet & waiting:
            continue
        missing = sorted(r for r in unmet if r in report.failed or store.state(results, r) != "done")
        if not missing:
            ready.append(spec)
        else:
            status = store.read_status(store.run_dir(results, missing[0])) or {}
            what = "feature cache" if missing[0].startswith(f"{refcache.KIND}-") else "reference run"
            reason = f"{what} {missing[0]} is {store.state(results, missing[0])}" + (
                f": {status['error']}" if status.get("error") else "")
            store.fail_unstarted(store.run_dir(results, spec["run_id"]), spec, reason)
            report.failed[spec["run_id"]] = reason
            queue.remove(spec)
            bar.update(1)
            log(f"  FAILED  {spec['run_id']}: {reason}")
    return ready


def _outcome(job: submitit.Job) -> tuple[bool, BaseException | None]:
    """(finished, error) without blocking; a debug job runs here, via exception() (done() would open pdb)."""
    if isinstance(job, DebugJob):
        return True, job.exception()
    if not job.done():
        return False, None
    return True, job.exception()
