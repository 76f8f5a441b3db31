"""Shard sets as pools: what a shard spec names (its manifest, checked, and the manifest's SHA-256, which
identifies the content), and the pool of a shard set, read into memory or lazily."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.data.lazy import LazyShardPool
from harness.data.pool import PoolConfig
from harness.data.shards.manifest import MANIFEST
from harness.data.shards.read import iterate_samples, read_pool
from harness.data.shards.stats import ReadStats
from harness.data.shards.urls import expand_urls, has_scheme, open_url


@dataclass(frozen=True)
class ShardSet:
    """What a shard spec names: where its manifest lies, the manifest's SHA-256 (it lists every shard's
    SHA-256, so it identifies the content), how many samples the named shards hold by the manifest and
    the size of their square images (None if the manifest does not say)."""

    manifest: str
    sha256: str
    count: int
    image_size: int | None = None


def absolute_shards(spec: str) -> str:
    """`spec` with each local path made absolute (each "::" part; URLs stay as they are), so a run reads the
    same shards from whatever directory its job starts in. Paths are joined, not normalised: a brace
    group may stand before a "..", which normalising would drop."""
    parts = [p.strip() for p in spec.split("::") if p.strip()]
    return "::".join(p if has_scheme(p) or os.path.isabs(p) else os.path.join(os.getcwd(), p) for p in parts)


def shard_set(spec: str) -> ShardSet:
    """The manifest of shard spec `spec` (a directory, its manifest.json, or a brace spec of tar paths or URLs
    with the manifest beside the first shard), checked to describe an image-text pool; ValueError naming
    the manifest when it is missing, unreadable or of another kind."""
    manifest = _manifest_location(spec)
    try:
        iterate_samples(spec, manifest=manifest).close()  # checks the manifest; reads no shard
        with open_url(manifest) as f:
            raw = f.read()
        meta = json.loads(raw)
        names = None if manifest == spec or Path(spec).is_dir() else \
            {u.rstrip("/").rsplit("/", 1)[-1] for u in expand_urls(spec)}
    except (OSError, ValueError) as e:  # urllib's errors are OSErrors, JSON's ValueErrors
        raise ValueError(f"cannot use the shard set {spec!r}: its manifest {manifest} is missing or not a "
                         f"clipsteer pool manifest ({type(e).__name__}: {e})") from None
    count = sum(e["count"] for e in meta["shards"] if names is None or e["name"] in names)
    return ShardSet(manifest, hashlib.sha256(raw).hexdigest(), count, meta.get("image_size"))


def shard_pool(cfg: PoolConfig, split: str = "train") -> Any:
    """The pool of shard set cfg.shards, every shard checked against its manifest SHA-256, with `cfg` as its
    config. Refused: a split other than "train" (a shard set is one set of samples), a manifest other than
    the one the run was expanded with (cfg.manifest_sha256), a shard that fails its check or lost samples
    (the run would train on other data than its id names). Samples skipped as undecodable are reported."""
    if split != "train":
        raise ValueError(f"the shard-set pool {cfg.shards} has no {split!r} split: a shard set is one set of "
                         "training samples")
    if cfg.manifest_sha256 is not None:
        found = shard_set(cfg.shards).sha256
        if found != cfg.manifest_sha256:
            raise ValueError(f"the shard set {cfg.shards} changed since the grid was expanded: its manifest's "
                             f"SHA-256 is {found}, the run was made for {cfg.manifest_sha256}")
    if cfg.lazy:
        return LazyShardPool(cfg)
    stats = ReadStats()
    pool = read_pool(cfg.shards, verify=True, stats=stats)
    if stats.shard_errors or stats.reasons.get("lost"):
        raise ValueError(f"the shard set {cfg.shards} is damaged: {stats}; shard errors: "
                         f"{dict(sorted(stats.shard_errors.items()))}; e.g. {'; '.join(stats.examples[:3])}")
    if not len(pool):
        raise ValueError(f"the shard set {cfg.shards} holds no readable sample")
    if stats.skipped:
        print(f"shard set {cfg.shards}: {stats}", file=sys.stderr)
    return dataclasses.replace(pool, config=cfg)


def _manifest_location(spec: str) -> str:
    """Where the manifest of shard spec `spec` lies, by harness.data.shards' conventions."""
    spec = spec.strip()
    if "{" not in spec and "::" not in spec:
        if spec.rstrip("/").rsplit("/", 1)[-1] == MANIFEST:
            return spec
        if not has_scheme(spec) and Path(spec).is_dir():
            return str(Path(spec) / MANIFEST)
    urls = expand_urls(spec)
    if not urls:
        raise ValueError(f"the shard spec {spec!r} names no shards")
    return f"{urls[0].rsplit('/', 1)[0]}/{MANIFEST}" if has_scheme(urls[0]) else \
        str(Path(urls[0]).parent / MANIFEST)
