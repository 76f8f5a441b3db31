"""The result store: one directory per run, written atomically, and the results table read from it.

results/<grid>/runs/<run_id>/
    spec.json      the run's spec (what the id hashes)
    status.json    state: running | done | failed, with times, host, pid, error
    metrics.jsonl  training log;  checkpoints/last.pt;  model.pt (final weights)
    eval.json      per-task metrics and the average
    result.json    the run's row of the leaderboard (written last: its presence means done)
"""
from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from harness import io
from harness.compute import PARTS, c_total

RUNS = "runs"
RESULT_FORMAT = 3  # version of result.json's fields; 2 added the compute breakdown (C_total), 3 the reference diagnostics


def run_dir(results: Path, run_id: str) -> Path:
    """Directory of run `run_id` under a grid's results directory."""
    return Path(results) / RUNS / run_id


def read_status(rdir: Path) -> dict[str, Any] | None:
    """The run's status record, or None if it never started."""
    path = Path(rdir) / "status.json"
    return io.read_json(path) if path.exists() else None


def state(results: Path, run_id: str) -> str:
    """'done' (a result.json of the current RESULT_FORMAT exists: the one test of done), 'stale' (a result
    written by an older harness, lacking fields the report needs: run again), 'failed', 'running' or
    'missing' (never started).

    The run id hashes everything that determines a result, so a result under that id is the spec's result.
    """
    rdir = run_dir(results, run_id)
    if (rdir / "result.json").exists():
        return "done" if io.read_json(rdir / "result.json").get("format") == RESULT_FORMAT else "stale"
    status = read_status(rdir)
    return status["state"] if status else "missing"


def is_done(results: Path, spec: dict[str, Any]) -> bool:
    """True when run `spec` has finished."""
    return state(results, spec["run_id"]) == "done"


def begin(rdir: Path, spec: dict[str, Any]) -> None:
    """Record that a run starts (its spec and a 'running' status); clears an earlier failure's result."""
    io.write_json(rdir / "spec.json", spec)
    (rdir / "result.json").unlink(missing_ok=True)
    io.write_json(rdir / "status.json", {"state": "running", "started": time.time(), "host": socket.gethostname(),
                                         "pid": os.getpid()})


def fail(rdir: Path, error: BaseException) -> None:
    """Record a failed run: the error's last line in status.json, the traceback in error.txt."""
    io.write_text(rdir / "error.txt", "".join(traceback.format_exception(error)))
    io.write_json(rdir / "status.json", {"state": "failed", "finished": time.time(),
                                         "error": f"{type(error).__name__}: {error}".strip().splitlines()[-1]})


def fail_unstarted(rdir: Path, spec: dict[str, Any], reason: str) -> None:
    """Record a run that could not start (e.g. its reference failed)."""
    io.write_json(rdir / "spec.json", spec)
    io.write_json(rdir / "status.json", {"state": "failed", "finished": time.time(), "error": reason})


def finish(rdir: Path, result: dict[str, Any]) -> None:
    """Record a finished run: result.json (from here on the run is done), then a 'done' status."""
    io.write_json(rdir / "result.json", {**result, "format": RESULT_FORMAT})
    io.write_json(rdir / "status.json", {"state": "done", "finished": time.time()})


def recorded(rdir: Path, spec: dict[str, Any], work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `work` as unit `spec` in `rdir`: begin, then finish with its result, or record its failure
    and re-raise (so a failure is on disk even if the launcher is gone)."""
    begin(rdir, spec)
    try:
        result = work()
    except BaseException as error:
        fail(rdir, error)
        raise
    finish(rdir, result)
    return result


def reference_run_ids(specs: list[dict[str, Any]]) -> set[str]:
    """Ids of the runs that other specs use as their reference model."""
    return {s["reference"]["run_id"] for s in specs if s.get("reference") and s["reference"]["kind"] == "run"}


def results_table(results: Path, specs: list[dict[str, Any]], cache_shares: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per spec (done or failed; never-started runs are left out), in the report schema.

    Compute columns: C_paper, its companions (harness.compute.PARTS) and C_total, which adds each
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
