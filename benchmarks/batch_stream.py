"""Training batches streamed from pool shards (the loading benchmark's webdataset loader): samples read as
harness.data.shards.iterate_samples reads them, tokenized where they are read, optionally by worker processes
(a torch DataLoader) that split the shards between them as webdataset does, each counting what it skips."""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from harness.data.shards.read import PoolRead
from harness.data.shards.stats import ReadStats

TOKEN_CACHE_CAPTIONS = 20_000  # distinct captions whose token ids a reader keeps (12 MB of ids at 77 int64)
WORKER_PREFETCH = 2             # batches each worker process has ready in advance (DataLoader's prefetch_factor)


@dataclass(frozen=True)
class Batch:
    """A training batch: the samples' stable global indices, images and caption token ids."""

    index: torch.Tensor   # int64 [B]
    image: torch.Tensor   # uint8 [B, 3, S, S]
    text: torch.Tensor    # the tokenizer's ids, [B, context_length]


class _TokenCache:
    """Token ids of captions, each distinct caption tokenized once: captions repeat (templates, duplicates
    in web data) and tokenizing costs more per caption than decoding a small image. It starts afresh
    rather than grow past `capacity` captions (or one batch's), so a stream of unique captions costs
    bounded memory and no more tokenizing than without it."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor], capacity: int = TOKEN_CACHE_CAPTIONS) -> None:
        self.tokenizer, self.capacity = tokenizer, capacity
        self.rows: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        if len(self.rows) + len(captions) > self.capacity:
            self.rows.clear()
        new = [c for c in dict.fromkeys(captions) if c not in self.rows]
        if new:
            self.rows.update(zip(new, self.tokenizer(new)))
        return torch.stack([self.rows[c] for c in captions])


_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # a Batch's index, image and text as they travel


class _BatchReader(IterableDataset):
    """Batches of one reader (the main process, or each DataLoader worker with its share of the shards),
    each with a copy of that reader's statistics; a last item (None, reader, stats) once it ends.

    A batch travels as numpy arrays, which a worker's queue pickles by value: torch tensors would go
    through shared memory, whose fixed cost (about 1 ms per tensor here) exceeds copying a batch of
    small images (a 128 x 3 x 32 x 32 batch pickles in 0.04 ms)."""

    def __init__(self, read: PoolRead, batch_size: int, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self.read, self.batch_size, self.tokenizer = read, batch_size, tokenizer

    def __iter__(self) -> Iterator[tuple[_Arrays | None, int, ReadStats]]:
        info = get_worker_info()
        reader, readers = (info.id, info.num_workers) if info is not None else (0, 1)
        stats = ReadStats()
        samples = self.read.samples(stats, reader, readers)
        tokens = _TokenCache(self.tokenizer)
        while chunk := list(itertools.islice(samples, self.batch_size)):
            arrays = (np.array([s.index for s in chunk], dtype=np.int64),
                      torch.stack([s.image for s in chunk]).numpy(), tokens([s.caption for s in chunk]).numpy())
            yield arrays, reader, copy.deepcopy(stats)  # a copy: a worker's queue pickles it later
        yield None, reader, copy.deepcopy(stats)


def _as_is(item: Any) -> Any:
    """The DataLoader's collate function: the readers yield whole batches."""
    return item


class BatchStream:
    """An iterator of Batch whose `stats` sum what every reader has read and skipped so far (up to the
    batch last delivered; once the stream ends, all of it)."""

    def __init__(self, reader: _BatchReader, num_workers: int) -> None:
        self._parts: dict[int, ReadStats] = {}
        self._items: Iterator[tuple[_Arrays | None, int, ReadStats]] = iter(
            DataLoader(reader, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                       prefetch_factor=WORKER_PREFETCH) if num_workers else reader)

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> Batch:
        while True:
            arrays, reader, stats = next(self._items)
            self._parts[reader] = stats
            if arrays is not None:
                index, image, text = (torch.from_numpy(a) for a in arrays)
                return Batch(index=index, image=image, text=text)

    @property
    def stats(self) -> ReadStats:
        """Every reader's statistics summed (readers in order)."""
        return ReadStats.combine(self._parts[k] for k in sorted(self._parts))

    def close(self) -> None:
        """Stop reading: closes the shard being read, or shuts the worker processes down."""
        self._items = iter(())


def iterate_batches(urls: str | Path | Sequence[str | Path], batch_size: int,
                    tokenizer: Callable[[list[str]], torch.Tensor], shuffle_buffer: int = 0, seed: int = 0,
                    resample: bool = False, epoch: int = 0, *, num_workers: int = 0,
                    shuffle_shards: bool | None = None, image_size: int | None = None, manifest: Any = "auto",
                    verify: bool = False) -> BatchStream:
    """Training batches (Batch: index, image, text) of the shards `urls`, for a training loop that streams.

    Samples come as from iterate_samples (same arguments, same skipping and counting: `stream.stats`),
    `batch_size` at a time (a finite stream's last batch may be shorter); captions are tokenized where the
    samples are read, each distinct caption once per reader (a cache of TOKEN_CACHE_CAPTIONS).

    With `num_workers` > 0 the reading runs in that many worker processes (a torch DataLoader; fewer
    when reading in order from fewer shards): in order, each reads every num_workers-th shard of the
    (permuted) shard list, so every sample still comes once; resampling, each draws shards from all of
    them. Each worker has its own shuffle buffer and random streams (from seed, epoch and its number),
    and batches come from the workers in turn, so the same arguments give the same batches; every sample
    keeps its stable global index. Without a manifest or `image_size`, each worker takes its image size
    from its own first sample.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    read = PoolRead.make(urls, shuffle_buffer, seed, resample, epoch, shuffle_shards, image_size, manifest, verify)
    workers = num_workers if resample else min(num_workers, len(read.url_list))
    return BatchStream(_BatchReader(read, batch_size, tokenizer), workers)
