"""Reading pool shards: a stream of decoded samples (in order, shuffled or resampled, split between readers),
and a whole shard set as an ImageTextPool."""
from __future__ import annotations

import hashlib
import io as _io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from harness.data.pool import ImageTextPool, PoolConfig
from harness.data.shards.decode import PoolDecoder, Sample
from harness.data.shards.manifest import POOL_KIND, Manifest, resolve_set
from harness.data.shards.stats import ReadStats
from harness.data.shards.tar import sample_groups
from harness.data.shards.urls import normalized_url, open_url


class SampleStream:
    """An iterator of decoded samples whose `stats` (a ReadStats) fill in as it is consumed."""

    def __init__(self, samples: Iterator[Any], stats: ReadStats) -> None:
        self._samples, self.stats = samples, stats

    def __iter__(self) -> "SampleStream":
        return self

    def __next__(self) -> Any:
        return next(self._samples)

    def close(self) -> None:
        close = getattr(self._samples, "close", None)
        if close is not None:
            close()


def iterate_samples(urls: str | Path | Sequence[str | Path], shuffle_buffer: int = 0, seed: int = 0,
                    resample: bool = False, epoch: int = 0, *, shuffle_shards: bool | None = None,
                    image_size: int | None = None, manifest: Any = "auto", verify: bool = False,
                    stats: ReadStats | None = None) -> SampleStream:
    """Decoded samples (Sample: index, image uint8 [3, S, S], caption, label, caption_label, noisy,
    source) of the shards `urls` (a spec for expand_urls, a list, or a shard-set directory).

    Order: shards in the given order, samples in shard order; with `shuffle_shards` (default: when
    shuffle_buffer > 0) the shard order is a permutation drawn from (seed, epoch); with
    `shuffle_buffer` > 0 samples pass through a buffer of that size that emits a random one
    (random stream from (seed, epoch)) once full, then drains in random order: the same arguments
    give the same order. With `resample`, shards are drawn with replacement from (seed, epoch)
    forever (an infinite stream; it stops only if every shard has been tried and none gave a sample).

    Damaged samples are skipped and counted in `stream.stats` (or `stats`), never raised; all
    samples of a stream have one image size (`image_size`, else the manifest's, else the first
    sample's; others are skipped as bad_size). `manifest` ("auto", None, a path/URL or a dict) adds
    per-shard sample counts (missing samples count as "lost") and, with `verify`, SHA-256 checks
    (a shard that fails is skipped whole: shard_errors["checksum"]).
    """
    read = PoolRead.make(urls, shuffle_buffer, seed, resample, epoch, shuffle_shards, image_size, manifest, verify)
    stats = stats if stats is not None else ReadStats()
    return SampleStream(read.samples(stats), stats)


@dataclass(frozen=True)
class PoolRead:
    """What to read from pool shards and how: the arguments of iterate_samples, checked and resolved."""

    url_list: list[str]
    found: Manifest | None
    shuffle_buffer: int
    seed: int
    resample: bool
    epoch: int
    shuffle_shards: bool
    image_size: int | None
    verify: bool

    @classmethod
    def make(cls, urls: str | Path | Sequence[str | Path], shuffle_buffer: int, seed: int, resample: bool,
             epoch: int, shuffle_shards: bool | None, image_size: int | None, manifest: Any,
             verify: bool) -> "PoolRead":
        url_list, found = resolve_set(urls, manifest, POOL_KIND)
        check_read_args(shuffle_buffer, seed, epoch, verify, found)
        if image_size is None and found is not None:
            image_size = found.data.get("image_size")
        return cls(url_list, found, shuffle_buffer, seed, resample, epoch,
                   shuffle_buffer > 0 if shuffle_shards is None else shuffle_shards, image_size, verify)

    def samples(self, stats: ReadStats, reader: int = 0, readers: int = 1) -> Iterator[Sample]:
        """Reader `reader` of `readers`'s decoded samples (see stream_shards), counted in `stats`."""
        decoder = PoolDecoder(self.image_size, self.found.data if self.found else None)
        return stream_shards(self.url_list, self.found, decoder.decode, stats, self.shuffle_buffer, self.seed,
                       self.resample, self.epoch, self.shuffle_shards, self.verify, reader, readers)



