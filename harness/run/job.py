"""One run, start to finish: data, model, reference, method -> train -> evaluate -> store.

This is the function submitit executes. It records its own failure in the run directory
before re-raising, so a failure is on disk even if the launcher is gone. In a job of several
tasks (Slurm tasks, or local tasks_per_job) every task runs it: they form one data-parallel
process group, rank 0 records, evaluates and stores, the others only train.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

import torch

from harness import codeversion, faults, io
from harness.data.build import build_pool, split_validation
from harness.eval.evaluate import evaluate
from harness.eval.validation import validation_scores
from harness.grid.config import pool_config
from harness.grid.runspec import RunSpec
from harness.models import build_model, resolve_device
from harness.run import distributed, features, refcache
from harness.run.branch import Rung, prepare, spent
from harness.run.compute import run_compute
from harness.run.diagnostics import reference_diagnostics
from harness.run.train import train
from harness.store import lease, records
from harness.store.rundir import RunDir
from methods import get_method


def run_job(spec: RunSpec, results: str | Path, threads: int = 1, show_progress: bool = True,
            lease_token: str | None = None, code: str | None = None, rung: Rung | None = None) -> dict[str, Any]:
    """Execute the run `spec` under `results` (under the launcher's lease `lease_token`, and refusing to run
    if the harness code is not the version `code` the sweep started with; as `rung` of a wsd budget ladder,
    harness.run.branch); returns and stores its result."""
    rdir = records.run_dir(Path(results), spec.run_id)
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, device=resolve_device(spec.train.device)))
    with distributed.joined(spec.train.device) as world:
        work = functools.partial(_execute, spec, Path(results), rdir, threads, show_progress, code, world,
                                 rung or Rung())
        if not world.main:  # another rank of a data-parallel job: it trains its share; rank 0 records the run
            return work()
        return records.recorded(rdir, spec, work, lease_token)


def _execute(spec: RunSpec, results: Path, rdir: Path, threads: int, show_progress: bool,
             code: str | None, world: distributed.World, rung: Rung) -> dict[str, Any]:
    version = codeversion.check(code)
    start = time.perf_counter()
    torch.set_num_threads(threads)
    cfg = spec.train
    data = pool_config(spec.data)
    pool, held = split_validation(data) if data.validation else (build_pool(data), None)
    reference = _reference_features(spec, results, pool, cfg.device)
    torch.manual_seed(spec.seed)
    built = build_model(spec.model, device=cfg.device)
    method = get_method(spec.method.name)(spec.method.params, num_indices=pool.num_indices)
    trunk = records.run_dir(results, rung.trunk) if rung.trunk else None
    branch = prepare(rdir, trunk, rung.step) if world.main else None
    summary = train(built, method, pool, spec.samples_seen, cfg, spec.seed, rdir, reference=reference,
                    show_progress=show_progress, keep_at=rung.keep_at,
                    before_write=functools.partial(lease.confirm, rdir) if world.main else None)
    if not world.main:
        return {}
    records.trained(rdir, summary.steps, summary.resumed_from_step)
    faults.hit("evaluate")
    eval_start = time.perf_counter()
    # a tuning run is scored on its held-out pool pairs alone (harness.grid.tuning), never on the test tasks
    scores = validation_scores(built, held, cfg.device) if spec.tune else \
        evaluate(built, list(spec.eval_tasks), device=cfg.device)
    io.write_json(RunDir(rdir).eval, scores)
    diagnostics = None
    if spec.reference is not None and not spec.tune:
        ref_model = reference.built if isinstance(reference, features.OnlineReference) else \
            spec.reference.load(results, cfg.device)
        diagnostics = reference_diagnostics(built, ref_model, spec.reference, pool_config(spec.data),
                                            list(spec.eval_tasks), results, cfg.device)
    compute = run_compute(spec, method, len(pool))
    compute["spent"] = spent(compute, summary.steps, branch["step"] if branch else 0)
    # A resumed run's wall time counts the training done before the resume (kept in the checkpoint).
    wall = time.perf_counter() - start + summary.earlier_time_s
    return {"run_id": spec.run_id, "gflops_per_pair": compute["gflops_per_pair"], "samples_seen": summary.samples_seen,
            "c_paper": compute["c_paper"], "compute": compute, "train": vars(summary), "eval": scores,
            "reference": diagnostics, "eval_time_s": time.perf_counter() - eval_start, "wall_time_s": wall,
            "threads": threads, "processes": world.size, "device": cfg.device, "code": version, "branch": branch}


def _reference_features(spec: RunSpec, results: Path, pool: Any, device: str) -> Any:
    """The run's reference feature source: none, the reference model on the fly, or its checked cache."""
    ref = spec.reference
    if ref is None:
        return None
    if ref.features == "cached":
        return features.load_cache(refcache.cache_dir(spec, results), ref, spec.data, device)
    return features.OnlineReference(ref.load(results, device), device)
