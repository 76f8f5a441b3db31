"""The result store: one directory per unit (harness.store.rundir names its files), written atomically,
and the results table read from it.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness import io
from harness.grid.runspec import RunSpec, Unit, identity
from harness.provenance import provenance
from harness.run.compute import PARTS, c_total
from harness.store import lease
from harness.store.rundir import RESULT_FORMAT, RunDir

if TYPE_CHECKING:
    import pandas as pd


class SpecConflict(RuntimeError):
    """A run directory holds a different spec than the one that names it: it is never reused."""


def run_dir(results: Path, run_id: str) -> Path:
    """Directory of run `run_id` under a grid's results directory."""
    return RunDir.of(results, run_id).path


def read_status(rdir: Path) -> dict[str, Any] | None:
    """The run's status record, or None if it never started."""
    return RunDir(rdir).read_status()


def state(results: Path, run_id: str, spec: Unit | None = None) -> str:
    """'done' (a result.json of the current RESULT_FORMAT exists: the one test of done), 'stale' (a result
    written by an older harness, lacking fields the report needs: run again), 'failed', 'running' or
    'missing' (never started); with `spec`, 'conflict' when the directory's spec.json is not that spec.

    The run id hashes everything that determines a result, so a result under that id is the spec's result.
    """
    if spec is not None and _holds_other_spec(run_dir(results, run_id), spec):
        return "conflict"
    return RunDir.of(results, run_id).state()


def _holds_other_spec(rdir: Path, spec: Unit) -> bool:
    """Whether the run directory's spec.json is a spec whose identity differs from `spec`'s."""
    path = RunDir(rdir).spec
    return path.exists() and identity(io.read_json(path)) != identity(spec.to_json())


def is_done(results: Path, spec: Unit) -> bool:
    """True when unit `spec` has finished."""
    return state(results, spec.run_id, spec) == "done"


def begin(rdir: Path, spec: Unit) -> None:
    """Record that a unit starts (its spec, an attempt line and a 'running' status); clear an earlier
    failure's result and the temporary files of writes a kill cut short. A directory holding another
    spec is refused (SpecConflict), never reused."""
    unit = RunDir(rdir)
    if _holds_other_spec(unit.path, spec):
        raise SpecConflict(f"{unit.path} holds a run of a different spec than the one named {spec.run_id}; "
                           "it is left as it is: move it away to run this spec")
    for folder in (unit.path, unit.checkpoints):
        io.remove_temporaries(folder)
    io.write_json(unit.spec, spec.to_json())
    unit.result.unlink(missing_ok=True)
    started = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    io.append_jsonl(unit.attempts, started)
    io.write_json(unit.status, {"state": "running", **started})


def attempts(rdir: Path) -> int:
    """How many times the run was started."""
    return sum("started" in line for line in io.read_jsonl(RunDir(rdir).attempts))


def trained(rdir: Path, steps: int, resumed_from: int) -> None:
    """Note in attempts.jsonl that this process trained the run to its last step `steps` (from step
    `resumed_from`): a run trained to the end by two processes shows two such lines."""
    io.append_jsonl(RunDir(rdir).attempts, {"host": socket.gethostname(), "pid": os.getpid(), "trained": steps,
                                            "resumed_from": resumed_from, "time": time.time()})


def reason(error: BaseException) -> str:
    """The one line a table shows for an error: its type and the last line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__


def fail(rdir: Path, error: BaseException) -> None:
    """Record a failed run: the error's last line in status.json, the traceback in error.txt."""
    unit = RunDir(rdir)
    io.write_text(unit.error, "".join(traceback.format_exception(error)))
    io.write_json(unit.status, {"state": "failed", "finished": time.time(), "error": reason(error)})


def fail_unstarted(rdir: Path, spec: Unit, reason: str) -> None:
    """Record a unit that could not start (e.g. its reference failed)."""
    unit = RunDir(rdir)
    io.write_json(unit.spec, spec.to_json())
    io.write_json(unit.status, {"state": "failed", "finished": time.time(), "error": reason})


def finish(rdir: Path, result: dict[str, Any]) -> None:
    """Record a finished run: result.json with how it was made (harness.provenance; from here on the run is
    done), then a 'done' status (and no error.txt of an earlier, killed attempt)."""
    unit = RunDir(rdir)
    io.write_json(unit.result, {**result, "format": RESULT_FORMAT, "provenance": provenance()})
    settle(rdir)


def settle(rdir: Path) -> bool:
    """Make a done run's records agree with its result.json: a status other than 'done' (or none), or an
    error.txt, left by a kill between the result and the status or by a launcher that took the job system's
    word over the disk, is repaired. Returns whether the run is done."""
    unit = RunDir(rdir)
    if unit.state() != "done":
        return False
    status = unit.read_status() or {}
    if status.get("state") != "done":
        io.write_json(unit.status, {"state": "done", "finished": time.time()})
    unit.error.unlink(missing_ok=True)
    return True


