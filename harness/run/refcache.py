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
from harness.data.pool import build_pool
from harness.grid.config import pool_config
from harness.models import model_profile
from harness.run.reference import CachedReference, load_reference, pool_features
from harness.store import records

FEATURES = "features.pt"  # the earlier format: one table, still read
FEATURE_SHARDS = "features"  # feature shards beside the pool's (harness.data.shards), with their manifest
KIND = "refcache"


def reference_source(ref: dict[str, Any]) -> dict[str, Any]:
    """A spec's reference entry without how its features are read: what load_reference needs."""
    return {k: v for k, v in ref.items() if k not in ("features", "cache")}


def reference_identity(ref: dict[str, Any]) -> dict[str, Any]:
    """What makes a reference's features what they are: its run id, checkpoint hash or tag, and model
    (where a checkpoint lies is not part of it)."""
    return {k: v for k, v in reference_source(ref).items() if k != "path"}


def data_identity(data: dict[str, Any]) -> dict[str, Any]:
    """What makes a pool what it is: a spec's data as the run identity counts it (records.identity), so a field
    added later at its old-behaviour default leaves existing caches' ids and records matching."""
    return records.identity({"data": data})["data"]


def cache_unit(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The cache-building unit a run needs built in its sweep (None if it uses none or names its own;
    None for a cache unit itself)."""
    ref = spec.get("reference")
    if spec.get("kind") == KIND or not ref or ref.get("features") != "cached" or ref.get("cache"):
        return None
    digest = io.digest({"reference": reference_identity(ref), "data": data_identity(spec["data"])})
    return {"kind": KIND, "run_id": f"{KIND}-{ref['model']}-{digest}", "reference": reference_source(ref),
            "data": spec["data"], "device": spec["train"]["device"]}


def cache_units(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct cache units that `specs` need, in first-use order."""
    units: dict[str, dict[str, Any]] = {}
    for spec in specs:
        unit = cache_unit(spec)
        if unit is not None:
            units.setdefault(unit["run_id"], unit)
    return list(units.values())


def cache_dir(spec: dict[str, Any], results: Path) -> Path | None:
    """Where the cache that run `spec` reads lies (None for a run without cached reference features)."""
    ref = spec.get("reference")
    if not ref or ref.get("features") != "cached":
        return None
    where = Path(ref["cache"]) if ref.get("cache") else records.run_dir(results, cache_unit(spec)["run_id"])
    return where.resolve()


def cache_shares(specs: list[dict[str, Any]], results: Path) -> dict[str, float]:
    """Each cached run's share of its cache's GFLOPs: the cache's cost split equally among the runs of
    `specs` that read it, done or not, so a share does not change as a sweep fills in (run id -> GFLOPs;
    NaN when the cache's record is gone: that run's C_total is unknown, not smaller)."""
    readers: dict[Path, list[str]] = {}
    for spec in specs:
        where = cache_dir(spec, results)
        if where is not None:
            readers.setdefault(where, []).append(spec["run_id"])
    shares = {}
    for where, run_ids in readers.items():
        record = where / "result.json"
        cost = io.read_json(record)["gflops"] if record.is_file() else math.nan
        shares.update({run_id: cost / len(run_ids) for run_id in run_ids})
    return shares


def check_cache(path: Path, ref: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The cache record at `path` if it was made by reference `ref` for pool `data`; ValueError otherwise."""
    record_path = Path(path) / "result.json"
    if not record_path.is_file():
        raise ValueError(f"no finished reference-feature cache at {path} (run `clipsteer cache-ref` to make one)")
    record = io.read_json(record_path)
    if record.get("kind") != KIND:
        raise ValueError(f"{path} is a run directory, not a reference-feature cache")
    if record["reference"] != reference_identity(ref):
        raise ValueError(f"the cache at {path} was made by reference {_describe(record['reference'])}, "
                         f"but this run names reference {_describe(reference_identity(ref))}")
    made_for, wanted = data_identity(record["data"]), data_identity(data)
    if made_for != wanted:
        changed = sorted(k for k in set(made_for) | set(wanted) if made_for.get(k) != wanted.get(k))
        raise ValueError(f"the cache at {path} was made for another pool (data differs in: {', '.join(changed)})")
    return record


def load_cache(path: Path, ref: dict[str, Any], data: dict[str, Any], device: str) -> CachedReference:
    """The cache at `path` as a feature source, once checked to be reference `ref`'s of pool `data`
    (the same pool config builds the same samples, so every one has its features). Its feature shards
    are checked against their manifest's SHA-256s, and must hold a row for every sample the cache encoded;
    a cache of the earlier format (one features.pt) is read as it is."""
    record = check_cache(path, ref, data)
    if (Path(path) / FEATURES).is_file():
        table = torch.load(Path(path) / FEATURES, map_location="cpu", weights_only=True)
        return CachedReference(table["image"], table["text"], table["logit_scale"], device)
    stats = shards.ReadStats()
    table = shards.read_feature_shards(Path(path) / FEATURE_SHARDS, verify=True, stats=stats)
    if stats.skipped or stats.shard_errors or int(table.present.sum()) != record["pairs"]:
        raise ValueError(f"the reference-feature cache at {path} is damaged: {stats} "
                         f"({int(table.present.sum())} of its {record['pairs']} rows readable)")
    return CachedReference(table.image, table.text, table.logit_scale, device)


def build_cache_job(unit: dict[str, Any], results: str | Path, threads: int = 1, show_progress: bool = True,
                    lease_token: str | None = None, code: str | None = None) -> dict[str, Any]:
    """Compute and store the features of cache `unit` under `results` (the function submitit runs; the
    lease and code version as in harness.run.job.run_job)."""
    rdir = records.run_dir(Path(results), unit["run_id"])

    def work() -> dict[str, Any]:
        codeversion.check(code)
        return write_cache(rdir, unit["reference"], unit["data"], Path(results), threads, show_progress, unit["device"])

    return records.recorded(rdir, unit, work, lease_token)


def write_cache(rdir: Path, ref: dict[str, Any], data: dict[str, Any], results: Path, threads: int = 1,
                show_progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Encode every sample of pool `data` with reference `ref` and write the features as companion shards
    (feature shards keyed by sample index, with their manifest) into `rdir`/features;
    returns the cache record (result.json is the caller's to write, last)."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    pool = build_pool(pool_config(data))
    built = load_reference(ref, results, device)
    feats = pool_features(built, pool, device, show_progress=show_progress)
    shards.write_feature_shards(feats.image.cpu(), feats.text.cpu(), pool.indices, Path(rdir) / FEATURE_SHARDS,
                                logit_scale=feats.logit_scale.detach().cpu(), num_indices=pool.num_indices)
    gflops = model_profile(ref["model"])["gflops"]
    return {"kind": KIND, "run_id": Path(rdir).name, "reference": reference_identity(ref), "data": data,
            "pairs": len(pool), "gflops_per_pair": gflops, "gflops": gflops * len(pool),
            "wall_time_s": time.perf_counter() - start}


def _describe(ident: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(ident.items()))
