"""Launch a grid's runs through submitit, skipping what is already done, references first.

The units launched are the runs plus the reference-feature caches they read (harness.run.refcache);
a unit starts once the units it requires (its reference run, its cache) are done. Local runs go to
`max_parallel` long-lived worker processes (harness.launch.workers) that take run after run, each with
`cpus_per_job` threads; a local run of several processes (tasks_per_job > 1) is a submitit job of its own,
throttled here to `max_parallel` at a time (submitit's LocalExecutor starts every job at once). A failed
run is recorded and does not stop the others; runs whose reference failed are recorded as failed
unstarted. Runs are taken under leases (harness.store.lease), so concurrent launches of one grid run each
run once.
"""
from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit
from submitit.local.debug import DebugJob
from tqdm import tqdm

from harness import codeversion
from harness.grid.config import ExecutorConfig
from harness.grid.runspec import CacheUnit, RunSpec, Unit
from harness.launch import ladder, slurm, workers
from harness.launch.plan import READS, pending, requirements
from harness.launch.slurm import TrainingJob, job_environment, make_slurm_executor
from harness.profiles import model_profile
from harness.run import refcache
from harness.store import lease, records
from harness.store.rundir import RunDir


@dataclass
class LaunchReport:
    """What a launch did: run ids done now, skipped (done before), done meanwhile by another launch
    (`by_others`) and failed (with the reason)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    by_others: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    queued: dict[str, str] = field(default_factory=dict)  # run id -> Slurm job id, left queued by a launch that did not wait
    waiting: list[str] = field(default_factory=list)  # runs not launched: they wait for a tuning stage (grid.tuning)


def _compute(unit: Unit) -> float:
    """C_paper of a run (0 for a cache), to start the largest runs first."""
    return model_profile(unit.model)["gflops"] * unit.samples_seen if isinstance(unit, RunSpec) else 0.0


def make_executor(cfg: ExecutorConfig, folder: Path) -> submitit.Executor | workers.WorkerPool:
    """submitit executor for `cfg.kind` ('local': a pool of worker processes, or a subprocess per run of
    several processes; 'debug': in this process; 'slurm': sbatch job arrays)."""
    if cfg.kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    if cfg.kind == "slurm":
        return make_slurm_executor(cfg.slurm, folder)
    if cfg.tasks_per_job == 1:
        return workers.WorkerPool(folder, cfg.max_parallel, cfg.timeout_min)
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=cfg.timeout_min, tasks_per_node=cfg.tasks_per_job)
    return executor


@dataclass(frozen=True)
class _Imported:
    """A job function named by its module, imported by the job that calls it: the launcher, which only submits
    it, loads no torch (seconds per launch)."""

    module: str
    name: str

    def __call__(self, *args: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(*args)


run_job = _Imported("harness.run.job", "run_job")  # what a run's job calls (tests submit a stand-in)
build_cache_job = _Imported("harness.run.features", "build_cache_job")


@dataclass(frozen=True)
class _FirstTaskOnly:
    """A job function run by task 0 alone of a multi-task job: a feature cache is one process's work."""

    function: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        env = job_environment()
        return None if env is not None and env.global_rank != 0 else self.function(*args)


