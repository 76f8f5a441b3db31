"""The image-text training pool: every sample in memory as tensors, batches are slices.

Images are uint8 [N, 3, S, S]; captions are ids into a list of unique strings, so a model
tokenizes each distinct caption once. Every sample has a stable index (its position in the
full pool of its config) that methods use to keep per-sample state; the clean subset keeps
the indices its samples have in the full pool.

A pool is built from its PoolConfig (harness.data.build): from the embedded sources (Fashion-MNIST,
digits, shapes) or, with `shards`, from a webdataset shard set (harness.data.shardset): a directory,
its manifest.json, or a brace spec of tar paths or URLs beside their manifest.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.sources import SHAPES_TRAIN_COUNT, SOURCE_NAMES
from harness.store.identity import IN_ID_UNLESS_DEFAULT, NOT_IN_ID

SUBSETS = ("all", "clean")
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
    # a shard set instead of the embedded sources (the metadata: what stays out of run ids, harness.store.identity)
    shards: str | None = field(default=None, metadata=IN_ID_UNLESS_DEFAULT)
    # of the shard set's manifest: checked when the pool is built
    manifest_sha256: str | None = field(default=None, metadata=IN_ID_UNLESS_DEFAULT)
    # shards only: decode each batch's samples from disk instead of reading the set into memory
    lazy: bool = field(default=False, metadata=NOT_IN_ID)

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
