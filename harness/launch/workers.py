"""Long-lived local workers: a local launch starts `max_parallel` submitit jobs that each run unit after unit,
so a sweep of many small runs pays a Python start and its imports (torch, open_clip: seconds) once per
worker, not once per run.

The launcher still decides what runs when (requirements, leases, outcomes); a WorkerPool is the executor it
submits to, with submitit's Job interface (done, exception). A submitted call is a file in the pool's spool:
    tasks/<n>      queued: the pickled call (function and arguments), taken in the order submitted
    taken/<n>.<w>  claimed by worker w (an atomic rename, so one worker per task); its mtime is the start
    done/<n>       the outcome: None, or the exception the call raised
The launcher holds an flock on the spool's lock file while the pool is open; should the launcher die, a
worker can take that lock and leaves, finishing its current task first (as it does when the pool closes);
so does a worker whose submitit controller died (the launcher, which counts it as ended, staffs another).
The spool of a launcher that died is removed by the next pool made in the same folder.
A worker that dies (SIGKILL, the OOM killer) loses only its current task, whose job then fails with the
worker's error as a one-run job would; a new worker takes its place for the rest. A task running past the executor's
`timeout_min` fails with a TimeoutError raised in it (SIGALRM), and the worker goes on; one that does not
come back to Python within GRACE_S more (stuck in native code) has its worker stopped, as submitit stops a
job at its time limit.
"""
from __future__ import annotations

import fcntl
import functools
import os
import pickle
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import cloudpickle
import submitit

from harness.store import records

POLL_S = 0.05  # how often an idle worker looks for a task, and the launcher for outcomes
CLOSE_WAIT_S = 10.0  # how long closing waits for the workers to leave, before and after stopping them
WORKER_TIMEOUT_MIN = 365 * 24 * 60  # a worker's own submitit limit: the limit that counts is each task's
GRACE_S = 60.0  # past a task's limit, how long its worker has to fail it before the worker is stopped
LOCK, TASKS, TAKEN, DONE = "launcher.lock", "tasks", "taken", "done"
SPOOL = "workers-"  # a pool's spool folder: workers-<random>


