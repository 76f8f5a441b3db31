"""Building the pool a PoolConfig describes: drawn from the embedded sources, or read from a shard set."""
from __future__ import annotations

import numpy as np
import torch

from harness.data.captions import random_attributes, sample_hash, write_captions
from harness.data.pool import ImageTextPool, PoolConfig, as_image_tensor
from harness.data.shardset import shard_pool
from harness.data.sources import SOURCE_NAMES, Split, source_split

_NOISE_STREAM = 1  # random streams of np.random.default_rng([seed, stream])
_CAP_STREAM = 2
_VALIDATION_STREAM = 3
_NOISE_CLASS_SALT = 300


def _rows(split: Split, source: str, cfg: PoolConfig) -> np.ndarray:
    """The split rows a pool takes: all, or `per_source` of them drawn by seed (in split order)."""
    n = len(split)
    if cfg.per_source is None or cfg.per_source >= n:
        return np.arange(n)
    rng = np.random.default_rng([cfg.seed, _CAP_STREAM, SOURCE_NAMES.index(source)])
    return np.sort(rng.permutation(n)[:cfg.per_source])


class _CaptionTable:
    """Unique caption strings gathered across sources, with global ids."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def add(self, captions: list[str], ids: np.ndarray) -> np.ndarray:
        table = np.array([self.ids.setdefault(c, len(self.ids)) for c in captions], dtype=np.int64)
        return table[ids]


def build_pool(cfg: PoolConfig, split: str = "train") -> ImageTextPool:
    """The pool that runs of `cfg` train on (the clean subset if cfg.subset == "clean"), drawn from the sources'
    train split, less the cfg.validation pairs held out (split_validation); split="test" draws the same kind of
    pool (captions, noise) from their test images instead, whole. A shard-set pool (cfg.shards) is its shards,
    read whole (see shard_pool), less its held-out pairs."""
    return split_validation(cfg)[0] if split == "train" and cfg.validation else _whole_pool(cfg, split)


def split_validation(cfg: PoolConfig) -> tuple[ImageTextPool, ImageTextPool]:
    """The training pool of `cfg` and its validation pairs: cfg.validation pairs drawn by cfg.seed from the whole
    pool, held out of training. Both keep their samples' stable indices, so a reference-feature cache of the whole
    pool serves them. ValueError when fewer than one pair would be left to train on."""
    whole = _whole_pool(cfg, "train")
    if cfg.validation >= len(whole):
        raise ValueError(f"validation: {cfg.validation} pairs held out of a pool of {len(whole)} would leave none to "
                         "train on")
    held = torch.zeros(len(whole), dtype=torch.bool)
    rng = np.random.default_rng([cfg.seed, _VALIDATION_STREAM])
    held[torch.from_numpy(rng.permutation(len(whole))[:cfg.validation])] = True
    return whole.subset(~held), whole.subset(held)


def _whole_pool(cfg: PoolConfig, split: str) -> ImageTextPool:
    """Every sample of `cfg`'s `split` (none held out for validation)."""
    if cfg.shards is not None:
        return shard_pool(cfg, split)
    splits = {name: source_split(name, split, cfg.shapes_count) for name in cfg.sources}
    rows = {name: _rows(split, name, cfg) for name, split in splits.items()}
    offsets = np.cumsum([0] + [len(s.classnames) for s in splits.values()])
    classnames = [c for s in splits.values() for c in s.classnames]
    source_of_class = np.repeat(np.arange(len(splits)), [len(s.classnames) for s in splits.values()])
    # Caption keys: source id and row in the source's split, so a sample keeps its caption
    # whichever other sources or caps a config picks.
    keys = np.concatenate([(SOURCE_NAMES.index(n) << 32) + r for n, r in rows.items()])
    source = np.repeat(np.arange(len(splits)), [len(r) for r in rows.values()])
    labels = np.concatenate([splits[n].labels[r] + offsets[i] for i, (n, r) in enumerate(rows.items())])
    n = len(labels)

    noisy = np.zeros(n, dtype=bool)
    noisy[np.random.default_rng([cfg.seed, _NOISE_STREAM]).permutation(n)[:round(cfg.noise * n)]] = True
    shift = sample_hash(cfg.seed, keys, _NOISE_CLASS_SALT) % np.uint64(len(classnames) - 1)
    caption_labels = np.where(noisy, (labels + 1 + shift.astype(np.int64)) % len(classnames), labels)

    starts = np.cumsum([0] + [len(r) for r in rows.values()])
    table = _CaptionTable()
    caption_ids = np.empty(n, dtype=np.int64)
    for i, name in enumerate(splits):
        clean = np.flatnonzero((source == i) & ~noisy)
        wrong = np.flatnonzero(noisy & (source_of_class[caption_labels] == i))
        own = {k: v[rows[name][clean - starts[i]]] for k, v in splits[name].attributes.items()}
        for where, attrs in ((clean, own), (wrong, random_attributes(name, keys[wrong], cfg.seed))):
            if len(where):
                caption_ids[where] = table.add(*write_captions(
                    name, caption_labels[where] - offsets[i], keys[where], cfg.seed, attrs))

    images = torch.cat([as_image_tensor(splits[n].images[r], cfg.image_size) for n, r in rows.items()])
    pool = ImageTextPool(images=images, caption_ids=torch.from_numpy(caption_ids), captions=list(table.ids),
                         labels=torch.from_numpy(labels), caption_labels=torch.from_numpy(caption_labels),
                         classnames=classnames, source=torch.from_numpy(source),
                         source_names=tuple(splits), noisy=torch.from_numpy(noisy),
                         indices=torch.arange(n), num_indices=n, config=cfg)
    return pool.subset(~pool.noisy) if cfg.subset == "clean" else pool

