"""Slurm launching through submitit: the executor, job arrays, the sbatch script it submits (rendered
without a cluster), and requeue-on-preemption training jobs. The section itself is validated in
harness.grid.slurm_config.

Arrays. Units that are ready together go out as one job array per (resource shape, dependencies), through
submitit's `executor.batch()`, at most `max_array_size` tasks an array and `array_parallelism` of them
running at once: a 1,000-run stage is one sbatch call, not 1,000 (clusters cap submissions, MaxSubmitJobs).
Each task is one run, with its own job id `<array>_<index>`, lease, result, failure and requeues.

Requeues. `TrainingJob` wraps harness.run.job.run_job as a submitit Checkpointable: on the preemption /
time-limit signal (USR2, `signal_delay_s` before the limit) submitit calls its `checkpoint`, which
records the requeue in `<results>/runs/<run_id>/requeues.jsonl` and resubmits the same call; the
training loop resumes from its own last periodic checkpoint. At most `max_requeues` requeues per
submission; the next signal is refused (recorded, and the run fails with RequeueLimitError).
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import submitit
from submitit.core.utils import DelayedSubmission, UncompletedJobError
from submitit.slurm.slurm import SlurmExecutor

from harness import io
from harness.errors import ConfigError, check_int
from harness.grid.slurm_config import SlurmConfig, normalize
from harness.store import records
from harness.store.rundir import RunDir, requeue_count


def _check_folder(folder: Path) -> Path:
    """The submitit folder, absolute; refused if it would break the script or Slurm's log paths."""
    folder = Path(folder).expanduser().absolute()
    text = str(folder)
    if "%" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigError(text, "", "a Slurm job folder may not contain '%' (Slurm expands %j, %A... in log "
                          "paths) or control characters such as newlines")
    return folder


def executor_parameters(cfg: SlurmConfig) -> dict[str, Any]:
    """`cfg` as keyword arguments of submitit's AutoExecutor.update_parameters (with cluster="slurm").
    Checks `cfg` again first (a frozen SlurmConfig is checked when made, but can be forced)."""
    normalize({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, "SlurmConfig", "slurm")
    additional = dict(cfg.additional)
    if cfg.max_requeues > 0:
        additional["requeue"] = True  # a cluster with JobRequeue=0 would otherwise refuse `scontrol requeue`
    params = {
        "name": cfg.job_name, "timeout_min": cfg.time_min, "nodes": cfg.nodes, "tasks_per_node": cfg.tasks_per_node,
        "gpus_per_node": cfg.gpus_per_node or None, "cpus_per_task": cfg.cpus_per_task, "mem_gb": cfg.mem_gb,
        "slurm_partition": cfg.partition, "slurm_account": cfg.account, "slurm_qos": cfg.qos,
        "slurm_constraint": cfg.constraint, "slurm_exclude": cfg.exclude,
        "slurm_additional_parameters": additional or None, "slurm_setup": list(cfg.setup) or None,
        "slurm_array_parallelism": cfg.array_parallelism, "slurm_signal_delay_s": cfg.signal_delay_s,
    }
    return {k: v for k, v in params.items() if v is not None}


def dependency_parameters(cfg: SlurmConfig, after: Sequence[str] = ()) -> dict[str, Any]:
    """executor_parameters of a job that Slurm starts only once jobs `after` completed successfully
    (afterok), and cancels itself if one of them fails (kill-on-invalid-dep), so a stage waits for the
    stage it reads in the queue, not in a client."""
    params = executor_parameters(cfg)
    if after:
        params["slurm_additional_parameters"] = {**params.get("slurm_additional_parameters", {}),
                                                 "dependency": "afterok:" + ":".join(after),
                                                 "kill_on_invalid_dep": "yes"}
    return params


def cache_shape(cfg: SlurmConfig) -> SlurmConfig:
    """The resources of a reference-feature cache job: the work of one process, so one task on one node
    (with one GPU where runs get GPUs) rather than a run's whole shape."""
    return dataclasses.replace(cfg, nodes=1, tasks_per_node=1, gpus_per_node=min(cfg.gpus_per_node, 1))


@dataclass(frozen=True)
class Submission:
    """One unit to submit: the resources its job asks for, the job ids it waits for (afterok), and the call."""

    shape: SlurmConfig
    after: tuple[str, ...]
    function: Callable[..., Any]
    args: tuple[Any, ...]


def submit_arrays(executor: submitit.Executor, submissions: Sequence[Submission]) -> Iterator[tuple[int, submitit.Job]]:
    """Submit `submissions` in as few sbatch calls as Slurm allows: one job array per distinct (shape, after),
    split at shape.max_array_size tasks (a group of one is a plain job). Yields (index in `submissions`, its
    job) after each sbatch call, so the caller can hand each run's lease to its job as soon as it exists."""
    groups: dict[tuple[SlurmConfig, tuple[str, ...]], list[int]] = {}
    for i, sub in enumerate(submissions):
        groups.setdefault((sub.shape, sub.after), []).append(i)
    for (shape, after), indices in groups.items():
        executor.update_parameters(**dependency_parameters(shape, after))
        for start in range(0, len(indices), shape.max_array_size):
            chunk = indices[start:start + shape.max_array_size]
            with executor.batch():
                jobs = [executor.submit(submissions[i].function, *submissions[i].args) for i in chunk]
            yield from zip(chunk, jobs)


class SlurmUnavailableError(ConfigError):
    """Slurm's commands (srun, sbatch) are not on this machine's PATH (bad input for this machine: exit 2)."""


def make_slurm_executor(cfg: SlurmConfig, folder: Path) -> submitit.Executor:
    """submitit's AutoExecutor on Slurm, with `cfg`'s parameters; its jobs write logs and pickles under
    `folder` (which must be on a file system the compute nodes share). submitit requeues a timed-out
    checkpointable job at most `max_requeues` times, like TrainingJob's own bound (which also counts
    preemptions). Raises SlurmUnavailableError off a cluster (use sbatch_script for a dry run)."""
    folder = _check_folder(folder)
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=cfg.max_requeues)
    except RuntimeError as error:
        raise SlurmUnavailableError("executor.kind", "", f"'slurm' needs Slurm's srun and sbatch on PATH ({error}); "
                                    "`clipsteer run GRID --dry-run` shows the sbatch script it would submit") from error
    executor.update_parameters(**executor_parameters(cfg))
    return executor