class _Launch:
    """The state of one launch: units queued here, running here, and running in another process."""

    def __init__(self, todo: list[Unit], required: dict[str, dict[str, str]], results: Path, log,
                 rungs: dict[str, ladder.Rung] | None = None) -> None:
        self.queue, self.running, self.elsewhere = list(todo), {}, {}
        self.lingering: set[str] = set()  # running here: their job ended, but the process working on them lives
        self.rungs = rungs or {}  # run id -> its place in a wsd budget ladder (harness.launch.ladder)
        self.required, self.results, self.log = required, results, log
        self.read_as: dict[str, set[str]] = {}  # unit id -> how the units requiring it read it (READS' kinds)
        for needs in required.values():
            for need, kind in needs.items():
                self.read_as.setdefault(need, set()).add(kind)
        self.report = LaunchReport()
        self.code = codeversion.code_version()
        self.heartbeat = lease.Heartbeat()

    def start(self, spec: Unit, executor: submitit.Executor, cfg: ExecutorConfig, show: bool, bar: tqdm) -> None:
        """Take the run's lease and submit it to a local or debug executor (Slurm runs go out together:
        start_arrays)."""
        held = self._take(spec, bar)
        if held is not None:
            function, args = self._call(spec, cfg, show, held)
            self._submitted(spec, executor.submit(function, *args), held)

    def start_arrays(self, ready: list[tuple[Unit, tuple[str, ...]]], executor: submitit.Executor,
                     cfg: ExecutorConfig, show: bool, bar: tqdm) -> None:
        """Take the leases of the units ready together and submit them to Slurm as job arrays (one per resource
        shape and set of jobs `after` to wait for: harness.launch.slurm.submit_arrays); each run's lease is
        also owned by its array task."""
        taken = [(spec, after, held) for spec, after in ready if (held := self._take(spec, bar)) is not None]
        submissions = [slurm.Submission(slurm.cache_shape(cfg.slurm) if isinstance(spec, CacheUnit) else cfg.slurm,
                                        after, *self._call(spec, cfg, show, held)) for spec, after, held in taken]
        for i, job in slurm.submit_arrays(executor, submissions):
            spec, after, held = taken[i]
            lease.hand_to_slurm(held, job.job_id)
            self._submitted(spec, job, held, after)

    def _take(self, spec: Unit, bar: tqdm) -> lease.Lease | None:
        """The run's lease, or None: a run another process holds is watched instead, and one finished since
        this launch looked is counted as done by others."""
        run_id, rdir = spec.run_id, records.run_dir(self.results, spec.run_id)
        held = lease.acquire(rdir)
        if held is None:
            self.elsewhere[run_id] = spec
            self.log(f"  running elsewhere {run_id} ({lease.describe(lease.read(rdir))}): waiting for it")
            return None
        now = records.state(self.results, run_id, spec)
        if now == "done" and not self._readable(run_id):
            now = "retrain"  # done, but the files that runs to do read from it are gone
        elif now == "done":
            records.settle(rdir)
        if now in ("done", "conflict"):
            lease.release(held)
            bar.update(1)
            if now == "done":
                self.report.by_others.append(run_id)
            else:
                self.report.failed[run_id] = f"{rdir} holds a different spec under this id; left untouched"
                self.log(f"  FAILED  {run_id}: {self.report.failed[run_id]}")
            return None
        self.heartbeat.add(held)
        return held

    def _call(self, spec: Unit, cfg: ExecutorConfig, show: bool, held: lease.Lease) -> tuple[Callable, tuple]:
        """The function a unit's job runs and its arguments (the lease token, the code version, a ladder rung)."""
        function = _FirstTaskOnly(build_cache_job) if isinstance(spec, CacheUnit) else _run_function(cfg)
        threads = cfg.slurm.cpus_per_task or cfg.cpus_per_job if cfg.slurm else cfg.cpus_per_job
        rung = self.rungs.get(spec.run_id)
        return function, (spec, str(self.results), threads, show, held.token, self.code, *([rung] if rung else []))

    def _submitted(self, spec: Unit, job: submitit.Job, held: lease.Lease, after: tuple[str, ...] = ()) -> None:
        self.running[spec.run_id] = (job, held)
        self.log(f"  started {spec.run_id} (job {job.job_id}" + (f", after job {', '.join(after)})" if after else ")"))

    def _readable(self, run_id: str) -> bool:
        """Whether unit `run_id` still has the files that the units requiring it read (weights, features...)."""
        return all(READS[kind](RunDir.of(self.results, run_id)) for kind in self.read_as.get(run_id, ()))

    def collect(self, bar: tqdm) -> None:
        """Record the runs that finished here, and those that another process finished, failed or left. The
        run directory decides over the job system: a run with a valid result.json is done whatever its job's
        outcome, and one whose job ended while another owner of its lease (its task) lives is still running."""
        for run_id, (job, held) in list(self.running.items()):
            finished, error = _outcome(job)
            if not finished:
                continue
            done = records.settle(records.run_dir(self.results, run_id)) or error is None
            if not done and (alive := lease.others_alive(held)):
                if run_id not in self.lingering:
                    self.lingering.add(run_id)
                    self.log(f"  {run_id}: its job ended ({records.reason(error)}) but its process "
                             f"{lease.describe({'owners': alive})} still works on it: waiting for that")
                continue
            del self.running[run_id]
            self.lingering.discard(run_id)
            bar.update(1)
            if done:
                self.report.done.append(run_id)
                self.log(f"  done    {run_id}")
            else:
                self._failed(run_id, error)
            self.heartbeat.discard(held)
            lease.release(held)
        for run_id, spec in list(self.elsewhere.items()):
            rdir = records.run_dir(self.results, run_id)
            now = "done" if records.settle(rdir) else records.state(self.results, run_id)
            if now != "done" and lease.holder(rdir) is not None:
                continue
            del self.elsewhere[run_id]
            if now == "done":
                self.report.by_others.append(run_id)
                bar.update(1)
                self.log(f"  done    {run_id} (by another process)")
            elif now == "failed":
                self.report.failed[run_id] = records.read_status(rdir)["error"]
                bar.update(1)
                self.log(f"  FAILED  {run_id} (in another process): {self.report.failed[run_id]}")
            else:
                self.queue.append(spec)  # its owner died without a word: take the run over
                self.log(f"  {run_id}: its process died; taking it over")

    def _failed(self, run_id: str, error: BaseException) -> None:
        rdir = records.run_dir(self.results, run_id)
        reason = records.reason(error)
        try:
            if records.state(self.results, run_id) != "failed":  # killed (OOM, SIGKILL) before it could say so
                records.fail(rdir, error)
            reason = records.read_status(rdir)["error"]
        except OSError as unrecorded:  # e.g. a full disk: the failure is reported here, not on disk
            reason += f" (not recorded on disk: {records.reason(unrecorded)})"
        self.report.failed[run_id] = reason
        self.log(f"  FAILED  {run_id}: {reason}")


