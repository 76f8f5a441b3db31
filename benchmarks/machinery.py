"""Sweep machinery: validating and expanding a 10,000-run grid, launching trivial units through submitit (local
worker processes, one job per unit as before them, in-process), and writing the report of 1,000 synthetic runs."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import submitit
import yaml

from benchmarks.fixtures import DEMO_GRID, REPO
from benchmarks.jobs import trivial_job
from benchmarks.timing import Goal, GroupResult, Result, Settings, interleave, ratio, seconds
from harness.grid.config import ExecutorConfig, parse_grid
from harness.grid.spec import expand
from harness.launch import launcher
from harness.report.leaderboard import write_report
from harness.run.compute import run_compute
from harness.store import records
from harness.sweep import SPECS, results_of
from methods import get_method

LAUNCH_UNITS = 8
MORE_UNITS = 32  # the units of the launch that times the per-run overhead in one worker
POOL_SIZE = 17_437  # the demo pool, for the synthetic runs' compute


def grid_mapping(methods: list[str], samples: list[int], seeds: int) -> dict[str, Any]:
    """The demo grid with its stages replaced: a tiny-m clip reference, then methods x 3 tiny models x samples x seeds."""
    demo = yaml.safe_load(DEMO_GRID.read_text(encoding="utf-8"))
    return {**{k: demo[k] for k in ("data", "eval", "train", "executor")}, "name": "bench", "stages": [
        {"name": "reference", "data": {"subset": "clean"}, "methods": ["clip"], "models": ["tiny-m"],
         "samples_seen": [30720]},
        {"name": "sweep", "reference": "reference", "methods": methods, "models": ["tiny-s", "tiny-m", "tiny-l"],
         "samples_seen": samples, "seeds": list(range(seeds))}]}


def big_grid() -> dict[str, Any]:
    """10,000 runs: the reference and 3 methods x 3 models x 11 budgets x 101 seeds."""
    return grid_mapping(["clip", "drrho", "jest"], [5120 * (i + 1) for i in range(11)], seeds=101)


@contextlib.contextmanager
def trivial_runs() -> Iterator[None]:
    """harness.launch.launcher submits `trivial_job` instead of run_job, as tests/test_launch.py does."""
    real = launcher.run_job
    launcher.run_job = trivial_job
    try:
        yield
    finally:
        launcher.run_job = real


@contextlib.contextmanager
def one_job_per_unit() -> Iterator[None]:
    """harness.launch.launcher runs every local unit as a submitit job of its own, as it did before its worker
    processes (and still does for runs of several processes, tasks_per_job > 1)."""
    real = launcher.make_executor

    def per_unit(cfg: ExecutorConfig, folder: Path) -> submitit.Executor:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=cfg.timeout_min)
        return executor

    launcher.make_executor = per_unit
    try:
        yield
    finally:
        launcher.make_executor = real


def launch_times(kind: str, units: int = LAUNCH_UNITS, parallel: int = 2,
                 per_unit_jobs: bool = False) -> tuple[float, list[float]]:
    """Wall seconds of harness.launch.launcher.launch() for `units` trivial units (`parallel` at a time, 1 thread
    each), and the seconds after its start at which each unit finished (its status record's time), in order; with
    `per_unit_jobs`, local units run as one submitit job each (one_job_per_unit)."""
    stage = {"name": "bench", "methods": ["clip"], "models": ["tiny-s"], "samples_seen": [128],
             "seeds": list(range(units))}
    specs = expand(parse_grid({**grid_mapping(["clip"], [128], seeds=units), "stages": [stage]}, "bench-launch.yaml"))
    cfg = ExecutorConfig(kind=kind, max_parallel=parallel, timeout_min=5)
    with tempfile.TemporaryDirectory(prefix="clipsteer-bench-") as results, trivial_runs(), \
            one_job_per_unit() if per_unit_jobs else contextlib.nullcontext():
        began, start = time.time(), time.perf_counter()
        report = launcher.launch(specs, Path(results), cfg, log=lambda *_: None)
        elapsed = time.perf_counter() - start
        finished = sorted(records.read_status(records.run_dir(Path(results), s["run_id"]))["finished"] - began
                          for s in specs if s["run_id"] in report.done)
    if len(report.done) != units:
        raise RuntimeError(f"{kind} launch finished {len(report.done)} of {units} units: {report.failed}")
    return elapsed, finished


def per_run_overhead(finished: list[float]) -> float:
    """Seconds from one unit finished to the next, from the first to the last (trivial units in one worker:
    what each further run costs besides its work, once the worker is up)."""
    return (finished[-1] - finished[0]) / (len(finished) - 1)


def import_seconds(module: str) -> float:
    """Wall seconds of a fresh interpreter that imports `module` (what every local job pays before its work)."""
    return seconds(lambda: subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, check=True))


def write_synthetic_results(where: Path, seed: int = 0) -> int:
    """A results directory of 1,000 runs in the store's format (specs.json, runs/<id>/status.json, result.json,
    metrics.jsonl), from a real grid expansion, errors following a noisy power law; returns the run count."""
    raw = grid_mapping(["clip", "drrho", "fastclip"], [5120, 10240, 20480], seeds=37)
    specs = expand(parse_grid(raw, "bench-report.yaml"))
    rng = np.random.default_rng(seed)
    tasks = raw["eval"]["tasks"]
    (where / SPECS).write_text(json.dumps({"grid": "bench", "source": "bench-report.yaml",
                                              "specs": [s.to_json() for s in specs]}))
    for spec in specs:
        method = get_method(spec["method"]["name"])(spec["method"]["params"], num_indices=1)
        compute = run_compute(spec, method, POOL_SIZE)
        slope = {"clip": -0.13, "drrho": -0.165, "fastclip": -0.14}[spec["method"]["name"]]
        average = float(np.clip(1 - 1.5 * compute["c_paper"] ** slope + rng.normal(0, 0.02), 0.01, 0.99))
        scores = {t: float(np.clip(average + rng.normal(0, 0.03), 0, 1)) for t in tasks}
        steps = spec["samples_seen"] // spec["train"]["batch_size"]
        result = {"run_id": spec["run_id"], "gflops_per_pair": compute["gflops_per_pair"],
                  "samples_seen": spec["samples_seen"], "c_paper": compute["c_paper"], "compute": compute,
                  "train": {"steps": steps, "samples_seen": spec["samples_seen"], "final_loss": 1.0,
                            "train_time_s": 0.07 * steps, "resumed_from_step": 0, "pool_size": POOL_SIZE,
                            "earlier_time_s": 0.0},
                  "eval": {"average": average, "suite_version": spec["eval_suite"],
                           "tasks": {t: {"main_metric": s, "metric": "acc1", "acc1": s} for t, s in scores.items()}},
                  "reference": None if spec["reference"] is None else {
                      "eval": {"average": 0.425, "tasks": {t: 0.425 for t in tasks}},
                      "reducible_loss": {"batch": 256, "mean": 0.5, "n": 1024, "var": float(rng.uniform(2, 16))}},
                  "eval_time_s": 2.5, "wall_time_s": 0.07 * steps + 4.0, "threads": 1, "format": records.RESULT_FORMAT}
        rdir = records.run_dir(where, spec["run_id"])
        rdir.mkdir(parents=True)
        (rdir / "result.json").write_text(json.dumps(result))
        (rdir / "status.json").write_text(json.dumps({"state": "done", "finished": 0.0}))
        (rdir / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "samples_seen": s * 128, "loss": 3.0 / (1 + s / 50), "lr": 2e-3,
                        "logit_scale": 14.3 + s / 10, "noisy_fraction": 0.3, "time_s": 0.07 * s}) + "\n"
            for s in range(10, steps + 1, 10)))
    return len(specs)


def report_seconds(results: Path) -> tuple[float, float]:
    """Seconds of reading the results table (harness.sweep.results_of) and of write_report, in a fresh output dir."""
    start = time.perf_counter()
    name, table = results_of(results)
    read = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="clipsteer-bench-report-") as out:
        write = seconds(lambda: write_report(table, Path(out), title=f"clipsteer: {name}", runs_dir=results))
    return read, write


def run(settings: Settings, out: Path) -> GroupResult:
    """Grid expansion (repeated), launches (local workers, one local job per unit, debug; interleaved) and report
    generation."""
    raw = big_grid()
    grid_times = interleave({"parse_grid": lambda: seconds(lambda: parse_grid(raw, "bench-10k.yaml")),
                             "expand": lambda: seconds(lambda: expand(parse_grid(raw, "bench-10k.yaml")))},
                            settings.rounds, settings.warmup_rounds)
    runs = len(expand(parse_grid(raw, "bench-10k.yaml")))
    light = 1 if settings.quick else 2
    launches = interleave({"workers": lambda: launch_times("local"),
                           "one worker": lambda: launch_times("local", MORE_UNITS, parallel=1),
                           "job per unit": lambda: launch_times("local", per_unit_jobs=True),
                           "debug": lambda: launch_times("debug"),
                           "import": lambda: import_seconds("harness.run.job")}, light, warmup_rounds=0)
    per_run = {name: [t / LAUNCH_UNITS for t, _ in launches[name]] for name in ("workers", "job per unit", "debug")}
    with tempfile.TemporaryDirectory(prefix="clipsteer-bench-results-") as where:
        synthetic = write_synthetic_results(Path(where))
        reports = interleave({"report": lambda: report_seconds(Path(where))}, light,
                             warmup_rounds=0 if settings.quick else 1)["report"]
    result = GroupResult(measurements=[
        Result(f"parse_grid of a {runs:,}-run grid", "s", grid_times["parse_grid"]),
        Result(f"parse_grid + expand of a {runs:,}-run grid", "s", grid_times["expand"], Goal("<", 1.0)),
        Result(f"launch() with local workers, per run ({LAUNCH_UNITS} trivial units, 2 workers)", "s/run",
               per_run["workers"]),
        Result(f"local workers: per-run overhead, seconds from one trivial unit finished to the next in one worker "
               f"({MORE_UNITS} units)", "s/run", [per_run_overhead(f) for _, f in launches["one worker"]],
               Goal("<", 0.5)),
        Result(f"local workers: start of a launch to its first unit finished (a worker's interpreter and imports; "
               f"{MORE_UNITS} units, one worker)", "s", [f[0] for _, f in launches["one worker"]]),
        Result(f"launch() with local workers, per run ({MORE_UNITS} trivial units, one worker)", "s/run",
               [t / MORE_UNITS for t, _ in launches["one worker"]]),
        Result(f"launch() with one submitit job per unit (the local path before the workers, still that of "
               f"tasks_per_job > 1), per run ({LAUNCH_UNITS} trivial units, 2 at a time)", "s/run",
               per_run["job per unit"]),
        Result(f"launch() with the debug executor (in-process), per run ({LAUNCH_UNITS} trivial units)", "s/run",
               per_run["debug"]),
        Result("a fresh interpreter importing harness.run.job (paid once per local worker; by every run when each "
               "was a job of its own)", "s", launches["import"]),
        Result(f"report of {synthetic:,} synthetic runs: results table (read {synthetic:,} result.json)", "s",
               [r for r, _ in reports]),
        Result(f"report of {synthetic:,} synthetic runs: write_report (fits, bootstrap, plots, CSV/MD/HTML)", "s",
               [w for _, w in reports]),
        Result(f"report of {synthetic:,} synthetic runs: total (harness.sweep.report's two steps)", "s",
               [r + w for r, w in reports], Goal("<", 10.0)),
    ])
    result.ratios.append(ratio(f"local launch per run, one job per unit / workers ({LAUNCH_UNITS} trivial units)",
                               ("one job per unit", per_run["job per unit"]), ("workers", per_run["workers"])))
    result.facts["grid_runs"] = runs
    result.facts["synthetic_report_runs"] = synthetic
    result.notes.append(
        f"Sweep machinery: the {runs:,}-run grid is the demo grid's data, eval, train and executor with a reference "
        "stage and 3 methods x 3 models x 11 budgets x 101 seeds; parse_grid alone and parse_grid + expand are "
        f"timed in interleaved rounds. Launching: harness.launch.launcher.launch() with run_job swapped for a trivial job "
        "(benchmarks.jobs.trivial_job: importable by submitit's subprocesses, it imports only harness.store.records "
        f"and does a run's bookkeeping, lease, begin and finish, around no work): {LAUNCH_UNITS} units 2 at a time "
        "with local worker processes (harness.launch.workers), with one submitit job per unit (as before the "
        f"workers) and with the debug executor; and {MORE_UNITS} units in one local worker, whose units finish "
        "one per-run overhead apart (the finish times are the units' status records). Report: a results directory "
        "of synthetic runs in the store's format (real grid expansion, real compute records, metrics.jsonl for the "
        "training curves), read with harness.sweep.results_of and "
        "written with harness.report.leaderboard.write_report (1,000 bootstrap replicates).")
    return result