class _ScriptOnlySlurmExecutor(SlurmExecutor):
    """submitit's SlurmExecutor without the `srun`-on-PATH check, to render sbatch scripts off a cluster.
    A subclass, so submitit itself is untouched; it refuses to submit anything."""

    @classmethod
    def affinity(cls) -> int:
        return 2

    def _submit_command(self, command: str) -> submitit.Job:
        raise RuntimeError("this executor only renders sbatch scripts; use make_slurm_executor to submit")


def sbatch_script(cfg: SlurmConfig, folder: Path, array_size: int | None = None, after: Sequence[str] = ()) -> str:
    """The sbatch script submitit would submit for one job (or a job array of `array_size` tasks, as
    `executor.batch()` / map_array make) of `cfg` with logs under `folder`, waiting for jobs `after`;
    needs no cluster, writes nothing."""
    folder = _check_folder(folder)
    executor = _ScriptOnlySlurmExecutor(folder, max_num_timeout=cfg.max_requeues)
    params = dependency_parameters(cfg, after)
    # route the parameters as AutoExecutor does: generic names converted, `slurm_` ones stripped
    native = executor._convert_parameters({k: v for k, v in params.items() if not k.startswith("slurm_")})
    native.update({k[len("slurm_"):]: v for k, v in params.items() if k.startswith("slurm_")})
    executor.update_parameters(**native)
    if array_size is not None:
        if isinstance(array_size, bool) or not isinstance(array_size, int) or array_size < 1:
            raise ValueError(f"array_size must be a positive integer, got {array_size!r}")
        executor.parameters["map_count"] = array_size  # what SlurmExecutor sets for an array submission
    return executor._make_submission_file_text(executor._submitit_command_str, uid="")


# ----------------------------------------------------------------------------------------------------
# requeue-on-preemption training jobs


class RequeueLimitError(RuntimeError):
    """A job was preempted or timed out once more than its max_requeues allows."""


def requeues_path(run_dir: Path) -> Path:
    return RunDir(run_dir).requeues


def job_environment() -> submitit.JobEnvironment | None:
    try:
        return submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return None


