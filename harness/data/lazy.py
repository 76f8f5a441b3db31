"""Random access into a shard set: the pool stays on disk and a batch decodes only its own samples.

A shard set too large for memory (DFN-192M at 224 px holds some 29 TB of pixels) is read lazily.
Each shard is indexed once: the byte offset and size of every sample's image and caption, and
the sample's stable index from its json; the index is checked against the shard's SHA-256 in the
manifest and cached under $CLIPSTEER_CACHE (default ~/.cache/clipsteer) by that SHA-256. Rows are
in stable-index order, as `read_pool` orders an in-memory pool, so a lazy pool trains exactly as
the in-memory pool of the same shards does: the same seeded permutation per epoch, exact resume,
selection, and data parallelism in which a rank decodes only its own share of a batch.

A sample found undecodable when a batch reads it is replaced by the next row that decodes (the
same replacement every time, so a resumed run stays on its trajectory), and counted in `stats`.
"""
from __future__ import annotations

import concurrent.futures
import functools
import io as _io
import json
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness import io
from harness.data.pool import PoolConfig
from harness.data.shards.decode import IMAGE_EXTENSIONS, decode_image
from harness.data.shards.manifest import POOL_KIND, resolve_set
from harness.data.shards.stats import ReadStats
from harness.data.shards.tar import TarError, tar_members
from harness.data.shards.urls import has_scheme, normalized_url

CACHE_ENV = "CLIPSTEER_CACHE"
INDEX_VERSION = 1
OPEN_FILES = 64  # shard files each thread keeps open between batches
DECODE_THREADS = min(8, len(os.sched_getaffinity(0)))
INDEX_BYTES_PER_SAMPLE = 80  # what a lazy pool holds per row (int64 index, offsets, sizes, shard and row numbers)