def recorded(rdir: Path, spec: Unit, work: Callable[[], dict[str, Any]],
             lease_token: str | None = None) -> dict[str, Any]:
    """Run `work` as unit `spec` in `rdir` under the run's lease (the launcher's, joined by `lease_token`,
    or one taken here): begin, then finish with its result, or record its failure and re-raise (so a
    failure is on disk even if the launcher is gone). A run whose lease was lost writes nothing more; one
    leaving by SystemExit (requeued after a preemption signal) keeps its lease and its 'running' status."""
    held = lease.adopt(rdir, lease_token) if lease_token else lease.acquire(rdir)
    if held is None:
        raise lease.LeaseLost(f"run {Path(rdir).name} is being worked on by {lease.describe(lease.read(rdir))}")
    try:
        with lease.Heartbeat([held]) as beat:
            begin(rdir, spec)
            try:
                result = work()
                if beat.lost:
                    raise lease.LeaseLost(f"the lease on {Path(rdir).name} was taken over while this process worked")
            except lease.LeaseLost:
                raise
            except SystemExit:  # the process leaves to be requeued (submitit, on preemption): not a failure
                held = None  # keep the lease for the requeued job; it lapses if nobody comes back
                raise
            except BaseException as error:
                try:
                    fail(rdir, error)
                except OSError as unrecorded:  # e.g. the disk is full: the launcher reports the error instead
                    print(f"could not record the failure of {Path(rdir).name} ({reason(unrecorded)})", file=sys.stderr)
                raise
            lease.renew(held)  # raises LeaseLost if another process took the run meanwhile
            finish(rdir, result)
    finally:
        if held is not None:
            lease.release(held)
    return result


def provenances(results: Path, specs: list[RunSpec]) -> list[dict[str, Any]]:
    """The provenance records (harness.provenance) of the finished runs of `specs`; results older than provenance
    have none."""
    found = []
    for spec in specs:
        path = RunDir.of(results, spec.run_id).result
        if path.is_file() and "provenance" in (result := io.read_json(path)):
            found.append(result["provenance"])
    return found


def reference_run_ids(specs: list[RunSpec]) -> set[str]:
    """Ids of the runs that other specs use as their reference model."""
    return {run_id for s in specs if s.reference is not None for run_id in s.reference.requires()}


NUMERIC_COLUMNS = ("gflops_per_pair", *PARTS, "cache_share", "c_total", "c_spent", "trained_pool", "average",
                   "wall_time_s")


def results_table(results: Path, specs: list[RunSpec], cache_shares: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per spec (done or failed; never-started runs are left out), in the report schema.

    Compute columns: C_paper, its companions (harness.run.compute.PARTS) and C_total, which adds each
    run's share of a reference-feature cache from `cache_shares` (run id -> GFLOPs). C_total is what the
    run's model took; c_spent is what the sweep spent on the run: C_total less the trunk's share for a
    wsd branch (harness.run.branch), so summed over runs it counts a ladder's shared trunk once."""
    import pandas as pd  # reports only: `clipsteer status` reads records without pandas

    cache_shares = cache_shares or {}
    reference_ids = reference_run_ids(specs)
    rows = []
    for spec in specs:
        rdir = RunDir.of(results, spec.run_id)
        if rdir.state() in ("missing", "running", "stale"):
            continue
        status = rdir.read_status() or {}
        ref = spec.reference
        row = {"run_id": spec.run_id, "stage": spec.stage, "method": spec.method.name,
               "model": spec.model, "samples_seen": spec.samples_seen, "seed": spec.seed,
               "is_reference": spec.run_id in reference_ids, "reference": None if ref is None else ref.label(),
               "reference_features": None if ref is None else ref.features,
               "status": "failed", "error": status.get("error")}
        if rdir.result.exists():
            result = io.read_json(rdir.result)
            compute, share = result["compute"], cache_shares.get(spec.run_id, 0.0)
            row.update(status="done", error=None, gflops_per_pair=result["gflops_per_pair"],
                       **{part: compute[part] for part in PARTS}, cache_share=share, c_total=c_total(compute, share),
                       c_spent=compute.get("spent", c_total(compute)) + share,
                       trained_pool=result["train"]["pool_size"],
                       average=result["eval"]["average"], wall_time_s=result["wall_time_s"],
                       **{f"task:{t}": v["main_metric"] for t, v in result["eval"]["tasks"].items()},
                       **_gain_columns(result))
        rows.append(row)
    table = pd.DataFrame(rows)
    # a table of failed runs alone still has the report's numeric columns (all NaN)
    return table.reindex(columns=[*table.columns, *(c for c in NUMERIC_COLUMNS if c not in table)])


def _gain_columns(result: dict[str, Any]) -> dict[str, float]:
    """The reference's scores and the weak-to-strong gain (run minus reference, per task and on average),
    the held-out reducible loss's mean and variance and the misfit per classification task (cross-entropy
    against the reference's predictions and disagreement rate; absent from older results), for a run
    trained with a reference."""
    ref = result.get("reference")
    if not ref:
        return {}
    tasks = result["eval"]["tasks"]
    return {"reference_average": ref["eval"]["average"], "gain": result["eval"]["average"] - ref["eval"]["average"],
            **{f"gain:{t}": tasks[t]["main_metric"] - score for t, score in ref["eval"]["tasks"].items()},
            "reducible_mean": ref["reducible_loss"]["mean"], "reducible_var": ref["reducible_loss"]["var"],
            **{f"misfit_ce:{t}": m["cross_entropy"] for t, m in ref.get("misfit", {}).items()},
            **{f"disagree:{t}": m["disagreement"] for t, m in ref.get("misfit", {}).items()}}
