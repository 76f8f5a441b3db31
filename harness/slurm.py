"""Slurm launching through submitit: a validated `executor.slurm` section, the executor, the sbatch
script it submits (rendered without a cluster), and requeue-on-preemption training jobs.

Safety. Every value that reaches the sbatch script is checked here before submitit sees it, because
submitit writes `#SBATCH --key=value` lines and a value holding a newline would start a new line of
the script, which bash runs. So:

- names (partition, account, qos, job_name) match `[A-Za-z0-9_.-]+` (a partition may be a
  comma-separated list of such names);
- constraint matches `[A-Za-z0-9_.,:|&*()\\[\\]-]+` (Slurm's feature expressions: `a100&ib`,
  `[rack1|rack2]`, `gpu*2`); exclude is a node list, `[A-Za-z0-9_.,\\[\\]-]+` (`node[01-04],gpu7`);
- `additional` (extra `#SBATCH --option=value` lines): options match `[A-Za-z][A-Za-z0-9_-]*` and
  may not be one this section or submitit already sets; string values match
  `[A-Za-z0-9_.,:=/@+|&*()\\[\\]-]+` (no spaces, quotes, `;`, `$`, backticks, `~`, `%`, control
  characters); numbers are fine; `true` gives a bare flag (`--exclusive`);
- numbers are integers (mem_gb: a number) with lower bounds;
- `setup` lines are the one place a user writes shell on purpose: they go into the script as they
  are, but one entry may not hold a newline, carriage return or NUL (one entry, one line);
- the job folder may not hold control characters or `%` (Slurm expands `%j`, `%A`... in log paths).

submitit also shell-quotes every #SBATCH value (Slurm's #SBATCH parser strips those quotes, and ends
a value at an unescaped `#`, which no pattern allows); the patterns above are the real guard.

Requeues. `TrainingJob` wraps harness.job.run_job as a submitit Checkpointable: on the preemption /
time-limit signal (USR2, `signal_delay_s` before the limit) submitit calls its `checkpoint`, which
records the requeue in `<results>/runs/<run_id>/requeues.jsonl` and resubmits the same call; the
training loop resumes from its own last periodic checkpoint. At most `max_requeues` requeues per
submission; the next signal is refused (recorded, and the run fails with RequeueLimitError).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import submitit
from submitit.core.utils import DelayedSubmission, UncompletedJobError
from submitit.slurm.slurm import SlurmExecutor

from harness import io, store
from harness.errors import ConfigError, check_int, did_you_mean

REQUEUES = "requeues.jsonl"

_NAME = r"[A-Za-z0-9_.-]+"
PATTERNS: dict[str, tuple[str, str]] = {  # field -> (full-match regex, what it allows, for messages)
    "partition": (rf"{_NAME}(,{_NAME})*", "letters, digits, '_', '.', '-' (several partitions: comma-separated)"),
    "account": (_NAME, "letters, digits, '_', '.', '-'"),
    "qos": (_NAME, "letters, digits, '_', '.', '-'"),
    "job_name": (_NAME, "letters, digits, '_', '.', '-'"),
    "constraint": (r"[A-Za-z0-9_.,:|&*()\[\]-]+", "letters, digits and _ . , : | & * ( ) [ ] -"),
    "exclude": (r"[A-Za-z0-9_.,\[\]-]+", "a node list: letters, digits and _ . , [ ] -"),
}
OPTION_PATTERN = r"[A-Za-z][A-Za-z0-9_-]*"
VALUE_PATTERN = r"[A-Za-z0-9_.,:=/@+|&*()\[\]-]+"
VALUE_ALLOWED = "letters, digits and _ . , : = / @ + | & * ( ) [ ] -"
MAX_VALUE_LENGTH = 256

# sbatch options that `additional` may not set: this section's own fields, and what submitit manages
# (log paths, arrays, the preemption signal) or max_requeues controls.
OWN_OPTIONS = {"partition": "partition", "account": "account", "qos": "qos", "job-name": "job_name",
               "nodes": "nodes", "ntasks-per-node": "tasks_per_node", "cpus-per-task": "cpus_per_task",
               "gpus-per-node": "gpus_per_node", "mem": "mem_gb", "time": "time_min",
               "constraint": "constraint", "exclude": "exclude"}
MANAGED_OPTIONS = {"output", "error", "array", "open-mode", "signal", "requeue", "no-requeue", "wrap", "parsable",
                   "ntasks", "gpus", "gres-flags"}


@dataclass(frozen=True)
class SlurmConfig:
    """A grid's `executor.slurm` section: what each run's sbatch job asks for.

    `additional` holds extra sbatch options as sorted (option, value) pairs (a mapping in YAML);
    `setup` holds shell lines run in the batch script before the job (e.g. `module load cuda`).
    None means "not asked for" (the cluster's default). Construction validates everything
    (ConfigError naming the field); parse_slurm gives errors the grid file's name and key.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str = "clipsteer"
    nodes: int = 1
    gpus_per_node: int = 0  # 0: no GPU asked for (no --gpus-per-node line)
    tasks_per_node: int = 1  # processes per node, trained data-parallel: one per GPU
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 60
    constraint: str | None = None
    exclude: str | None = None
    additional: tuple[tuple[str, Any], ...] = ()
    setup: tuple[str, ...] = ()
    array_parallelism: int = 256  # most array tasks running at once (only for array submissions)
    max_requeues: int = 3  # requeues after preemption / time limit, per submission
    signal_delay_s: int = 90  # USR2 this long before the time limit (time to record the requeue)

    def __post_init__(self) -> None:
        clean = _normalize({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "SlurmConfig", "slurm")
        for name, value in clean.items():
            object.__setattr__(self, name, value)


FIELDS = tuple(f.name for f in dataclasses.fields(SlurmConfig))


def parse_slurm(raw: Any, src: str, key: str) -> SlurmConfig:
    """Validate a grid's Slurm section (`raw`, found at `key` in file `src`): unknown keys, types,
    sizes and every string that would reach the sbatch script. Errors are ConfigError(src, key.field)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(src, key, f"must be a mapping, got {type(raw).__name__}")
    for k in raw:
        if k not in FIELDS:
            raise ConfigError(src, f"{key}.{k}", f"unknown key{did_you_mean(str(k), FIELDS)}; "
                              f"allowed: {', '.join(sorted(FIELDS))}")
    defaults = {f.name: getattr(SlurmConfig, f.name, None) for f in dataclasses.fields(SlurmConfig)}
    return SlurmConfig(**_normalize({**defaults, **raw}, src, key))


def _normalize(values: dict[str, Any], src: str, key: str) -> dict[str, Any]:
    """Checked, canonical field values (integral floats as ints, lists as tuples, `additional` as
    sorted pairs); ConfigError(src, key.field) on the first bad one."""
    def where(name: str) -> str:
        return f"{key}.{name}" if key else name

    out: dict[str, Any] = {}
    for name in PATTERNS:
        value = values[name]
        if value is None and name != "job_name":
            out[name] = None
            continue
        out[name] = _pattern(value, name, src, where(name))
    for name, minimum in (("nodes", 1), ("gpus_per_node", 0), ("tasks_per_node", 1), ("time_min", 1),
                          ("array_parallelism", 1), ("max_requeues", 0), ("signal_delay_s", 1)):
        out[name] = check_int(values[name], src, where(name), minimum)
    out["cpus_per_task"] = None if values["cpus_per_task"] is None else \
        check_int(values["cpus_per_task"], src, where("cpus_per_task"), 1)
    out["mem_gb"] = None if values["mem_gb"] is None else _mem(values["mem_gb"], src, where("mem_gb"))
    if out["signal_delay_s"] >= out["time_min"] * 60:
        raise ConfigError(src, where("signal_delay_s"), f"must be less than time_min in seconds "
                          f"({out['time_min'] * 60}), got {out['signal_delay_s']}: the signal comes that long "
                          "before the time limit")
    out["additional"] = _additional(values["additional"], src, where("additional"))
    out["setup"] = _setup(values["setup"], src, where("setup"))
    return out


def _mem(raw: Any, src: str, key: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise ConfigError(src, key, f"must be a number of GB, got {raw!r}")
    if raw <= 0:
        raise ConfigError(src, key, f"must be > 0 (leave it out for the cluster's default), got {raw}")
    if raw * 1024 < 1:
        raise ConfigError(src, key, f"must be at least 1 MB (1/1024 GB), got {raw}")
    return int(raw) if float(raw).is_integer() else float(raw)


def _pattern(raw: Any, name: str, src: str, key: str) -> str:
    regex, allowed = PATTERNS[name]
    if not isinstance(raw, str) or not raw:
        raise ConfigError(src, key, f"must be a non-empty string, got {raw!r}")
    if not re.fullmatch(regex, raw):
        raise ConfigError(src, key, f"{raw!r} is not allowed: may contain only {allowed} "
                          "(no spaces, quotes, ';', '$', backticks or newlines)")
    return raw


def _additional(raw: Any, src: str, key: str) -> tuple[tuple[str, Any], ...]:
    if raw is None:
        return ()
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, (tuple, list)) and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in raw):
        items = [tuple(p) for p in raw]
    else:
        raise ConfigError(src, key, f"must be a mapping of sbatch option to value, got {type(raw).__name__}")
    seen: dict[str, str] = {}
    out = []
    for option, value in items:
        where = f"{key}.{option}"
        if not isinstance(option, str) or not re.fullmatch(OPTION_PATTERN, option):
            raise ConfigError(src, where, f"{option!r} is not an sbatch option name: a letter, then letters, "
                              "digits, '_' or '-' (without the leading '--')")
        flag = option.lower().replace("_", "-")  # submitit writes '_' as '-'
        if flag in OWN_OPTIONS:
            raise ConfigError(src, where, f"--{flag} has its own key: set {key.rsplit('.', 1)[0]}."
                              f"{OWN_OPTIONS[flag]} instead")
        if flag in MANAGED_OPTIONS:
            raise ConfigError(src, where, f"--{flag} is set by submitit or by max_requeues and cannot be overridden")
        if flag in seen:
            raise ConfigError(src, where, f"--{flag} is given twice (also as {seen[flag]!r})")
        seen[flag] = option
        if value is True:
            pass
        elif isinstance(value, bool) or value is None:
            raise ConfigError(src, where, f"must be a value, or true for a bare flag (leave the option out "
                              f"to not set it), got {value!r}")
        elif isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ConfigError(src, where, f"must be a finite number, got {value!r}")
        elif isinstance(value, str):
            if not re.fullmatch(VALUE_PATTERN, value) or len(value) > MAX_VALUE_LENGTH:
                raise ConfigError(src, where, f"{value!r} is not allowed: a value may contain only {VALUE_ALLOWED}, "
                                  f"at most {MAX_VALUE_LENGTH} characters (no spaces, quotes, ';', '$', "
                                  "backticks or newlines)")
        else:
            raise ConfigError(src, where, f"must be a string, a number or true, got {type(value).__name__}")
        out.append((option, value))
    return tuple(sorted(out))


def _setup(raw: Any, src: str, key: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(src, key, f"must be a list of shell lines, got {type(raw).__name__}")
    for i, line in enumerate(raw):
        if not isinstance(line, str) or not line.strip():
            raise ConfigError(src, f"{key}[{i}]", f"must be a non-empty string (one shell line), got {line!r}")
        if any(c in line for c in "\n\r\0"):
            raise ConfigError(src, f"{key}[{i}]", f"{line!r} holds a newline, carriage return or NUL: "
                              "give one shell line per entry")
    return tuple(raw)


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
    _normalize({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, "SlurmConfig", "slurm")
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
    return Path(run_dir) / REQUEUES


def requeue_records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's requeue records (refusals included), oldest first; a line cut by a kill is skipped."""
    return io.read_jsonl(requeues_path(run_dir))


def requeue_count(run_dir: Path, attempt: str | None = None) -> int:
    """How many times the run in `run_dir` was requeued (refusals not counted); only those of one
    submission (TrainingJob.attempt) when `attempt` is given."""
    return sum(1 for r in requeue_records(run_dir)
               if r.get("requeued") is True and (attempt is None or r.get("attempt") == attempt))


def job_environment() -> submitit.JobEnvironment | None:
    try:
        return submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return None


class TrainingJob(submitit.helpers.Checkpointable):
    """A run as a submitit job that is requeued after preemption or its time limit.

    `job(spec, results, threads, show, *extra)` runs harness.job.run_job with those arguments, on every
    task of the job (the tasks train data-parallel; rank 0 records the run, and only rank 0 handles
    submitit's checkpoint signal). submitit's exit-to-requeue passes through store.recorded as SystemExit, which leaves the run
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
            store.fail(store.run_dir(Path(results), spec["run_id"]), limit)
            raise limit from error

    def work(self, spec: dict[str, Any], results: str | Path, threads: int, show: bool, *extra: Any,
             **options: Any) -> dict[str, Any]:
        """The job's work: run_job with all the job's arguments (further ones, such as the launcher's lease
        token and code version, passed on as given); looked up at call time, so it can be replaced."""
        from harness import job
        return job.run_job(spec, results, threads, show, *extra, **options)

    def checkpoint(self, spec: dict[str, Any], results: str | Path, threads: int = 1, show: bool = False,
                   *extra: Any, **options: Any) -> DelayedSubmission | None:
        """Called by submitit on the preemption/timeout signal: record the requeue and resubmit the same
        call, or, past max_requeues, record the refusal and return None (the job then fails)."""
        rdir = store.run_dir(Path(results), spec["run_id"])
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