def cache_root() -> Path:
    """Where shard indices are cached: $CLIPSTEER_CACHE, or ~/.cache/clipsteer."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "clipsteer")


def index_shard(path: str, sha256: str, stats: ReadStats) -> dict[str, np.ndarray]:
    """The index of one local shard: per sample its stable index, image extension id, and the offset and size
    of its image and txt members. Built by reading the shard once (its bytes must hash to `sha256`, the
    manifest's), then cached; samples without an image, txt or a json with an integer index are skipped."""
    cached = cache_root() / "shard-index" / f"{sha256}.npz"
    if cached.is_file():
        with np.load(cached) as saved:
            if int(saved["version"]) == INDEX_VERSION:
                return {k: saved[k] for k in saved.files if k != "version"}
    if io.file_sha256(Path(path)) != sha256:
        raise ValueError(f"shard {path} does not match the SHA-256 in its manifest")
    groups: dict[str, dict[str, tuple[int, int]]] = {}  # key -> extension -> (offset, size) of the member
    json_index: dict[str, int | None] = {}
    with open(path, "rb") as f:
        try:
            for name, offset, data in tar_members(f):
                if "." in name:
                    key, ext = name.split(".", 1)
                    groups.setdefault(key, {})[ext.lower()] = (offset, len(data))
                    if ext.lower() == "json":
                        json_index[key] = _json_index(data)
        except TarError as e:
            raise ValueError(f"shard {path} is not a readable tar file ({e.reason})") from None
    rows = []
    for key, group in groups.items():
        ext = next((e for e in IMAGE_EXTENSIONS if e in group), None)
        index = json_index.get(key)
        if ext is None or "txt" not in group or index is None:
            stats.skip("unindexable", f"{path}#{key}")
            continue
        rows.append((index, IMAGE_EXTENSIONS.index(ext), *group[ext], *group["txt"]))
    table = np.array(rows, dtype=np.int64).reshape(-1, 6)
    index = {"indices": table[:, 0], "ext": table[:, 1], "offsets": table[:, [2, 4]], "sizes": table[:, [3, 5]]}
    with io.writing(cached.parent):  # workers index shards at once: each write first removes killed ones' temporaries
        io.write_bytes(cached, _npz_bytes({**index, "version": np.array(INDEX_VERSION)}))
    return index


def _json_index(data: bytes) -> int | None:
    """The sample index a json member holds, or None."""
    try:
        meta = json.loads(data)
    except ValueError:
        return None
    index = meta.get("index") if isinstance(meta, dict) else None
    return index if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < 2**62 else None


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class LazyShardPool:
    """A shard set as a pool whose images and captions are read from disk when a batch needs them.

    Offers what the training loop, the reference models and the feature cache use of a pool: len,
    `indices` (stable, one per row), `num_indices`, `images_at`, `tokens_at`, `subset`, `config`.
    """

    noisy = None  # a shard set does not say which captions are noise

    def __init__(self, cfg: PoolConfig, stats: ReadStats | None = None) -> None:
        urls, found = resolve_set(cfg.shards, "auto", POOL_KIND)
        if found is None:
            raise ValueError(f"the shard set {cfg.shards} has no manifest: a lazy pool needs the shards' SHA-256s")
        if any(has_scheme(u) for u in urls):
            raise ValueError(f"a lazy pool reads shards by seeking, so they must be local (or mounted) files; "
                             f"{cfg.shards} names URLs: read it into memory (leave out 'lazy') or mount it")
        self.stats = stats if stats is not None else ReadStats()
        entries = found.entries()
        parts = [index_shard(u, entries[normalized_url(u)]["sha256"], self.stats) for u in urls]
        indices = np.concatenate([p["indices"] for p in parts])
        shard_of = np.repeat(np.arange(len(parts)), [len(p["indices"]) for p in parts])
        local = np.concatenate([np.arange(len(p["indices"])) for p in parts])
        order = np.argsort(indices, kind="stable")
        first = np.ones(len(order), dtype=bool)
        first[1:] = indices[order][1:] != indices[order][:-1]  # a repeated index keeps its first sample
        self.stats.skip("duplicate_index", cfg.shards, int((~first).sum()))
        order = order[first]
        self.urls, self.config = urls, cfg
        self._parts, self._shard, self._local = parts, shard_of[order], local[order]
        self.indices = torch.from_numpy(indices[order].copy())
        self.num_indices = int(found.data.get("num_indices", int(indices.max()) + 1 if len(indices) else 0))
        size = found.data.get("image_size")
        self.image_shape = None if size is None else (3, int(size), int(size))
        self._rows = torch.arange(len(order))
        self._open = threading.local()  # per thread: shard -> open file descriptor
        self._lock = threading.Lock()
        self._replaced: dict[int, int] = {}  # undecodable row -> the row read in its place

    def __len__(self) -> int:
        return len(self._rows)

    def subset(self, keep: torch.Tensor) -> "LazyShardPool":
        """The rows where bool mask `keep` is true (sharing this pool's index and open files)."""
        view = object.__new__(LazyShardPool)
        view.__dict__.update(self.__dict__)
        view._rows, view.indices = self._rows[keep], self.indices[keep]
        return view

    def images_at(self, pos: torch.Tensor) -> torch.Tensor:
        """uint8 [len(pos), 3, S, S]: the images of rows `pos`, decoded now by DECODE_THREADS threads (image
        decoders release the GIL); call before captions_at: a row whose image does not decode is replaced
        here, caption included."""
        return torch.stack(list(_decoders().map(self._image_at, pos.tolist())))

    def _image_at(self, p: int) -> torch.Tensor:
        row = self._replaced.get(int(self._rows[p]), int(self._rows[p]))
        try:
            return self._image(row)
        except Exception:  # noqa: BLE001 - PIL raises many kinds on damaged data
            with self._lock:  # another thread may have replaced this row meanwhile
                bad = int(self._rows[p])
                return self._image(self._replaced[bad] if bad in self._replaced else self._replace(p))

    def captions_at(self, pos: torch.Tensor) -> list[str]:
        """The captions of rows `pos` (of the samples images_at decoded for them)."""
        rows = (int(self._rows[p]) for p in pos.tolist())
        return [self._read(self._replaced.get(r, r), 1).decode("utf-8", errors="replace") for r in rows]

    def tokens_at(self, tokenizer: Callable[[list[str]], torch.Tensor], pos: torch.Tensor) -> torch.Tensor:
        """Token ids of the captions of rows `pos`."""
        return tokenizer(self.captions_at(pos))

    def _replace(self, pos: int) -> int:
        """The row that stands in for position `pos`, whose image does not decode: the next one that does
        (the same every time), counted in stats as bad_image."""
        bad = int(self._rows[pos])
        self.stats.skip("bad_image", f"{self.urls[self._shard[bad]]}#row {bad}")
        for step in range(1, len(self)):
            row = int(self._rows[(pos + step) % len(self)])
            try:
                self._image(row)
            except Exception:  # noqa: BLE001 - PIL raises many kinds on damaged data
                continue
            self._replaced[bad] = row
            return row
        raise ValueError(f"no image of the shard set {self.config.shards} decodes")

    def _image(self, row: int) -> torch.Tensor:
        part = self._parts[self._shard[row]]
        image = decode_image(self._read(row, 0), IMAGE_EXTENSIONS[int(part["ext"][self._local[row]])])
        if self.image_shape is not None and tuple(image.shape) != self.image_shape:
            raise ValueError(f"image of shape {tuple(image.shape)}, the shard set's is {self.image_shape}")
        return image

    def _read(self, row: int, member: int) -> bytes:
        """A member's bytes, read at its offset, through this thread's own open files (pread: no shared file
        position; per thread: no file closed under another thread's read)."""
        shard, local = int(self._shard[row]), int(self._local[row])
        files = getattr(self._open, "files", None)
        if files is None:
            files = self._open.files = {}
        fd = files.get(shard)
        if fd is None:
            if len(files) >= OPEN_FILES:
                os.close(files.pop(next(iter(files))))
            fd = files[shard] = os.open(self.urls[shard], os.O_RDONLY)
        part = self._parts[shard]
        return os.pread(fd, int(part["sizes"][local, member]), int(part["offsets"][local, member]))


@functools.lru_cache(maxsize=1)
def _decoders() -> concurrent.futures.ThreadPoolExecutor:
    """The threads lazy pools decode images with (one pool per process)."""
    return concurrent.futures.ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="clipsteer-decode")
