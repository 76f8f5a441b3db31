"""The image-text training pool: every sample in memory as tensors, batches are slices.

Images are uint8 [N, 3, S, S]; captions are ids into a list of unique strings, so a model
tokenizes each distinct caption once. Every sample has a stable index (its position in the
full pool of its config) that methods use to keep per-sample state; the clean subset keeps
the indices its samples have in the full pool.

A pool is either built from the embedded sources (Fashion-MNIST, digits, shapes) or, with
`shards`, read from a webdataset shard set (harness.data.shards): a directory, its
manifest.json, or a brace spec of tar paths or URLs beside their manifest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.captions import random_attributes, sample_hash, write_captions
from harness.data.sources import SHAPES_TRAIN_COUNT, SOURCE_NAMES, Split, source_split

SUBSETS = ("all", "clean")
_NOISE_STREAM = 1  # random streams of np.random.default_rng([seed, stream])
_CAP_STREAM = 2
_NOISE_CLASS_SALT = 300
# The fields that describe an embedded pool; a shard-set pool leaves them at their defaults.
EMBEDDED_FIELDS = ("sources", "per_source", "shapes_count", "noise", "subset", "seed", "image_size")


@dataclass(frozen=True)
class PoolConfig:
    """Which samples make up a pool, how noisy its captions are, and at what resolution."""

    sources: tuple[str, ...] = SOURCE_NAMES
    per_source: int | None = None
    shapes_count: int = SHAPES_TRAIN_COUNT
    noise: float = 0.0
    subset: str = "all"
    seed: int = 0
    image_size: int = 32
    shards: str | None = None  # a shard set instead of the embedded sources
    manifest_sha256: str | None = None  # of the shard set's manifest: checked when the pool is built
    lazy: bool = False  # shards only: decode each batch's samples from disk instead of reading the set into memory

    def __post_init__(self) -> None:
        if isinstance(self.sources, str) or not isinstance(self.sources, (tuple, list)):
            raise ValueError(f"sources must be a tuple of names from {SOURCE_NAMES}, got {self.sources!r}")
        object.__setattr__(self, "sources", tuple(self.sources))
        unknown = [s for s in self.sources if s not in SOURCE_NAMES]
        if not self.sources or unknown or len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources must be distinct names from {SOURCE_NAMES}, got {self.sources!r}")
        if self.per_source is not None:
            _check_int("per_source", self.per_source, 1, "None or an integer >= 1")
        _check_int("shapes_count", self.shapes_count, 1, "an integer >= 1")
        _check_int("seed", self.seed, 0, "an integer >= 0")
        _check_int("image_size", self.image_size, 8, "an integer >= 8")
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) or not 0 <= self.noise < 1:
            raise ValueError(f"noise must be a number in [0, 1), got {self.noise!r}")
        if self.subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {self.subset!r}")
        if self.shards is not None:
            if not isinstance(self.shards, str) or not self.shards.strip():
                raise ValueError(f"shards must be a shard-set directory, its manifest.json or a brace spec of "
                                 f"shards, got {self.shards!r}")
            mixed = [f.name for f in dataclasses.fields(self)
                     if f.name in EMBEDDED_FIELDS and getattr(self, f.name) != f.default]
            if mixed:
                raise ValueError(f"a shard-set pool takes its samples, captions and image size from the shards; "
                                 f"leave {', '.join(mixed)} out (they describe the embedded pool)")
        if not isinstance(self.lazy, bool) or (self.lazy and self.shards is None):
            raise ValueError(f"lazy must be true or false, and true only with shards; got {self.lazy!r}")
        if self.manifest_sha256 is not None:
            if self.shards is None:
                raise ValueError("manifest_sha256 goes with shards (the SHA-256 of the shard set's manifest)")
            if not isinstance(self.manifest_sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", self.manifest_sha256):
                raise ValueError(f"manifest_sha256 must be 64 lowercase hex digits, got {self.manifest_sha256!r}")


def _check_int(name: str, value: object, minimum: int, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass
class ImageTextPool:
    """In-memory image-caption pairs; all per-sample fields are tensors of length N."""

    images: torch.Tensor          # uint8 [N, 3, S, S]
    caption_ids: torch.Tensor     # int64 [N], into `captions`
    captions: list[str]           # unique caption strings
    labels: torch.Tensor          # int64 [N], global class of the image
    caption_labels: torch.Tensor  # int64 [N], global class the caption describes (differs iff noisy)
    classnames: list[str]         # global class names, sources in config order
    source: torch.Tensor          # int64 [N], into `source_names`
    source_names: tuple[str, ...]
    noisy: torch.Tensor           # bool [N]
    indices: torch.Tensor         # int64 [N], stable sample index in [0, num_indices)
    num_indices: int              # size of the full pool of this config: bound for per-sample state
    config: PoolConfig
    _token_tables: dict[int, tuple[Callable, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.indices)

    def tokenize(self, tokenizer: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Token ids of the unique captions, [len(captions), context_length]: row i is captions[i]."""
        return tokenizer(self.captions)

    def images_at(self, pos: torch.Tensor) -> torch.Tensor:
        """uint8 images of rows `pos` (the access the training loop and references use, as a lazy pool's)."""
        return self.images[pos]

    def tokens_at(self, tokenizer: Callable[[list[str]], torch.Tensor], pos: torch.Tensor) -> torch.Tensor:
        """Token ids of the captions of rows `pos`; each distinct caption is tokenized once per tokenizer."""
        table = self._token_tables.get(id(tokenizer))
        if table is None or table[0] is not tokenizer:
            table = self._token_tables[id(tokenizer)] = (tokenizer, self.tokenize(tokenizer))
        return table[1][self.caption_ids[pos]]

    def subset(self, keep: torch.Tensor) -> "ImageTextPool":
        """The samples where bool mask `keep` is true, with their indices and only their captions."""
        used, caption_ids = torch.unique(self.caption_ids[keep], return_inverse=True)
        return ImageTextPool(
            images=self.images[keep], caption_ids=caption_ids, captions=[self.captions[i] for i in used.tolist()],
            labels=self.labels[keep], caption_labels=self.caption_labels[keep], classnames=self.classnames,
            source=self.source[keep], source_names=self.source_names, noisy=self.noisy[keep],
            indices=self.indices[keep], num_indices=self.num_indices, config=self.config)

