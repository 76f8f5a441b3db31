"""Data loading: samples/s of producing training batches (positions -> image slice -> augmentation -> caption
token ids) against samples/s that a clip training step consumes."""
from __future__ import annotations

import importlib.util
import itertools
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from benchmarks.fixtures import BareClip, demo_pool, demo_train, fresh_model, scratch
from benchmarks.timing import Goal, GroupResult, Result, Settings, interleave, ratio, seconds
from harness.data.pool import ImageTextPool
from harness.train import batch_positions, random_shift

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
Loader = Callable[[int], Batches]
BATCHES_PER_CALL = 20
SHARD_SAMPLES = 4000  # pool samples written as shards for the webdataset loader
SHUFFLE_BUFFER = 1000


def pool_batches(pool: ImageTextPool, tokens: torch.Tensor, batch_size: int, augment: bool, seed: int = 0) -> Batches:
    """The harness's batches, in its order: uint8 images (shifted when `augment`) and their caption token ids."""
    for step in itertools.count():
        pos = batch_positions(step, len(pool), batch_size, seed)
        images = pool.images[pos]
        yield (random_shift(images, seed, step) if augment else images), tokens[pool.caption_ids[pos]]


def shard_loader(pool: ImageTextPool, tokenizer: Callable[[list[str]], torch.Tensor], where: Path) -> tuple[Loader, float]:
    """A webdataset loader over SHARD_SAMPLES pool samples written as tar shards (harness.data.shards): a
    resampled, shuffled stream (buffer SHUFFLE_BUFFER) batched, augmented and tokenized per batch; and the
    seconds the shards took to write."""
    from harness.data import shards
    keep = torch.zeros(len(pool), dtype=torch.bool)
    keep[:SHARD_SAMPLES] = True
    start = time.perf_counter()
    shards.write_shards(pool.subset(keep), where)
    written = time.perf_counter() - start
    stream = shards.iterate_samples(where, shuffle_buffer=SHUFFLE_BUFFER, seed=0, resample=True)

    def batches(batch_size: int) -> Batches:
        for step in itertools.count():
            samples = list(itertools.islice(stream, batch_size))
            images = torch.stack([s.image for s in samples])
            yield random_shift(images, 0, step), tokenizer([s.caption for s in samples])
    return batches, written


def loaders(pool: ImageTextPool, tokens: torch.Tensor) -> dict[str, Loader]:
    """Batch producers from the embedded pool, by name, each taking the batch size.

    LOADER HOOK: other loaders (such as the webdataset one, `shard_loader`) are added to this mapping in
    `run`; each yields (uint8 images, token ids) batches, and the rest of this benchmark needs no change.
    """
    return {"embedded pool, augment on": lambda b: pool_batches(pool, tokens, b, augment=True),
            "embedded pool, augment off": lambda b: pool_batches(pool, tokens, b, augment=False)}


def run(settings: Settings, out: Path) -> GroupResult:
    """Interleave producing BATCHES_PER_CALL batches from each loader with clip training steps (bare loop)."""
    pool, cfg = demo_pool(), demo_train()
    consumer = BareClip(fresh_model("tiny-s"), pool, cfg.batch_size, cfg)
    producers = loaders(pool, consumer.tokens)
    have_shards = importlib.util.find_spec("harness.data.shards") is not None
    with scratch() as where:
        if have_shards:
            name = "webdataset shards (harness.data.shards), augment on, tokenized per batch"
            producers[name], written = shard_loader(pool, consumer.built.tokenizer, Path(where))
        cases: dict[str, Callable[[], float]] = {
            name: (lambda make=make: cfg.batch_size * BATCHES_PER_CALL / seconds(
                lambda: list(itertools.islice(make(cfg.batch_size), BATCHES_PER_CALL))))
            for name, make in producers.items()}
        cases["clip step (consumption)"] = lambda: cfg.batch_size / consumer.median_step(5, 1)
        rates = interleave(cases, settings.rounds, settings.warmup_rounds)
    result = GroupResult(measurements=[Result(f"samples/s: {name}, tiny-s b{cfg.batch_size}" if "clip" in name
                                              else f"samples/s: {name} (b{cfg.batch_size})", "samples/s", v)
                                       for name, v in rates.items()])
    if have_shards:
        result.measurements.append(Result(f"writing {SHARD_SAMPLES:,} pool samples as tar shards (once)", "s", [written]))
    result.ratios = [ratio(f"loader / consumption ({name} / clip training step)", (name, rates[name]),
                           ("clip step (consumption)", rates["clip step (consumption)"]), Goal(">=", 10.0),
                           note="'must be >> 1', taken as at least 10x") for name in producers]
    result.facts["loaders"] = list(producers)
    result.facts["webdataset_loader"] = "harness.data.shards" if have_shards else "absent"
    result.notes.append(
        f"Loading: {BATCHES_PER_CALL} batches per timed call, one thread, no worker processes; consumption is the "
        "median of 5 bare clip steps (tiny-s). `benchmarks.loading.loaders` is the hook for more loaders. "
        + (f"The webdataset loader streams {SHARD_SAMPLES:,} demo-pool samples written with "
           f"harness.data.shards.write_shards (tmpfs), resampled, shuffle buffer {SHUFFLE_BUFFER}, PNG decoding, "
           "augmentation and tokenization per batch." if have_shards else
           "harness/data/shards.py does not exist yet, so no webdataset loader is timed."))
    return result
