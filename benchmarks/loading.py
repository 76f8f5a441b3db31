"""Data loading: samples/s of producing training batches (positions -> image slice -> augmentation -> caption
token ids) against samples/s that a clip training step consumes."""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Callable, Iterator

import torch

from benchmarks.batch_stream import WORKER_PREFETCH, BatchStream, iterate_batches
from benchmarks.fixtures import BareClip, demo_pool, demo_train, fresh_model, scratch
from benchmarks.timing import Goal, GroupResult, Result, Settings, interleave, ratio, seconds
from harness.data import shards
from harness.data.pool import ImageTextPool
from harness.run.train import batch_positions, random_shift

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
Loader = Callable[[int], Batches]
BATCHES_PER_CALL = 20
SHARD_SAMPLES = 4000  # pool samples written as shards for the webdataset loader
SHUFFLE_BUFFER = 1000
LOADER_WORKERS = 2    # worker processes of the webdataset loader: this machine's cores
GOAL = Goal(">=", 10.0)  # "the loader must never be the bottleneck", taken as at least 10x the consumption


def pool_batches(pool: ImageTextPool, tokens: torch.Tensor, batch_size: int, augment: bool, seed: int = 0) -> Batches:
    """The harness's batches, in its order: uint8 images (shifted when `augment`) and their caption token ids."""
    for step in itertools.count():
        pos = batch_positions(step, len(pool), batch_size, seed)
        images = pool.images[pos]
        yield (random_shift(images, seed, step) if augment else images), tokens[pool.caption_ids[pos]]


def write_demo_shards(pool: ImageTextPool, where: Path, image_format: str) -> float:
    """Write the first SHARD_SAMPLES pool samples as tar shards (harness.data.shards, images as `image_format`)
    into `where`; the seconds it took."""
    keep = torch.zeros(len(pool), dtype=torch.bool)
    keep[:SHARD_SAMPLES] = True
    return seconds(lambda: shards.write_shards(pool.subset(keep), where, image_format=image_format))


def shard_loader(where: Path, tokenizer: Callable[[list[str]], torch.Tensor], batch_size: int,
                 num_workers: int) -> tuple[Loader, BatchStream]:
    """A webdataset loader over the shards in `where` (benchmarks.batch_stream.iterate_batches): a resampled stream,
    shuffle buffer SHUFFLE_BUFFER, batched and tokenized where it is read (in this process, or in `num_workers`
    worker processes), augmented here as the training loop does; and its stream, for the read statistics."""
    stream = iterate_batches(where, batch_size, tokenizer, shuffle_buffer=SHUFFLE_BUFFER, seed=0,
                             resample=True, num_workers=num_workers)
    steps = itertools.count()

    def batches(size: int) -> Batches:
        if size != batch_size:
            raise ValueError(f"this shard loader makes batches of {batch_size}, not {size}")
        for step, batch in zip(steps, stream):
            yield random_shift(batch.image, 0, step), batch.text
    return batches, stream


def loaders(pool: ImageTextPool, tokens: torch.Tensor) -> dict[str, Loader]:
    """Batch producers from the embedded pool, by name, each taking the batch size.

    LOADER HOOK: other loaders (such as the webdataset ones, `shard_loader`) are added to this mapping in
    `run`; each yields (uint8 images, token ids) batches, and the rest of this benchmark needs no change.
    """
    return {"embedded pool, augment on": lambda b: pool_batches(pool, tokens, b, augment=True),
            "embedded pool, augment off": lambda b: pool_batches(pool, tokens, b, augment=False)}


def run(settings: Settings, out: Path) -> GroupResult:
    """Interleave producing BATCHES_PER_CALL batches from each loader with clip training steps (bare loop)."""
    pool, cfg = demo_pool(), demo_train()
    consumer = BareClip(fresh_model("tiny-s"), pool, cfg.batch_size, cfg)
    producers = loaders(pool, consumer.tokens)
    ready: dict[str, int] = {}    # batches a loader's workers may have made in advance of a timed call
    goals: dict[str, Goal | None] = {name: GOAL for name in producers}
    streams: dict[str, BatchStream] = {}
    written: dict[str, float] = {}
    with scratch() as where:
        for image_format in shards.IMAGE_FORMATS:
            folder = Path(where) / image_format
            written[image_format] = write_demo_shards(pool, folder, image_format)
            for workers in (0, LOADER_WORKERS):
                name = (f"webdataset shards (harness.data.shards), {image_format.upper()} images, "
                        + (f"{workers} worker processes" if workers else "read in this process") + ", augment on")
                producers[name], streams[name] = shard_loader(folder, consumer.built.tokenizer, cfg.batch_size, workers)
                ready[name] = workers * WORKER_PREFETCH
                goals[name] = GOAL if workers else None
        cases: dict[str, Callable[[], float]] = {
            name: (lambda make=make, skip=ready.get(name, 0): rate(make(cfg.batch_size), cfg.batch_size, skip))
            for name, make in producers.items()}
        cases["clip step (consumption)"] = lambda: cfg.batch_size / consumer.median_step(5, 1)
        rates = interleave(cases, settings.rounds, settings.warmup_rounds)
        read = {name: str(stream.stats) for name, stream in streams.items()}
        for stream in streams.values():
            stream.close()
    result = GroupResult(measurements=[Result(f"samples/s: {name}, tiny-s b{cfg.batch_size}" if "clip" in name
                                              else f"samples/s: {name} (b{cfg.batch_size})", "samples/s", v)
                                       for name, v in rates.items()])
    result.measurements += [Result(f"writing {SHARD_SAMPLES:,} pool samples as tar shards, {fmt.upper()} images (once)",
                                   "s", [seconds_taken]) for fmt, seconds_taken in written.items()]
    result.ratios = [ratio(f"loader / consumption ({name} / clip training step)", (name, rates[name]),
                           ("clip step (consumption)", rates["clip step (consumption)"]), goals[name],
                           note="'must be >> 1', taken as at least 10x" if goals[name]
                           else "the same reader in the main process, for comparison") for name in producers]
    result.facts["loaders"] = list(producers)
    result.facts["webdataset_loader"] = "benchmarks.batch_stream.iterate_batches"
    result.facts["webdataset_read"] = read
    result.notes.append(
        f"Loading: {BATCHES_PER_CALL} batches per timed call; consumption is the median of 5 bare clip steps (tiny-s, "
        "one torch thread). `benchmarks.loading.loaders` is the hook for more loaders. The webdataset loader "
        f"(benchmarks.batch_stream.iterate_batches) streams {SHARD_SAMPLES:,} demo-pool samples written with "
        f"harness.data.shards.write_shards (tmpfs; PNG images, the default, or npy arrays), resampled, shuffle buffer "
        f"{SHUFFLE_BUFFER} per reader; the reader decodes, batches and tokenizes (each distinct caption once), the "
        f"main process augments. Each is timed read in the main process (report only) and read by {LOADER_WORKERS} "
        f"worker processes (torch DataLoader; this machine has {os.cpu_count()} cores), the goal's cases. Workers "
        "keep reading between timed calls, as they would during training: the up to "
        f"{LOADER_WORKERS}x{WORKER_PREFETCH} batches they have ready when a call starts are taken before its "
        "clock starts, so the rate is what they sustain.")
    return result


def rate(batches: Batches, batch_size: int, ready: int) -> float:
    """Samples/s of BATCHES_PER_CALL batches from `batches`, after taking `ready` untimed (made in advance)."""
    for _ in itertools.islice(batches, ready):
        pass
    return batch_size * BATCHES_PER_CALL / seconds(lambda: list(itertools.islice(batches, BATCHES_PER_CALL)))