def serve(spool: str, worker: int, timeout_min: float) -> int:
    """A worker's loop (what its submitit job runs): run the oldest queued task (failing it with a TimeoutError
    past `timeout_min`), record its outcome, repeat, until the launcher lets go of the pool; returns how many
    tasks it ran."""
    spool_dir, ran, controller = Path(spool), 0, os.getppid()
    signal.signal(signal.SIGALRM, functools.partial(_time_up, timeout_min))
    while _launcher_holds(spool_dir) and os.getppid() == controller:  # a worker whose controller died leaves
        name = _claim(spool_dir, worker)
        if name is None:
            time.sleep(POLL_S)
            continue
        try:
            function, args = pickle.loads((spool_dir / TAKEN / f"{name}.{worker}").read_bytes())
            signal.setitimer(signal.ITIMER_REAL, timeout_min * 60)
            try:
                function(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except Exception as error:  # the task failed: its job reports it, the worker goes on
            _put(spool_dir / DONE / name, _picklable(error))
        except BaseException as error:  # interrupted (SIGINT, exit): report the task, then leave
            _put(spool_dir / DONE / name, _picklable(error))
            raise
        else:
            _put(spool_dir / DONE / name, None)
        ran += 1
    return ran


def _time_up(timeout_min: float, *_: Any) -> None:
    raise TimeoutError(f"the run took longer than the executor's timeout_min ({timeout_min:g} min)")


def _launcher_holds(spool: Path) -> bool:
    """Whether the launcher still holds the pool open (its flock on the lock file)."""
    try:
        with open(spool / LOCK, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except FileNotFoundError:
        return False
    return False


def _claim(spool: Path, worker: int) -> str | None:
    """Take the oldest queued task (renamed to taken/<n>.<worker>, stamped with the start time), or None."""
    for name in sorted(os.listdir(spool / TASKS)):
        taken = spool / TAKEN / f"{name}.{worker}"
        try:
            os.rename(spool / TASKS / name, taken)
        except FileNotFoundError:  # another worker took it first
            continue
        os.utime(taken)
        return name
    return None


def _put(path: Path, obj: Any) -> None:
    """Pickle `obj` to `path` through a temporary name, so a reader never sees half of it; nothing when the
    spool is gone (its launcher died and a later one removed it: nobody waits for the outcome)."""
    tmp = path.parent / f".{path.name}.{os.getpid()}"
    try:
        tmp.write_bytes(cloudpickle.dumps(obj))
        os.replace(tmp, path)
    except FileNotFoundError:
        if path.parent.is_dir():
            raise


def _picklable(error: BaseException) -> BaseException:
    """`error` if it survives a pickle round trip, else a RuntimeError carrying its reason."""
    try:
        pickle.loads(cloudpickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(records.reason(error))


class WorkerPool:
    """The executor of a local launch: up to `size` worker jobs (submitit LocalExecutor jobs running `serve`)
    that take the submitted calls in order. `slots` is how many calls the launcher keeps submitted: one
    queued behind each worker, so a worker that finishes starts its next run at once."""

    def __init__(self, folder: Path, size: int, timeout_min: float) -> None:
        self.executor = submitit.LocalExecutor(folder=folder)
        self.executor.update_parameters(timeout_min=WORKER_TIMEOUT_MIN)
        for abandoned in Path(folder).glob(f"{SPOOL}*"):  # spools of launchers that died
            if not _launcher_holds(abandoned):
                shutil.rmtree(abandoned, ignore_errors=True)
        name = f"{SPOOL}{uuid.uuid4().hex[:12]}"
        staging = Path(folder) / f".{name}"  # made and locked under another name, so no pool takes it for abandoned
        for sub in (TASKS, TAKEN, DONE):
            (staging / sub).mkdir(parents=True)
        self._lock = open(staging / LOCK, "wb")
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX)
        self.spool = staging.rename(Path(folder) / name)
        self.size, self.slots, self.timeout_min = size, 2 * size, timeout_min
        self.workers: list[submitit.Job] = []
        self.ended: dict[int, BaseException | None] = {}  # ended workers: None, or the error of one that took no task
        self.unfinished: set[str] = set()
        self.stopped: set[str] = set()  # tasks whose worker was stopped past their limit
        self._submitted = 0

    def submit(self, function: Callable[..., Any], *args: Any) -> PoolJob:
        """Queue the call `function(*args)` for the next free worker."""
        name = f"{self._submitted:09d}"
        self._submitted += 1
        tmp = self.spool / f".{name}"
        tmp.write_bytes(cloudpickle.dumps((function, args)))
        os.replace(tmp, self.spool / TASKS / name)
        self.unfinished.add(name)
        self._staff()
        return PoolJob(self, name)

    def _staff(self) -> None:
        """Start workers until min(size, unfinished tasks) of them live; none once the pool is broken."""
        if self.broken() is not None:
            return
        live = len(self.workers) - len(self.ended)
        for _ in range(min(self.size, len(self.unfinished)) - live):
            worker = self.executor.submit(serve, str(self.spool), len(self.workers), self.timeout_min)
            worker._results_timeout_s = 0  # on this machine, a worker's result is there once it has ended: no waiting
            self.workers.append(worker)

    def broken(self) -> BaseException | None:
        """The first error of the workers that ended without taking a task, once more than `size` have: a worker
        killed while it started (a cluster's kill of its controller) is replaced, but one that cannot start at
        all would be started again forever."""
        for index, worker in enumerate(self.workers):
            if index not in self.ended and worker.done():
                took = any((self.spool / TAKEN).glob(f"*.{index}"))
                self.ended[index] = None if took else worker.exception() or RuntimeError(f"worker {index} left at once")
        errors = [error for error in self.ended.values() if error is not None]
        return errors[0] if len(errors) > self.size else None

    def outcome(self, name: str, claim: Path | None) -> tuple[bool, BaseException | None, Path | None]:
        """(finished, error, claim) of task `name`, without blocking; `claim` is its taken/ file once known."""
        done = self.spool / DONE / name
        if claim is None and not done.exists():
            if (self.spool / TASKS / name).exists():  # still queued
                self._staff()
                error = self.broken() if len(self.ended) == len(self.workers) else None
                return (False, None, None) if error is None else self._finish(name, error, None)
            claim = next((self.spool / TAKEN).glob(f"{name}.*"))
        worker = self.workers[int(claim.suffix[1:])] if claim is not None else None
        if worker is not None and not done.exists():
            if name not in self.stopped and time.time() - claim.stat().st_mtime > self.timeout_min * 60 + GRACE_S:
                self.stopped.add(name)
                worker.cancel()  # SIGINT, then SIGKILL: as submitit's controller ends a job at its limit
            if not worker.done():
                return False, None, claim
        if done.exists():  # the worker recorded the outcome (perhaps just before it ended)
            return self._finish(name, pickle.loads(done.read_bytes()), claim)
        if name in self.stopped:
            return self._finish(name, TimeoutError(f"stopped {GRACE_S:g} s past the executor's timeout_min "
                                                   f"({self.timeout_min:g} min)"), claim)
        return self._finish(name, worker.exception() or RuntimeError("its worker left while running it"), claim)

    def _finish(self, name: str, error: BaseException | None,
                claim: Path | None) -> tuple[bool, BaseException | None, Path | None]:
        self.unfinished.discard(name)
        self._staff()  # a worker that died with this task is replaced for the tasks still queued
        return True, error, claim

    def close(self) -> None:
        """Let the workers go: idle ones leave on their own; one still there after CLOSE_WAIT_S (starting up,
        or running a task of a launch that failed) is stopped. The spool is removed once all have left."""
        self._lock.close()
        if not self._left():
            for worker in self.workers:
                if not worker.done():
                    worker.cancel()  # SIGINT, then SIGKILL
        if self._left():
            shutil.rmtree(self.spool, ignore_errors=True)

    def _left(self) -> bool:
        """Wait up to CLOSE_WAIT_S for every worker to leave (its job ended, or its result written: what follows
        is the interpreter's exit, seconds on a busy machine, which writes nothing); whether they all have."""
        deadline = time.monotonic() + CLOSE_WAIT_S
        while not (left := all(w.done() or w.paths.result_pickle.exists() for w in self.workers)) \
                and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return left


class PoolJob:
    """A call submitted to a WorkerPool, with the parts of submitit's Job the launcher uses."""

    def __init__(self, pool: WorkerPool, name: str) -> None:
        self.pool, self.name = pool, name
        self.job_id = f"worker task {int(name)}"
        self._finished, self._error, self._claim = False, None, None

    def done(self) -> bool:
        """Whether the call has finished (or its worker died with it); never blocks."""
        if not self._finished:
            self._finished, self._error, self._claim = self.pool.outcome(self.name, self._claim)
        return self._finished

    def exception(self) -> BaseException | None:
        """The call's error (None if it succeeded), once done()."""
        self.done()
        return self._error
