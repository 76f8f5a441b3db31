"""Reference-feature caches: the reference's image and text features of every pool sample,
computed once and stored by stable sample index, shared by every run that names the same
reference and pool.

A cache is a unit of the sweep like a run: results/<grid>/runs/refcache-<model>-<hash>/ holds
its spec, status, its features as companion shards (features/: feature shards keyed by sample
index, with a manifest of their SHA-256s) and result.json (written last: it records which
reference and which pool made the cache, and its compute). A run can also name a cache directory
explicitly; a cache made by another reference or for another pool is refused. Building and reading the
features themselves is harness.run.features'.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness import io
from harness.data.poolconfig import PoolConfig
from harness.grid.runspec import CacheUnit, RunSpec, Unit
from harness.run.reference import Reference
from harness.store import records
from harness.store.identity import identity_of
from harness.store.rundir import RunDir


def data_identity(data: dict[str, Any]) -> dict[str, Any]:
    """What makes a pool what it is: a spec's data as the run identity counts it, so a field added later at
    its old-behaviour default leaves existing caches' ids and records matching. Pairs held out for validation
    are still the pool's: a cache holds every sample, and runs that hold some out read it by index."""
    return identity_of(PoolConfig, whole_pool(data))


def whole_pool(data: dict[str, Any]) -> dict[str, Any]:
    """A spec's data with no pairs held out for validation: the pool a cache of its reference features covers."""
    return {k: v for k, v in data.items() if k != "validation"}


def cache_unit(spec: Unit) -> CacheUnit | None:
    """The cache-building unit run `spec` needs built in its sweep (None if it uses none or names its own;
    None for a cache unit itself)."""
    ref = spec.reference
    if not isinstance(spec, RunSpec) or ref is None or ref.features != "cached" or ref.cache is not None:
        return None
    digest = io.digest({"reference": ref.identity(), "data": data_identity(spec.data)})
    return CacheUnit(run_id=f"{CacheUnit.KIND}-{ref.model}-{digest}", reference=ref, data=whole_pool(spec.data),
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


def _describe(ident: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(ident.items()))
