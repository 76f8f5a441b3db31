"""A pool sample decoded from its members (image, txt, json), or the reason it is skipped; images from png,
jpg/jpeg, webp, ppm or bmp (with PIL) or uint8 .npy members."""
from __future__ import annotations

import functools
import io as _io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness.data.shards.tar import DUPLICATE

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "ppm", "bmp", "npy")  # read from a sample, first present wins


@dataclass(frozen=True)
class Sample:
    """One decoded pool sample."""

    index: int
    image: torch.Tensor   # uint8 [3, S, S]
    caption: str
    label: int
    caption_label: int
    noisy: bool
    source: str
    key: str
    url: str


class PoolDecoder:
    """Checks and decodes pool samples against a manifest (classes, sources, index bound) and one image size:
    the given one, else the first sample's."""

    def __init__(self, image_size: int | None, manifest: dict[str, Any] | None) -> None:
        self.shape = None if image_size is None else (3, image_size, image_size)
        self.num_classes = len(manifest["classnames"]) if manifest and "classnames" in manifest else None
        self.sources = set(manifest["source_names"]) if manifest and "source_names" in manifest else None
        self.num_indices = manifest.get("num_indices") if manifest else None

    def decode(self, key: str, group: dict[str, bytes], error: str | None, url: str) -> Sample | str:
        """The sample, or the reason it is skipped."""
        ext = next((e for e in IMAGE_EXTENSIONS if e in group), None)
        if error and (ext is None or "txt" not in group or "json" not in group):
            return "truncated"
        if DUPLICATE in group:
            return "duplicate_member"
        if ext is None:
            return "missing_image"
        if "txt" not in group:
            return "missing_txt"
        if "json" not in group:
            return "missing_json"
        try:
            meta = json.loads(group["json"])
        except (ValueError, RecursionError):
            return "bad_json"
        if not isinstance(meta, dict) or not _is_int(meta.get("index")) or meta["index"] < 0:
            return "bad_json"
        label = meta.get("label", -1)
        caption_label = meta.get("caption_label", label)
        noisy, source = meta.get("noisy", False), meta.get("source", "")
        if not (_is_int(label) and _is_int(caption_label) and isinstance(noisy, bool) and isinstance(source, str)):
            return "bad_json"
        if self.num_indices is not None and meta["index"] >= self.num_indices:
            return "bad_index"
        if self.num_classes is not None and not all(-1 <= x < self.num_classes for x in (label, caption_label)):
            return "bad_label"
        if self.sources is not None and source not in self.sources:
            return "bad_source"
        try:
            caption = group["txt"].decode("utf-8")
        except UnicodeDecodeError:
            return "bad_text"
        try:
            image = decode_image(group[ext], ext)
        except Exception:  # noqa: BLE001 - PIL raises many kinds on damaged data
            return "bad_image"
        if self.shape is None:
            self.shape = tuple(image.shape)
        if tuple(image.shape) != self.shape:
            return "bad_size"
        return Sample(index=meta["index"], image=image, caption=caption, label=label, caption_label=caption_label,
                      noisy=noisy, source=source, key=key, url=url)


def _is_int(x: Any) -> bool:
    """A JSON integer that fits an int64 tensor."""
    return isinstance(x, int) and not isinstance(x, bool) and -2**62 < x < 2**62


def decode_image(data: bytes, ext: str) -> torch.Tensor:
    """uint8 [3, H, W] of an image member: a uint8 [3, H, W] .npy array, or an image file PIL reads (a
    channels-first view of the decoded array: one copy out of PIL, none after it; for a small image,
    per-image conversions cost as much as the decoding itself)."""
    if ext == "npy":
        array = load_npy(data)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[0] != 3:
            raise ValueError(f"an image array must be uint8 [3, H, W], got {array.dtype} {array.shape}")
        return torch.from_numpy(array)
    with Image.open(_io.BytesIO(data)) as img:
        array = np.array(img if img.mode == "RGB" else img.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)


_NPY_MAGIC = b"\x93NUMPY"


def load_npy(data: bytes) -> np.ndarray:
    """The array of .npy bytes, as np.load without pickles gives it; but parsing the header costs np.load
    some 30 us, more than copying a small array, so each distinct header is parsed once (the rows of a
    shard set share one)."""
    if data[:6] != _NPY_MAGIC or data[6:8] not in (b"\x01\x00", b"\x02\x00"):
        return np.load(_io.BytesIO(data), allow_pickle=False)
    width = 2 if data[6] == 1 else 4
    start = 8 + width + int.from_bytes(data[8:8 + width], "little")
    shape, fortran, dtype = _npy_header(data[:start])
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start).copy()
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


@functools.lru_cache(maxsize=64)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of a .npy header of version 1 or 2; object arrays are refused."""
    stream = _io.BytesIO(header)
    major, _ = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(stream)
    if dtype.hasobject:
        raise ValueError("object arrays are not read")
    return shape, fortran, dtype