def check_read_args(shuffle_buffer: int, seed: int, epoch: int, verify: bool, found: Manifest | None) -> None:
    for name, value in (("shuffle_buffer", shuffle_buffer), ("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if verify and found is None:
        raise ValueError("verify=True needs a manifest (its per-shard SHA-256)")



Decode = Callable[[str, dict[str, bytes], "str | None", str], Any]


def stream_shards(url_list: list[str], found: Manifest | None, decode: Decode, stats: ReadStats, shuffle_buffer: int,
            seed: int, resample: bool, epoch: int, shuffle_shards: bool, verify: bool, reader: int = 0,
            readers: int = 1) -> Iterator[Any]:
    """Decoded samples of reader `reader` of `readers` (worker processes): in order, it reads every
    readers-th shard of the (permuted) shard list, so each shard is read once; resampling, it draws from
    every shard. Each reader's draws and shuffle buffer have random streams of their own (seeded by
    (seed, epoch, reader)); reader 0 of 1 is the whole stream."""
    entries = found.entries() if found else {}

    def rng(purpose: int, own: bool) -> np.random.Generator:
        return np.random.default_rng([seed, epoch, purpose] + ([reader] if own and readers > 1 else []))

    shard_rng = rng(0, own=resample)  # in order, every reader needs the same shard permutation
    sample_rng = rng(1, own=True)

    def shard(url: str) -> Iterator[Any]:
        return _shard_samples(url, entries.get(normalized_url(url)), found is not None, decode, stats, verify)

    def ordered() -> Iterator[Any]:
        order = shard_rng.permutation(len(url_list)).tolist() if shuffle_shards else range(len(url_list))
        for i in order[reader::readers]:
            yield from shard(url_list[i])

    def resampled() -> Iterator[Any]:
        empty: set[int] = set()  # shards drawn since the last sample, all of which gave none
        while True:
            i = int(shard_rng.integers(len(url_list)))
            got = 0
            for sample in shard(url_list[i]):
                got += 1
                yield sample
            if got:
                empty.clear()
            else:
                empty.add(i)
                if len(empty) == len(url_list):  # every shard tried since the last sample: give up
                    return

    samples = resampled() if resample else ordered()
    return _shuffled(samples, shuffle_buffer, sample_rng) if shuffle_buffer > 0 else samples


def _shuffled(samples: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    buffer: list[Any] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            j = int(rng.integers(len(buffer)))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()
    for j in rng.permutation(len(buffer)).tolist():
        yield buffer[j]


def _shard_samples(url: str, entry: dict[str, Any] | None, have_manifest: bool, decode: Decode, stats: ReadStats,
                   verify: bool) -> Iterator[Any]:
    """Decoded samples of one shard; counts what it skips (and, given its manifest entry, what it lost)."""
    stats.shards += 1
    expected = entry["count"] if entry else None
    if verify and entry is None:
        stats.shard_errors["not_in_manifest"] += 1
        return
    seen = 0
    try:
        stream = open_url(url)
    except (OSError, ValueError):
        stats.shard_errors["unreadable"] += 1
        stats.skip("lost", url, expected or 0)
        return
    with stream:
        if verify:
            try:
                data = stream.read()
            except OSError:
                data = None
            if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                stats.shard_errors["checksum" if data is not None else "read_error"] += 1
                stats.skip("lost", url, expected)
                return
            stream = _io.BytesIO(data)
        for key, group, error in sample_groups(stream, stats):
            seen += 1
            result = decode(key, group, error, url)
            if isinstance(result, str):
                stats.skip(result, f"{url}#{key}")
            else:
                stats.read += 1
                yield result
    if expected is not None and seen < expected:
        stats.skip("lost", url, expected - seen)



def read_pool(urls: str | Path | Sequence[str | Path], manifest: Any = "auto", *, verify: bool = False,
              stats: ReadStats | None = None) -> ImageTextPool:
    """The ImageTextPool of the shards `urls` (a shard-set directory, its manifest.json, a spec or a
    list), samples in index order, each keeping its stable global index, so the training loop runs on
    it unchanged. Skipped samples are counted in `stats` (pass a ReadStats to see them); a sample
    whose index was already read is skipped as duplicate_index.

    From the manifest come classnames, source_names, num_indices (bound for per-sample state: a subset
    of shards still has the full set's) and config (the PoolConfig of a pool written by write_shards;
    None for folder shards). Without a manifest: no classnames, source names in order of appearance,
    num_indices = largest index + 1, config None. `manifest` and `verify` are as for iterate_samples
    (a directory or manifest.json given as `urls` is its own manifest).
    """
    url_list, found = resolve_set(urls, manifest, POOL_KIND)
    stats = stats if stats is not None else ReadStats()
    meta = found.data if found else {}
    image_size = meta.get("image_size")
    if found is not None:
        wanted = {normalized_url(u) for u in url_list}
        capacity = sum(e["count"] for n, e in found.entries().items() if n in wanted) or 1
    else:
        capacity = 1024
    source_names = list(meta.get("source_names", []))
    images: torch.Tensor | None = None
    rows: list[tuple[int, str, int, int, bool, int]] = []
    seen: set[int] = set()
    for sample in iterate_samples(url_list, manifest=found, verify=verify,
                                  image_size=image_size, stats=stats):
        if sample.index in seen:
            stats.read -= 1
            stats.skip("duplicate_index", f"{sample.url}#{sample.key}")
            continue
        seen.add(sample.index)
        if images is None:
            images = torch.empty((capacity, *sample.image.shape), dtype=torch.uint8)
        elif len(rows) == len(images):
            grown = torch.empty((2 * len(images), *images.shape[1:]), dtype=torch.uint8)
            grown[:len(images)] = images
            images = grown
        images[len(rows)] = sample.image
        if sample.source not in source_names:
            source_names.append(sample.source)
        rows.append((sample.index, sample.caption, sample.label, sample.caption_label, sample.noisy,
                     source_names.index(sample.source)))
    n = len(rows)
    if images is None:
        size = image_size or 0
        images = torch.empty((0, 3, size, size), dtype=torch.uint8)
    indices = torch.tensor([r[0] for r in rows], dtype=torch.int64)
    order = torch.argsort(indices)
    if n and not bool((order == torch.arange(n)).all()):
        images = images[:n][order]
    elif len(images) != n:
        images = images[:n].clone()
    rows = [rows[i] for i in order.tolist()]
    table: dict[str, int] = {}
    caption_ids = [table.setdefault(r[1], len(table)) for r in rows]
    config = None
    if meta.get("pool_config"):
        try:
            config = PoolConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["pool_config"].items()})
        except (TypeError, ValueError):
            config = None
    num_indices = meta.get("num_indices", (max(r[0] for r in rows) + 1) if rows else 0)
    return ImageTextPool(
        images=images, caption_ids=torch.tensor(caption_ids, dtype=torch.int64), captions=list(table),
        labels=torch.tensor([r[2] for r in rows], dtype=torch.int64),
        caption_labels=torch.tensor([r[3] for r in rows], dtype=torch.int64),
        classnames=list(meta.get("classnames", [])), source=torch.tensor([r[5] for r in rows], dtype=torch.int64),
        source_names=tuple(source_names), noisy=torch.tensor([r[4] for r in rows], dtype=torch.bool),
        indices=indices[order], num_indices=int(num_indices), config=config)  # type: ignore[arg-type]
