"""Launch a grid's runs through submitit, stage by stage, skipping what is already done.

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

from harness import store
from harness.config import ExecutorConfig
from harness.job import run_job


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


def launch(specs: list[dict[str, Any]], results: Path, cfg: ExecutorConfig, log=print) -> LaunchReport:
    """Run every spec that is not done, in stage order (a stage waits for the stages before it)."""
    results = Path(results)
    report = LaunchReport()
    executor = make_executor(cfg, results / "submitit")
    stages: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        stages.setdefault(spec["stage"], []).append(spec)
    for stage, stage_specs in stages.items():
        todo = pending(stage_specs, results)
        report.skipped += [s["run_id"] for s in stage_specs if s not in todo]
        runnable = []
        for spec in todo:
            blocker = _reference_blocker(spec, results)
            if blocker:
                store.fail_unstarted(store.run_dir(results, spec["run_id"]), spec, blocker)
                report.failed[spec["run_id"]] = blocker
            else:
                runnable.append(spec)
        log(f"stage {stage}: {len(runnable)} to run, {len(stage_specs) - len(todo)} already done")
        _run_throttled(executor, runnable, results, cfg, report, log)
    return report


def _reference_blocker(spec: dict[str, Any], results: Path) -> str | None:
    ref = spec.get("reference")
    if not ref or ref["kind"] != "run":
        return None
    status = store.read_status(store.run_dir(results, ref["run_id"])) or {"state": "missing"}
    return None if status["state"] == "done" else f"reference run {ref['run_id']} is {status['state']}"


def _outcome(job: submitit.Job) -> tuple[bool, BaseException | None]:
    """(finished, error) without blocking; a debug job runs here, via exception() (done() would open pdb)."""
    if isinstance(job, DebugJob):
        return True, job.exception()
    if not job.done():
        return False, None
    return True, job.exception()


def _run_throttled(executor: submitit.Executor, specs: list[dict[str, Any]], results: Path, cfg: ExecutorConfig,
                   report: LaunchReport, log) -> None:
    queue, running = list(specs), {}
    show = cfg.kind == "debug"
    while queue or running:
        while queue and len(running) < cfg.max_parallel:
            spec = queue.pop(0)
            job = executor.submit(run_job, spec, str(results), cfg.cpus_per_job, show)
            running[spec["run_id"]] = job
            log(f"  started {spec['run_id']} (job {job.job_id})")
        for run_id, job in list(running.items()):
            finished, error = _outcome(job)
            if not finished:
                continue
            del running[run_id]
            if error is None:
                report.done.append(run_id)
                log(f"  done    {run_id}")
            else:
                status = store.read_status(store.run_dir(results, run_id)) or {}
                reason = status.get("error") or str(error).strip().splitlines()[-1]
                report.failed[run_id] = reason
                log(f"  FAILED  {run_id}: {reason}")
        if running:
            time.sleep(0.5)