def _run_function(cfg: ExecutorConfig):
    """What a run's job calls: run_job, or on Slurm a checkpointable job that is requeued on preemption."""
    return TrainingJob(cfg.slurm.max_requeues, cfg.slurm.time_min) if cfg.slurm else run_job


def launch(specs: list[Unit], results: Path, cfg: ExecutorConfig, log=tqdm.write,
           wait: bool = True) -> LaunchReport:
    """Run every spec (and every feature cache the specs read) that is not done; a unit starts once the
    units it requires are done. On Slurm a unit is submitted as soon as the units it requires are
    submitted, as a job that Slurm holds until theirs succeed (scheduler dependencies); with
    `wait=False` the launch returns once it has submitted what it can, leaving the jobs queued
    (`LaunchReport.queued`), each run held by its Slurm job's lease.

    Units without a pending requirement start at once (up to max_parallel; on Slurm all of them, as job
    arrays of which Slurm runs array_parallelism tasks at a time), whatever their stage,
    so a reference stage does not leave cores idle. Among ready units, those that others require
    go first, then the largest compute first (so the sweep does not end on one long run). Each run is
    started under its lease (harness.store.lease): a run another `clipsteer run` works on is waited for, not
    started twice, and taken over if that process dies. The shorter budgets of a wsd ladder
    (harness.launch.ladder) wait for its trunk and start from its checkpoints.
    """
    if not wait and cfg.slurm is None:
        raise ValueError("only a Slurm launch can leave its runs queued (wait=False): other jobs need this process")
    results = Path(results)
    units = refcache.cache_units(pending(specs, results)) + list(specs)  # only caches that a run still to do reads
    rungs = ladder.rungs(specs)
    required = {u.run_id: requirements(u) | dict.fromkeys(ladder.trunk_of(rungs, u.run_id), "ladder trunk")
                for u in units}
    needed = set().union(*required.values())
    todo = sorted(pending(units, results, required), key=lambda u: (u.run_id not in needed, -_compute(u)))
    run = _Launch(todo, required, results, log, rungs)
    launching = {u.run_id for u in todo}
    run.report.skipped = [u.run_id for u in units if u.run_id not in launching]
    for run_id in run.report.skipped:  # done: a status or error.txt a kill left contradicting the result is repaired
        records.settle(records.run_dir(results, run_id))
    log(f"{len(todo)} units to launch, {len(run.report.skipped)} already done")
    executor = make_executor(cfg, results / "submitit")
    pooled = isinstance(executor, workers.WorkerPool)
    slots = executor.slots if pooled else math.inf if cfg.slurm else cfg.max_parallel
    show = cfg.kind == "debug"  # per-run training bars only in-process; local jobs log to submitit's folder
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=show or not todo, dynamic_ncols=True)
    try:
        while run.queue or run.running or run.elsewhere:
            submitted = 0
            free = len(run.running) < slots  # _ready reads every queued unit: only worth it when one can start
            ready = _ready(run, bar, scheduler=cfg.slurm is not None) if free else []
            if cfg.slurm:  # all at once, as job arrays: Slurm runs array_parallelism of each at a time
                started = {spec.run_id for spec, _ in ready}
                run.queue = [u for u in run.queue if u.run_id not in started]
                run.start_arrays(ready, executor, cfg, show, bar)
                submitted = len(ready)
            else:
                for spec, _ in ready:
                    if len(run.running) >= slots:
                        break
                    run.queue.remove(spec)
                    run.start(spec, executor, cfg, show, bar)
                    submitted += 1
            if not wait and not submitted:  # all that can be submitted is: leave it to the scheduler
                run.report.queued = {run_id: job.job_id for run_id, (job, _) in run.running.items()}
                break
            run.collect(bar)
            if run.running or run.elsewhere:
                time.sleep(workers.POLL_S if pooled else 0.5)
    finally:
        if pooled:
            executor.close()
        run.heartbeat.close()
        bar.close()
    return run.report


