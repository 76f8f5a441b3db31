"""A reference's features as training reads them: computed on the fly by the frozen reference model
(`OnlineReference`) or looked up by sample index in a feature cache (`CachedReference`, read by `load_cache`),
and every pool sample's in one pass (`pool_features`, what `write_cache` stores in a cache unit of
harness.run.refcache)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from harness import codeversion
from harness.data import shards
from harness.data.build import build_pool
from harness.grid.config import pool_config
from harness.grid.runspec import CacheUnit
from harness.models import BuiltModel, encode, resolve_device
from harness.profiles import model_profile
from harness.run.refcache import check_cache
from harness.run.reference import Reference
from harness.store import records
from harness.store.rundir import RunDir
from methods import Features

POOL_CHUNK = 256


@torch.no_grad()
def pool_features(built: BuiltModel, pool: Any, device: str, chunk: int = POOL_CHUNK,
                  show_progress: bool = False) -> Features:
    """Features of every pool sample (un-augmented images, their captions), in pool order, in chunks."""
    images, texts, scale = [], [], None
    for start in tqdm(range(0, len(pool), chunk), desc=f"encode pool with {built.name}", disable=not show_progress,
                      dynamic_ncols=True):
        part = torch.arange(start, min(start + chunk, len(pool)))
        feats = encode(built, pool.images_at(part), pool.tokens_at(built.tokenizer, part), device)
        images.append(feats.image)
        texts.append(feats.text)
        scale = feats.logit_scale
    return Features(torch.cat(images), torch.cat(texts), scale)


class OnlineReference:
    """Reference features from a forward pass of the frozen reference model (no gradient)."""

    def __init__(self, built: BuiltModel, device: str) -> None:
        self.built, self.device = built, device
        built.model.to(device).eval()

    def batch(self, pool: Any, pos: torch.Tensor, images: torch.Tensor) -> Features:
        """Features of pool samples `pos`, whose (possibly augmented) images are `images`."""
        with torch.no_grad():
            return encode(self.built, images, pool.tokens_at(self.built.tokenizer, pos), self.device)

    def pool(self, pool: Any) -> Features:
        """Features of every pool sample, un-augmented, in pool order."""
        return pool_features(self.built, pool, self.device)


class CachedReference:
    """Reference features looked up by stable sample index in a precomputed table."""

    def __init__(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, device: str) -> None:
        self.image, self.text = image.to(device), text.to(device)
        self.logit_scale, self.device = logit_scale.to(device), device

    def batch(self, pool: Any, pos: torch.Tensor, images: torch.Tensor) -> Features:
        """Cached features of pool samples `pos` (the images are not looked at)."""
        return self._lookup(pool.indices[pos])

    def pool(self, pool: Any) -> Features:
        """Cached features of every pool sample, in pool order."""
        return self._lookup(pool.indices)

    def _lookup(self, indices: torch.Tensor) -> Features:
        idx = indices.to(self.device)
        return Features(self.image[idx], self.text[idx], self.logit_scale)


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
