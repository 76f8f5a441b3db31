"""A run's directory and the name of every file in it (a feature cache's directory is one too).

results/<grid>/runs/<run_id>/
    spec.json       the unit's spec (what the id hashes)
    status.json     state: running | done | failed, with times, host, pid, error
    lease.json      which live process works on the run now (harness.store.lease), locked by .lease.lock
    attempts.jsonl  one line per start of the run (host, pid, time), one per training to the last step;
                    requeues.jsonl: Slurm requeues
    metrics.jsonl   training log;  checkpoints/step-*-<sha256>.pt;  branch_points/, branch.json (wsd ladders)
    kept_indices.pt the samples a static selection keeps;  model.pt: the final weights
    eval.json       per-task metrics and the average;  error.txt: a failure's traceback
    features/       a feature cache's feature shards (features.pt in the earlier format)
    result.json     the run's row of the leaderboard (written last: its presence means done)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import io

RUNS = "runs"
# version of result.json's fields; 2 added the compute breakdown (C_total), 3 the reference diagnostics
RESULT_FORMAT = 3


class _File:
    """A file (or folder) of every run directory: its path on a RunDir, itself (with its `name`) on the class."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, rdir: RunDir | None, owner: type) -> Any:
        return self if rdir is None else rdir.path / self.name


@dataclass(frozen=True)
class RunDir:
    """The directory `path` of one unit (a run or a feature cache): its files by name, and its state on disk."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, results: Path, run_id: str) -> RunDir:
        """The directory of unit `run_id` under a grid's results directory."""
        return cls(Path(results) / RUNS / run_id)

    @classmethod
    def all(cls, results: Path) -> list[RunDir]:
        """Every unit directory under a grid's results directory, by name."""
        runs = Path(results) / RUNS
        return [cls(p) for p in sorted(runs.iterdir()) if p.is_dir()] if runs.is_dir() else []

    spec = _File("spec.json")
    status = _File("status.json")
    result = _File("result.json")
    eval = _File("eval.json")
    error = _File("error.txt")
    attempts = _File("attempts.jsonl")
    requeues = _File("requeues.jsonl")
    lease = _File("lease.json")
    lease_lock = _File(".lease.lock")
    metrics = _File("metrics.jsonl")
    checkpoints = _File("checkpoints")
    branch_points = _File("branch_points")
    branch = _File("branch.json")  # where a wsd branch started from its trunk (harness.run.branch)
    kept_indices = _File("kept_indices.pt")
    final_model = _File("model.pt")
    feature_shards = _File("features")
    feature_table = _File("features.pt")  # a feature cache of the earlier format

    def read_status(self) -> dict[str, Any] | None:
        """The status record, or None if the unit never started."""
        return io.read_json(self.status) if self.status.exists() else None

    def state(self) -> str:
        """'done' (a result.json of the current RESULT_FORMAT exists: the one test of done), 'stale' (a result
        written by an older harness, lacking fields the report needs: run again), 'failed', 'running' or
        'missing' (never started)."""
        if self.result.exists():  # written atomically: whole; it is this unit's when it names this directory
            result = io.read_json(self.result)
            ours = result.get("run_id", self.path.name) == self.path.name
            return "done" if ours and result.get("format") == RESULT_FORMAT else "stale"
        status = self.read_status()
        return status["state"] if status else "missing"


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint file holds, from its name step-<step>-<sha256>.pt."""
    return int(Path(path).stem.split("-")[1])


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The run's checkpoints, newest first."""
    return sorted(RunDir(run_dir).checkpoints.glob("step-*.pt"), key=checkpoint_step, reverse=True)


def requeue_records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's requeue records (refusals included), oldest first; a line cut by a kill is skipped."""
    return io.read_jsonl(RunDir(run_dir).requeues)


def requeue_count(run_dir: Path, attempt: str | None = None) -> int:
    """How many times the run in `run_dir` was requeued (refusals not counted); only those of one
    submission (TrainingJob.attempt) when `attempt` is given."""
    return sum(1 for r in requeue_records(run_dir)
               if r.get("requeued") is True and (attempt is None or r.get("attempt") == attempt))
