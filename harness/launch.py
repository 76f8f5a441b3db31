"""Launch a grid's runs through submitit, skipping what is already done, references first.

Local sweeps are throttled here (submitit's LocalExecutor starts every job at once): at
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

from harness import store
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


def make_executor(cfg: ExecutorConfig, folder: Path) -> submitit.Executor:
    """submitit executor for `cfg.kind` ('local': subprocesses, 'debug': in this process)."""
    if cfg.kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=cfg.timeout_min)
    return executor


def launch(specs: list[dict[str, Any]], results: Path, cfg: ExecutorConfig, log=tqdm.write) -> LaunchReport:
    """Run every spec that is not done; a run whose reference is another run starts once that run is done.

    Runs without such a dependency start at once (up to max_parallel), whatever their stage,
    so a reference stage does not leave cores idle. Among ready runs, those that others depend
    on go first, then the largest compute first (so the sweep does not end on one long run).
    """
    results = Path(results)
    report = LaunchReport()
    needed = store.reference_run_ids(specs)
    todo = sorted(pending(specs, results), key=lambda s: (s["run_id"] not in needed,
                                                          -model_profile(s["model"])["gflops"] * s["samples_seen"]))
    launching = {s["run_id"] for s in todo}
    report.skipped = [s["run_id"] for s in specs if s["run_id"] not in launching]
    log(f"{len(todo)} runs to launch, {len(report.skipped)} already done")
    executor = make_executor(cfg, results / "submitit")
    queue, running = list(todo), {}
    show = cfg.kind == "debug"  # per-run training bars only in-process; local jobs log to submitit's folder
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=show or not todo, dynamic_ncols=True)
    while queue or running:
        for spec in _ready(queue, running, results, report, bar, log):
            if len(running) >= cfg.max_parallel:
                break
            queue.remove(spec)
            job = executor.submit(run_job, spec, str(results), cfg.cpus_per_job, show)
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


def _ready(queue: list[dict[str, Any]], running: dict, results: Path, report: LaunchReport, bar: tqdm,
           log) -> list[dict[str, Any]]:
    """Queued specs that can start now. A spec whose reference run is neither done nor still queued or
    running in this launch (it failed) is recorded as failed and dropped from the queue. Done-ness
    comes from this launch's own record (done now or skipped as done before), not from the disk."""
    waiting = {s["run_id"] for s in queue} | set(running)
    finished = set(report.done) | set(report.skipped)
    ready = []
    for spec in list(queue):
        ref = spec.get("reference")
        if not ref or ref["kind"] != "run" or ref["run_id"] in finished:
            ready.append(spec)
        elif ref["run_id"] not in waiting:
            status = store.read_status(store.run_dir(results, ref["run_id"])) or {"state": "missing"}
            reason = f"reference run {ref['run_id']} is {status['state']}" + (f": {status['error']}" if status.get("error") else "")
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
