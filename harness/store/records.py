"""The result store: one directory per run, written atomically, and the results table read from it.

results/<grid>/runs/<run_id>/
    spec.json      the run's spec (what the id hashes)
    status.json    state: running | done | failed, with times, host, pid, error
    lease.json     which live process works on the run now (harness.store.lease)
    attempts.jsonl one line per start of the run (host, pid, time)
    metrics.jsonl  training log;  checkpoints/step-*-<sha256>.pt;  model.pt (final weights)
    eval.json      per-task metrics and the average
    result.json    the run's row of the leaderboard (written last: its presence means done)
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from harness import io
from harness.run.compute import PARTS, c_total
from harness.store import lease

RUNS = "runs"
RESULT_FORMAT = 3  # version of result.json's fields; 2 added the compute breakdown (C_total), 3 the reference diagnostics
ATTEMPTS = "attempts.jsonl"
NOT_IN_ID = {"train": ("log_every", "checkpoint_every", "checkpoint_minutes", "compile", "channels_last",
                       "grad_checkpointing"), "data": ("lazy",), "reference": ("path", "cache")}
# Fields added after runs existed, left out of the identity at the value that reproduces those runs,
# so adding an option does not rename every stored run.
OMITTED_AT = {"train": {"precision": "auto"}, "data": {"shards": None, "manifest_sha256": None}}


class SpecConflict(RuntimeError):
    """A run directory holds a different spec than the one that names it: it is never reused."""


def identity(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a spec that determines the result: all of it but logging, checkpoint cadence, speed
    options that keep the math (compile, channels-last, gradient checkpointing, a lazily read shard
    set, whose rows are those of the same set read into memory), where a reference checkpoint or
    feature cache lies (the checkpoint's sha256 is kept; a cache is checked to match the reference and
    pool), fields at their OMITTED_AT values, and the id itself."""
    ident = {k: v for k, v in spec.items() if k != "run_id"}
    for key, dropped in NOT_IN_ID.items():
        if isinstance(ident.get(key), dict):
            ident[key] = {k: v for k, v in ident[key].items() if k not in dropped}
    for key, omitted in OMITTED_AT.items():
        if isinstance(ident.get(key), dict):
            ident[key] = {k: v for k, v in ident[key].items() if k not in omitted or omitted[k] != v}
    return ident


def run_dir(results: Path, run_id: str) -> Path:
    """Directory of run `run_id` under a grid's results directory."""
    return Path(results) / RUNS / run_id


def read_status(rdir: Path) -> dict[str, Any] | None:
    """The run's status record, or None if it never started."""
    path = Path(rdir) / "status.json"
    return io.read_json(path) if path.exists() else None


def state(results: Path, run_id: str, spec: dict[str, Any] | None = None) -> str:
    """'done' (a result.json of the current RESULT_FORMAT exists: the one test of done), 'stale' (a result
    written by an older harness, lacking fields the report needs: run again), 'failed', 'running' or
    'missing' (never started); with `spec`, 'conflict' when the directory's spec.json is not that spec.

    The run id hashes everything that determines a result, so a result under that id is the spec's result.
    """
    rdir = run_dir(results, run_id)
    if spec is not None and _holds_other_spec(rdir, spec):
        return "conflict"
    if (rdir / "result.json").exists():
        return "done" if io.read_json(rdir / "result.json").get("format") == RESULT_FORMAT else "stale"
    status = read_status(rdir)
    return status["state"] if status else "missing"


def _holds_other_spec(rdir: Path, spec: dict[str, Any]) -> bool:
    """Whether the run directory's spec.json is a spec whose identity differs from `spec`'s."""
    path = Path(rdir) / "spec.json"
    return path.exists() and identity(io.read_json(path)) != identity(spec)


def is_done(results: Path, spec: dict[str, Any]) -> bool:
    """True when run `spec` has finished."""
    return state(results, spec["run_id"], spec) == "done"


def begin(rdir: Path, spec: dict[str, Any]) -> None:
    """Record that a run starts (its spec, an attempt line and a 'running' status); clear an earlier
    failure's result and the temporary files of writes a kill cut short. A directory holding another
    spec is refused (SpecConflict), never reused."""
    rdir = Path(rdir)
    if _holds_other_spec(rdir, spec):
        raise SpecConflict(f"{rdir} holds a run of a different spec than the one named {spec['run_id']}; "
                           "it is left as it is: move it away to run this spec")
    for folder in (rdir, rdir / "checkpoints"):
        io.remove_temporaries(folder)
    io.write_json(rdir / "spec.json", spec)
    (rdir / "result.json").unlink(missing_ok=True)
    started = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    io.append_jsonl(rdir / ATTEMPTS, started)
    io.write_json(rdir / "status.json", {"state": "running", **started})