def _ready(run: _Launch, bar: tqdm, scheduler: bool = False) -> list[tuple[Unit, tuple[str, ...]]]:
    """Queued units that can be submitted now, each with the job ids it must wait for: none, or with
    `scheduler` (Slurm dependencies), those of requirements this launch submitted and that still run. A
    unit with a requirement that is neither done nor still queued or running (here or elsewhere) in this
    launch (it failed) is recorded as failed and dropped from the queue. Done-ness comes from this launch's
    own record (done now, by others, or skipped as done before); a requirement outside this launch is
    looked up on disk."""
    report, results = run.report, run.results
    waiting = {s.run_id for s in run.queue} | set(run.running) | set(run.elsewhere)
    finished = set(report.done) | set(report.skipped) | set(report.by_others)
    ready = []
    for spec in list(run.queue):
        unmet = set(run.required[spec.run_id]) - finished
        submitted = {r for r in unmet if r in run.running} if scheduler else set()
        if (unmet - submitted) & waiting:
            continue
        unmet -= submitted
        missing = sorted(r for r in unmet if r in report.failed or records.state(results, r) != "done")
        if not missing:
            ready.append((spec, tuple(sorted(run.running[r][0].job_id for r in submitted))))
        else:
            status = records.read_status(records.run_dir(results, missing[0])) or {}
            reason = f"{run.required[spec.run_id][missing[0]]} {missing[0]} is {records.state(results, missing[0])}" + (
                f": {status['error']}" if status.get("error") else "")
            records.fail_unstarted(records.run_dir(results, spec.run_id), spec, reason)
            report.failed[spec.run_id] = reason
            run.queue.remove(spec)
            bar.update(1)
            run.log(f"  FAILED  {spec.run_id}: {reason}")
    return ready


def _outcome(job: submitit.Job) -> tuple[bool, BaseException | None]:
    """(finished, error) without blocking; a debug job runs here, via exception() (done() would open pdb)."""
    if isinstance(job, DebugJob):
        return True, job.exception()
    if not job.done():
        return False, None
    return True, job.exception()
