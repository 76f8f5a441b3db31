"""Which samples make up a pool (PoolConfig): plain data with its checks, free of torch so that the grid
validator reads it without loading torch (harness.data.pool builds the pool itself)."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from harness.store.identity import IN_ID_UNLESS_DEFAULT, NOT_IN_ID

SOURCE_NAMES = ("fashion_mnist", "digits", "shapes")  # the embedded sources (harness.data.sources)
SHAPES_TRAIN_COUNT = 5000  # generated shapes in the training split, by default
SHAPES_TEST_COUNT = 1000  # generated shapes in the test split
# Rows of the fixed sources' splits (Fashion-MNIST's files; scikit-learn's 1,797 digits split 80/20), so that a
# pool's size is known without reading them; tests/test_data.py builds pools and compares.
SOURCE_ROWS = {"fashion_mnist": {"train": 60000, "test": 10000}, "digits": {"train": 1437, "test": 360}}

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
    # pairs held out of the pool's training split and never trained on: the validation split that tuning stages
    # score their candidates on (harness.grid.tuning); drawn by `seed`, 0 for none
    validation: int = field(default=0, metadata=IN_ID_UNLESS_DEFAULT)
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
        _check_int("validation", self.validation, 0, "an integer >= 0 (pairs held out for validation)")
        if self.validation and self.lazy:
            raise ValueError("validation holds pairs out of an in-memory pool; it cannot be used with lazy: true")
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


def embedded_pool_size(cfg: PoolConfig, split: str = "train") -> int:
    """The number of samples harness.data.build.build_pool draws for embedded pool `cfg` from `split` (less the
    pairs held out for validation), without building it (the dry run's estimate needs the size of a pool it does
    not train on)."""
    if cfg.shards is not None:
        raise ValueError("a shard-set pool's size is its manifest's count (harness.data.shardset.shard_set)")
    rows = {name: SOURCE_ROWS[name][split] if name in SOURCE_ROWS else
            (cfg.shapes_count if split == "train" else SHAPES_TEST_COUNT) for name in cfg.sources}
    n = sum(r if cfg.per_source is None else min(r, cfg.per_source) for r in rows.values())
    n = n - round(cfg.noise * n) if cfg.subset == "clean" else n
    return n - cfg.validation if split == "train" else n


def _check_int(name: str, value: object, minimum: int, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