def attempts(rdir: Path) -> int:
    """How many times the run was started."""
    return len(io.read_jsonl(Path(rdir) / ATTEMPTS))


def reason(error: BaseException) -> str:
    """The one line a table shows for an error: its type and the last line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__


def fail(rdir: Path, error: BaseException) -> None:
    """Record a failed run: the error's last line in status.json, the traceback in error.txt."""
    io.write_text(rdir / "error.txt", "".join(traceback.format_exception(error)))
    io.write_json(rdir / "status.json", {"state": "failed", "finished": time.time(), "error": reason(error)})


def fail_unstarted(rdir: Path, spec: dict[str, Any], reason: str) -> None:
    """Record a run that could not start (e.g. its reference failed)."""
    io.write_json(rdir / "spec.json", spec)
    io.write_json(rdir / "status.json", {"state": "failed", "finished": time.time(), "error": reason})


def finish(rdir: Path, result: dict[str, Any]) -> None:
    """Record a finished run: result.json (from here on the run is done), then a 'done' status."""
    io.write_json(rdir / "result.json", {**result, "format": RESULT_FORMAT})
    io.write_json(rdir / "status.json", {"state": "done", "finished": time.time()})


def recorded(rdir: Path, spec: dict[str, Any], work: Callable[[], dict[str, Any]],
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


def reference_run_ids(specs: list[dict[str, Any]]) -> set[str]:
    """Ids of the runs that other specs use as their reference model."""
    return {s["reference"]["run_id"] for s in specs if s.get("reference") and s["reference"]["kind"] == "run"}


def results_table(results: Path, specs: list[dict[str, Any]], cache_shares: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per spec (done or failed; never-started runs are left out), in the report schema.

    Compute columns: C_paper, its companions (harness.run.compute.PARTS) and C_total, which adds each
    run's share of a reference-feature cache from `cache_shares` (run id -> GFLOPs)."""
    cache_shares = cache_shares or {}
    reference_ids = reference_run_ids(specs)
    rows = []
    for spec in specs:
        rdir = run_dir(results, spec["run_id"])
        if state(results, spec["run_id"]) in ("missing", "running", "stale"):
            continue
        status = read_status(rdir) or {}
        row = {"run_id": spec["run_id"], "stage": spec["stage"], "method": spec["method"]["name"],
               "model": spec["model"], "samples_seen": spec["samples_seen"], "seed": spec["seed"],
               "is_reference": spec["run_id"] in reference_ids, "reference": _reference_label(spec),
               "reference_features": (spec["reference"] or {}).get("features"),
               "status": "failed", "error": status.get("error")}
        if (rdir / "result.json").exists():
            result = io.read_json(rdir / "result.json")
            compute, share = result["compute"], cache_shares.get(spec["run_id"], 0.0)
            row.update(status="done", error=None, gflops_per_pair=result["gflops_per_pair"],
                       **{part: compute[part] for part in PARTS}, cache_share=share, c_total=c_total(compute, share),
                       trained_pool=result["train"]["pool_size"],
                       average=result["eval"]["average"], wall_time_s=result["wall_time_s"],
                       **{f"task:{t}": v["main_metric"] for t, v in result["eval"]["tasks"].items()},
                       **_gain_columns(result))
        rows.append(row)
    return pd.DataFrame(rows)


def _gain_columns(result: dict[str, Any]) -> dict[str, float]:
    """The reference's scores and the weak-to-strong gain (run minus reference, per task and on average),
    and the held-out reducible loss's mean and variance, for a run trained with a reference."""
    ref = result.get("reference")
    if not ref:
        return {}
    tasks = result["eval"]["tasks"]
    return {"reference_average": ref["eval"]["average"], "gain": result["eval"]["average"] - ref["eval"]["average"],
            **{f"gain:{t}": tasks[t]["main_metric"] - score for t, score in ref["eval"]["tasks"].items()},
            "reducible_mean": ref["reducible_loss"]["mean"], "reducible_var": ref["reducible_loss"]["var"]}


def _reference_label(spec: dict[str, Any]) -> str | None:
    ref = spec.get("reference")
    if ref is None:
        return None
    return {"run": lambda: ref["run_id"], "checkpoint": lambda: f"{ref['model']}@{ref['path']}",
            "pretrained": lambda: f"{ref['model']}:{ref['tag']}"}[ref["kind"]]()