def as_image_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 images [N, H, W] or [N, H, W, 3] -> uint8 [N, 3, size, size] (greyscale replicated)."""
    x = torch.tensor(np.asarray(images, dtype=np.uint8))
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).round_().clamp_(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous()


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
    """The pool described by `cfg` (the clean subset if cfg.subset == "clean"), drawn from the sources' train
    split; split="test" draws the same kind of pool (captions, noise) from their test images instead.
    A shard-set pool (cfg.shards) is its shards, read whole (see shard_pool)."""
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
    return "::".join(p if _is_url(p) or os.path.isabs(p) else os.path.join(os.getcwd(), p) for p in parts)


def shard_set(spec: str) -> ShardSet:
    """The manifest of shard spec `spec` (a directory, its manifest.json, or a brace spec of tar paths or URLs
    with the manifest beside the first shard), checked to describe an image-text pool; ValueError naming
    the manifest when it is missing, unreadable or of another kind."""
    from harness.data import shards  # shards imports this module: imported when first needed

    manifest = _manifest_location(spec)
    try:
        shards.iterate_samples(spec, manifest=manifest).close()  # checks the manifest; reads no shard
        raw = _read_bytes(manifest)
        meta = json.loads(raw)
        names = None if manifest == spec or Path(spec).is_dir() else \
            {u.rstrip("/").rsplit("/", 1)[-1] for u in shards.expand_urls(spec)}
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
    from harness.data import shards  # shards imports this module: imported when first needed

    if split != "train":
        raise ValueError(f"the shard-set pool {cfg.shards} has no {split!r} split: a shard set is one set of "
                         "training samples")
    if cfg.manifest_sha256 is not None:
        found = shard_set(cfg.shards).sha256
        if found != cfg.manifest_sha256:
            raise ValueError(f"the shard set {cfg.shards} changed since the grid was expanded: its manifest's "
                             f"SHA-256 is {found}, the run was made for {cfg.manifest_sha256}")
    if cfg.lazy:
        from harness.data.lazy import LazyShardPool  # imports shards, which imports this module
        return LazyShardPool(cfg)
    stats = shards.ReadStats()
    pool = shards.read_pool(cfg.shards, verify=True, stats=stats)
    if stats.shard_errors or stats.reasons.get("lost"):
        raise ValueError(f"the shard set {cfg.shards} is damaged: {stats}; shard errors: "
                         f"{dict(sorted(stats.shard_errors.items()))}; e.g. {'; '.join(stats.examples[:3])}")
    if not len(pool):
        raise ValueError(f"the shard set {cfg.shards} holds no readable sample")
    if stats.skipped:
        print(f"shard set {cfg.shards}: {stats}", file=sys.stderr)
    return dataclasses.replace(pool, config=cfg)


def _is_url(location: str) -> bool:
    return "://" in location


def _manifest_location(spec: str) -> str:
    """Where the manifest of shard spec `spec` lies, by harness.data.shards' conventions."""
    from harness.data import shards  # shards imports this module: imported when first needed

    spec = spec.strip()
    if "{" not in spec and "::" not in spec:
        if spec.rstrip("/").rsplit("/", 1)[-1] == shards.MANIFEST:
            return spec
        if not _is_url(spec) and Path(spec).is_dir():
            return str(Path(spec) / shards.MANIFEST)
    urls = shards.expand_urls(spec)
    if not urls:
        raise ValueError(f"the shard spec {spec!r} names no shards")
    return f"{urls[0].rsplit('/', 1)[0]}/{shards.MANIFEST}" if _is_url(urls[0]) else \
        str(Path(urls[0]).parent / shards.MANIFEST)


def _read_bytes(location: str) -> bytes:
    """The bytes of a local file or of a file://, http:// or https:// URL."""
    from harness.data.shards import URL_TIMEOUT_S

    if not _is_url(location):
        return Path(location).read_bytes()
    with urllib.request.urlopen(location, timeout=URL_TIMEOUT_S) as response:  # noqa: S310 - the user's own shard URL
        return response.read()
