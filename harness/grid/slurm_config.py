"""The `executor.slurm` section of a grid, validated into a SlurmConfig.

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
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from harness.errors import ConfigError, check_int, did_you_mean

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
    """A grid's `executor.slurm` section: what each run's Slurm job (an array task) asks for.

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
    array_parallelism: int = 256  # most tasks of one job array running at once
    max_array_size: int = 1000  # most tasks in one job array (Slurm's MaxArraySize, 1001 by default, caps it)
    max_requeues: int = 3  # requeues after preemption / time limit, per submission
    signal_delay_s: int = 90  # USR2 this long before the time limit (time to record the requeue)

    def __post_init__(self) -> None:
        clean = normalize({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "SlurmConfig", "slurm")
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
    return SlurmConfig(**normalize({**defaults, **raw}, src, key))


def normalize(values: dict[str, Any], src: str, key: str) -> dict[str, Any]:
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
                          ("array_parallelism", 1), ("max_array_size", 1), ("max_requeues", 0), ("signal_delay_s", 1)):
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