class TrainingJob(submitit.helpers.Checkpointable):
    """A run as a submitit job that is requeued after preemption or its time limit.

    `job(spec, results, threads, show, *extra)` runs harness.run.job.run_job with those arguments, on every
    task of the job (the tasks train data-parallel; rank 0 records the run, and only rank 0 handles
    submitit's checkpoint signal). submitit's exit-to-requeue passes through records.recorded as SystemExit, which leaves the run
    'running' and keeps its lease for the requeued job. On submitit's preemption/timeout signal, `checkpoint` (same arguments) appends a record to
    `<results>/runs/<run_id>/requeues.jsonl` and returns a DelayedSubmission of this same call, which
    submitit requeues; the training resumes from its last periodic checkpoint. Once this submission
    (`attempt`) has been requeued `max_requeues` times, the next signal is refused: the refusal is
    recorded and the run fails with RequeueLimitError. `timeout_min` (the job's time limit) only
    tells a time-out from a preemption in the records, with submitit's own rule.
    """

    def __init__(self, max_requeues: int = 3, timeout_min: int | None = None) -> None:
        self.max_requeues = check_int(max_requeues, "TrainingJob", "max_requeues", 0)
        self.timeout_min = None if timeout_min is None else check_int(timeout_min, "TrainingJob", "timeout_min", 1)
        self.attempt = uuid.uuid4().hex[:12]  # one submission; kept across its requeues (pickled with self)
        self._started: float | None = None
        self._decision: dict[str, Any] | None = None  # what checkpoint decided, for __call__ to finish

    def __call__(self, spec: dict[str, Any], results: str | Path, threads: int = 1, show: bool = False,
                 *extra: Any, **options: Any) -> dict[str, Any] | None:
        self._started, self._decision = time.time(), None
        try:
            return self.work(spec, results, threads, show, *extra, **options)
        except UncompletedJobError as error:  # submitit's "not requeued" after checkpoint refused
            decision = self._decision
            if decision is None or decision["requeued"]:
                raise
            limit = RequeueLimitError(decision["why"])
            records.fail(records.run_dir(Path(results), spec["run_id"]), limit)
            raise limit from error

    def work(self, spec: dict[str, Any], results: str | Path, threads: int, show: bool, *extra: Any,
             **options: Any) -> dict[str, Any]:
        """The job's work: run_job with all the job's arguments (further ones, such as the launcher's lease
        token and code version, passed on as given); looked up at call time, so it can be replaced."""
        from harness.run import job
        return job.run_job(spec, results, threads, show, *extra, **options)

    def checkpoint(self, spec: dict[str, Any], results: str | Path, threads: int = 1, show: bool = False,
                   *extra: Any, **options: Any) -> DelayedSubmission | None:
        """Called by submitit on the preemption/timeout signal: record the requeue and resubmit the same
        call, or, past max_requeues, record the refusal and return None (the job then fails)."""
        rdir = records.run_dir(Path(results), spec["run_id"])
        before = requeue_count(rdir, self.attempt)
        elapsed = None if self._started is None else round(time.time() - self._started, 3)
        env = job_environment()
        record = {"time": time.time(), "reason": self._reason(elapsed),
                  "signal": f"SIG{submitit.JobEnvironment.USR_SIG}", "elapsed_s": elapsed, "attempt": self.attempt,
                  "max_requeues": self.max_requeues,
                  "job_id": env.job_id if env is not None else None, "host": socket.gethostname(), "pid": os.getpid()}
        if before >= self.max_requeues:
            why = (f"{record['reason']} after {before} requeue(s): max_requeues={self.max_requeues} reached, "
                   "not requeued")
            record.update(requeued=False, count=before, why=why)
            io.append_jsonl(requeues_path(rdir), record)
            self._decision = record
            return None
        record.update(requeued=True, count=before + 1)
        io.append_jsonl(requeues_path(rdir), record)
        self._decision = record
        return DelayedSubmission(self, spec, results, threads, show, *extra, **options)

    def _reason(self, elapsed: float | None) -> str:
        """'timeout' or 'preemption' by submitit's rule (a job past min(80%, limit - 10 min) of its time
        limit timed out); 'preemption or timeout' when the limit or start is unknown."""
        if self.timeout_min is None or elapsed is None:
            return "preemption or timeout"
        limit = self.timeout_min * 60
        return "timeout" if elapsed >= min(0.8 * limit, limit - 600) else "preemption"

