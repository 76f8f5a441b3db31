"""Reference-feature caches: the reference's image and text features of every pool sample,
computed once and stored by stable sample index, shared by every run that names the same
reference and pool.

A cache is a unit of the sweep like a run: results/<grid>/runs/refcache-<model>-<hash>/ holds
its spec, status, its features as companion shards (features/: feature shards keyed by sample
index, with a manifest of their SHA-256s) and result.json (written last: it records which
reference and which pool made the cache, and its compute). A run can also name a cache directory
explicitly; a cache made by another reference or for another pool is refused.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from harness import codeversion, io
from harness.data import shards
from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.grid.config import pool_config
from harness.grid.runspec import CacheUnit, RunSpec, Unit
from harness.models import model_profile, resolve_device
from harness.run.reference import CachedReference, Reference, pool_features
from harness.store import records
from harness.store.identity import identity_of
from harness.store.rundir import RunDir


def data_identity(data: dict[str, Any]) -> dict[str, Any]:
    """What makes a pool what it is: a spec's data as the run identity counts it, so a field added later at
    its old-behaviour default leaves existing caches' ids and records matching."""
    return identity_of(PoolConfig, data)


def cache_unit(spec: Unit) -> CacheUnit | None:
    """The cache-building unit run `spec` needs built in its sweep (None if it uses none or names its own;
    None for a cache unit itself)."""
    ref = spec.reference
    if not isinstance(spec, RunSpec) or ref is None or ref.features != "cached" or ref.cache is not None:
        return None
    digest = io.digest({"reference": ref.identity(), "data": data_identity(spec.data)})
    return CacheUnit(run_id=f"{CacheUnit.KIND}-{ref.model}-{digest}", reference=ref, data=spec.data,
                     device=spec.train.device)


def cache_units(specs: list[Unit]) -> list[CacheUnit]:
    """The distinct cache units that `specs` need, in first-use order."""
    units: dict[str, CacheUnit] = {}
    for spec in specs:
        unit = cache_unit(spec)
        if unit is not None:
            units.setdefault(unit.run_id, unit)
    return list(units.values())


def cache_dir(spec: RunSpec, results: Path) -> Path | None:
    """Where the cache that run `spec` reads lies (None for a run without cached reference features)."""
    ref = spec.reference
    if ref is None or ref.features != "cached":
        return None
    where = Path(ref.cache) if ref.cache is not None else records.run_dir(results, cache_unit(spec).run_id)
    return where.resolve()


def cache_shares(specs: list[RunSpec], results: Path) -> dict[str, float]:
    """Each cached run's share of its cache's GFLOPs: the cache's cost split equally among the runs of
    `specs` that read it, done or not, so a share does not change as a sweep fills in (run id -> GFLOPs;
    NaN when the cache's record is gone: that run's C_total is unknown, not smaller)."""
    readers: dict[Path, list[str]] = {}
    for spec in specs:
        where = cache_dir(spec, results)
        if where is not None:
            readers.setdefault(where, []).append(spec.run_id)
    shares = {}
    for where, run_ids in readers.items():
        record = RunDir(where).result
        cost = io.read_json(record)["gflops"] if record.is_file() else math.nan
        shares.update({run_id: cost / len(run_ids) for run_id in run_ids})
    return shares


def check_cache(path: Path, ref: Reference, data: dict[str, Any]) -> dict[str, Any]:
    """The cache record at `path` if it was made by reference `ref` for pool `data`; ValueError otherwise."""
    record_path = RunDir(path).result
    if not record_path.is_file():
        raise ValueError(f"no finished reference-feature cache at {path} (run `clipsteer cache-ref` to make one)")
    record = io.read_json(record_path)
    if record.get("kind") != CacheUnit.KIND:
        raise ValueError(f"{path} is a run directory, not a reference-feature cache")
    if record["reference"] != ref.identity():
        raise ValueError(f"the cache at {path} was made by reference {_describe(record['reference'])}, "
                         f"but this run names reference {_describe(ref.identity())}")
    made_for, wanted = data_identity(record["data"]), data_identity(data)
    if made_for != wanted:
        changed = sorted(k for k in set(made_for) | set(wanted) if made_for.get(k) != wanted.get(k))
        raise ValueError(f"the cache at {path} was made for another pool (data differs in: {', '.join(changed)})")
    return record


def load_cache(path: Path, ref: Reference, data: dict[str, Any], device: str) -> CachedReference:
    """The cache at `path` as a feature source, once checked to be reference `ref`'s of pool `data`
    (the same pool config builds the same samples, so every one has its features). Its feature shards
    are checked against their manifest's SHA-256s, and must hold a row for every sample the cache encoded;
    a cache of the earlier format (one features.pt) is read as it is."""
    record = check_cache(path, ref, data)
    cache = RunDir(path)
    if cache.feature_table.is_file():
        table = torch.load(cache.feature_table, map_location="cpu", weights_only=True)
        return CachedReference(table["image"], table["text"], table["logit_scale"], device)
    stats = shards.ReadStats()
    table = shards.read_feature_shards(cache.feature_shards, verify=True, stats=stats)
    if stats.skipped or stats.shard_errors or int(table.present.sum()) != record["pairs"]:
        raise ValueError(f"the reference-feature cache at {path} is damaged: {stats} "
                         f"({int(table.present.sum())} of its {record['pairs']} rows readable)")
    return CachedReference(table.image, table.text, table.logit_scale, device)


def build_cache_job(unit: CacheUnit, results: str | Path, threads: int = 1, show_progress: bool = True,
                    lease_token: str | None = None, code: str | None = None) -> dict[str, Any]:
    """Compute and store the features of cache `unit` under `results` (the function submitit runs; the
    lease and code version as in harness.run.job.run_job)."""
    rdir = records.run_dir(Path(results), unit.run_id)

    def work() -> dict[str, Any]:
        codeversion.check(code)
        return write_cache(rdir, unit.reference, unit.data, Path(results), threads, show_progress,
                           resolve_device(unit.device))

    return records.recorded(rdir, unit, work, lease_token)


def write_cache(rdir: Path, ref: Reference, data: dict[str, Any], results: Path, threads: int = 1,
                show_progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Encode every sample of pool `data` with reference `ref` and write the features as companion shards
    (feature shards keyed by sample index, with their manifest) into `rdir`/features;
    returns the cache record (result.json is the caller's to write, last)."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    pool = build_pool(pool_config(data))
    built = ref.load(results, device)
    feats = pool_features(built, pool, device, show_progress=show_progress)
    shards.write_feature_shards(feats.image.cpu(), feats.text.cpu(), pool.indices, RunDir(rdir).feature_shards,
                                logit_scale=feats.logit_scale.detach().cpu(), num_indices=pool.num_indices)
    gflops = model_profile(ref.model)["gflops"]
    return {"kind": CacheUnit.KIND, "run_id": Path(rdir).name, "reference": ref.identity(), "data": data,
            "pairs": len(pool), "gflops_per_pair": gflops, "gflops": gflops * len(pool),
            "wall_time_s": time.perf_counter() - start}


def _describe(ident: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(ident.items()))
