"""Webdataset tar shards of an image-text pool, and of a reference-feature table.

Layout (the webdataset convention: the members of one sample share a key, the part of a member's
name before the first dot of its base name; the rest is the field):

    shard-000000.tar   000000000.json  {"caption_label": 3, "index": 0, "label": 3, "noisy": false, "source": "shapes"}
                       000000000.png   the image, RGB, lossless (or 000000000.npy: uint8 [3, S, S], image_format="npy")
                       000000000.txt   the caption, UTF-8
                       000000001.json  ...
    shard-000001.tar   ...
    manifest.json      written last: its presence means the set is complete

The key is the sample's stable global index, zero-padded. Shards are written with fixed tar
metadata (mtime 0, uid/gid 0, no user names, mode 0644, USTAR), so the same pool always gives
byte-identical shards; each is written to a temporary file and renamed into place (harness.io).
Rewriting a directory first removes its manifest and, once the new shards are in place, any older
`<prefix>-NNNNNN.tar` the new set does not name.

Reading uses a small tar parser of its own rather than `tarfile` or the webdataset library:
`tarfile` ends a truncated archive silently when the cut falls between members, and both libraries
raise on a damaged sample; here every bad sample is skipped and counted in a `ReadStats` (reasons:
bad_image, bad_json, bad_text, bad_size, bad_label, bad_source, bad_index, missing_image,
missing_txt, missing_json, duplicate_member, truncated, lost, ...), and a stream never raises on
bad data. With a manifest, samples a shard promised but did not deliver (after a truncation, in an
unreadable shard, or in a shard that fails its SHA-256 with verify=True) are counted as "lost".
Gzipped shards (.tar.gz) are read too. Shards are local paths, file:// URLs or http(s):// URLs.
Images are read from png, jpg/jpeg, webp, ppm or bmp (with PIL) or npy members.

For training, iterate_batches gives batches (stable indices, images, caption token ids), tokenized
where they are read, optionally read by worker processes (a torch DataLoader) that split the shards
between them as webdataset does, each counting what it skips.

Feature shards (the reference-feature cache, harness.run.refcache) use the same container:
`<key>.image.npy` and `<key>.text.npy` (one row each, float) per sample index; reading them back
gives tables [num_indices, D] indexed by sample index, the layout of refcache's features.pt.
"""
from __future__ import annotations

import copy
import csv
import functools
import gzip
import hashlib
import io as _io
import itertools
import json
import math
import os
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from harness import io
from harness.data.pool import ImageTextPool, PoolConfig, as_image_tensor

MANIFEST = "manifest.json"
FORMAT = "clipsteer-shards"
VERSION = 1
POOL_KIND = "pool"
FEATURES_KIND = "features"
DEFAULT_SAMPLES_PER_SHARD = 1000
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "ppm", "bmp", "npy")  # read from a sample, first present wins
IMAGE_FORMATS = ("png", "npy")  # what the writers store a pool image as (see write_shards)
FOLDER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".ppm", ".bmp", ".gif", ".tif", ".tiff")
MAX_MEMBER_BYTES = 1 << 30   # a larger tar member is taken for a damaged header
URL_TIMEOUT_S = 60
_EXAMPLES = 20               # skipped samples remembered by name in ReadStats.examples
_SHARD_RE = r"-\d{6,}\.tar"


# --- statistics ------------------------------------------------------------------------------------

@dataclass
class ReadStats:
    """What a read (or a folder conversion) delivered and what it skipped, and why.

    `read` counts samples delivered; `skipped` counts samples dropped, by reason in `reasons`
    (their sum). `shards` counts shards opened, `shard_errors` the shards that ended early or could
    not be read at all, by reason (unreadable, truncated, bad_header, read_error, checksum,
    not_in_manifest). `examples` names the first few skipped samples as "url#key: reason".
    """

    read: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    shards: int = 0
    shard_errors: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str = "", n: int = 1) -> None:
        if n <= 0:
            return
        self.skipped += n
        self.reasons[reason] += n
        if len(self.examples) < _EXAMPLES:
            self.examples.append(f"{where}: {reason}" + (f" (x{n})" if n > 1 else ""))

    @classmethod
    def combine(cls, parts: Iterable["ReadStats"]) -> "ReadStats":
        """The sum of several readers' statistics (worker processes each count their own); examples
        are kept in the order of `parts`, the first few."""
        total = cls()
        for part in parts:
            total.read += part.read
            total.skipped += part.skipped
            total.reasons.update(part.reasons)
            total.shards += part.shards
            total.shard_errors.update(part.shard_errors)
            total.examples.extend(part.examples[:_EXAMPLES - len(total.examples)])
        return total

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "skipped": self.skipped, "reasons": dict(sorted(self.reasons.items())),
                "shards": self.shards, "shard_errors": dict(sorted(self.shard_errors.items())),
                "examples": list(self.examples)}

    def __str__(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items())) or "none"
        return f"read {self.read} samples from {self.shards} shards, skipped {self.skipped} ({reasons})"


# --- URL specs -------------------------------------------------------------------------------------

def expand_urls(spec: str | Path | Iterable[str | Path]) -> list[str]:
    """Shard paths or URLs of a spec: brace expansion of each pattern; several patterns separated by
    "::" (as webdataset does); a list of patterns is expanded element by element.

    Braces: numeric ranges `{0..9}`, `{000000..000009}` (zero-padded to the wider end when either end
    has a leading zero), with a step `{0..10..5}` or descending `{3..1}`; letter ranges `{a..e}`;
    lists `{a,b,c}` (nested, empty alternatives allowed); several braces multiply, left first.
    A brace group with neither comma nor range, such as `{x}`, stays literal; an unclosed "{" is an
    error. No backslash escapes.
    """
    if isinstance(spec, Path):
        return [str(spec)]
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split("::")]
        out = [url for part in parts if part for url in _brace(part)]
    else:
        out = [url for item in spec for url in expand_urls(item)]
    return out


def _brace(s: str) -> list[str]:
    pos = 0
    while True:
        start = s.find("{", pos)
        if start < 0:
            return [s]
        end, commas = _closing(s, start)
        body = s[start + 1:end]
        if commas:
            bounds = [start] + commas + [end]
            alternatives = [s[a + 1:b] for a, b in zip(bounds, bounds[1:])]
        else:
            alternatives = _range(body)
            if alternatives is None:  # literal brace group: look for braces inside or after it
                pos = start + 1
                continue
        head, tail = s[:start], s[end + 1:]
        return [url for alt in alternatives for url in _brace(head + alt + tail)]


def _closing(s: str, start: int) -> tuple[int, list[int]]:
    """The position of the "}" closing s[start] and of the commas at its top level."""
    depth, commas = 0, []
    for i in range(start, len(s)):
        c = s[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i, commas
        elif c == "," and depth == 1:
            commas.append(i)
    raise ValueError(f"unbalanced brace at position {start} in shard spec {s!r}")


_NUM_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.(-?\d+))?$")


def _range(body: str) -> list[str] | None:
    m = _NUM_RANGE.match(body)
    if m:
        a, b = int(m[1]), int(m[2])
        step = abs(int(m[3])) if m[3] else 1
        if step == 0:
            raise ValueError(f"zero step in range {{{body}}}")
        digits = [x.lstrip("-") for x in (m[1], m[2])]
        width = max(len(m[1]), len(m[2])) if any(len(d) > 1 and d[0] == "0" for d in digits) else 0
        values = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
        return [f"{v:0{width}d}" for v in values]
    m = _CHAR_RANGE.match(body)
    if m:
        a, b = ord(m[1]), ord(m[2])
        step = abs(int(m[3])) if m[3] else 1
        if step == 0:
            raise ValueError(f"zero step in range {{{body}}}")
        values = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
        return [chr(v) for v in values]
    return None


# --- writing ---------------------------------------------------------------------------------------

def write_shards(pool: ImageTextPool, out_dir: str | Path, samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
                 *, prefix: str = "shard", image_format: str = "png") -> list[Path]:
    """Write `pool` as tar shards `<prefix>-000000.tar`, ... into `out_dir`, in pool order (one sample
    per pool row: key = zero-padded global index; image, txt, json), then manifest.json; returns the
    shard paths. The same pool gives byte-identical shards.

    `image_format`: "png" (the default: lossless, compact, readable by any image tool or webdataset
    decoder) or "npy" (the uint8 [3, S, S] array: at 32 px about 2.5 times a PNG's bytes, but a tenth
    of its decoding time, which otherwise dominates streaming; webdataset decodes .npy as an array)."""
    if pool.images.ndim != 4 or pool.images.shape[1] != 3 or pool.images.dtype != torch.uint8:
        raise ValueError(f"pool images must be uint8 [N, 3, S, S], got {tuple(pool.images.shape)} {pool.images.dtype}")
    _check_image_format(image_format)
    width = _key_width(pool.num_indices)
    indices = pool.indices.tolist()
    caption_ids, labels = pool.caption_ids.tolist(), pool.labels.tolist()
    caption_labels, noisy, source = pool.caption_labels.tolist(), pool.noisy.tolist(), pool.source.tolist()

    def samples() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
        for row, index in enumerate(indices):
            meta = {"index": index, "label": labels[row], "caption_label": caption_labels[row],
                    "noisy": bool(noisy[row]), "source": pool.source_names[source[row]]}
            yield f"{index:0{width}d}", _pool_members(pool.images[row], pool.captions[caption_ids[row]], meta,
                                                      image_format)

    config = asdict(pool.config) if isinstance(pool.config, PoolConfig) else None
    manifest = {"kind": POOL_KIND, "image_size": int(pool.images.shape[-1]), "classnames": list(pool.classnames),
                "source_names": list(pool.source_names), "num_indices": int(pool.num_indices),
                "pool_config": config}
    return _write_set(Path(out_dir), samples(), samples_per_shard, prefix, manifest)


def write_folder_shards(image_dir: str | Path, captions_file: str | Path, out_dir: str | Path,
                        samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD, *, image_size: int = 32,
                        source: str = "folder", prefix: str = "shard", stats: ReadStats | None = None,
                        image_format: str = "png") -> list[Path]:
    """Shards of any image folder plus a captions file; returns the shard paths.

    The captions file is CSV (comma-separated) or, if its name ends in .tsv or .tab, TSV; UTF-8
    (a BOM is allowed); its first row is a header naming the columns `filename` and `caption` (any
    order, any case) and optionally `label` (a class name); other columns are ignored; quoting
    follows Python's csv module (RFC 4180). `filename` is relative to `image_dir` (subfolders
    allowed; absolute names and ".." are refused as bad rows). Listing a file twice is an error.

    Indices: a sample's index is its filename's position in the sorted list of distinct filenames
    the captions file names, so it is stable whichever files turn out to be unreadable; num_indices
    is the length of that list. Images are read with PIL (EXIF orientation applied), made RGB,
    centre-cropped to a square and resized to `image_size` the way the built-in sources are
    (as_image_tensor). Classes: the sorted distinct labels, or none (every label -1) without a label
    column. Rows or files that cannot be used are skipped and counted in `stats`: bad_row,
    missing_caption, missing_file, bad_image; images in the folder the file does not name are
    counted as "uncaptioned". `image_format` is as for write_shards.
    """
    image_dir, captions_file = Path(image_dir), Path(captions_file)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    _check_image_format(image_format)
    stats = stats if stats is not None else ReadStats()
    rows = _caption_rows(captions_file, stats)
    names = sorted(rows)
    has_labels = any(label is not None for _, label in rows.values())
    classnames = sorted({label for _, label in rows.values() if label}) if has_labels else []
    class_of = {c: i for i, c in enumerate(classnames)}
    width = _key_width(len(names))
    listed = {os.path.normpath(name) for name in names}
    for path in sorted(image_dir.rglob("*")):
        if path.is_file() and path.suffix.lower() in FOLDER_IMAGE_SUFFIXES:
            if os.path.normpath(path.relative_to(image_dir).as_posix()) not in listed:
                stats.skip("uncaptioned", str(path))

    def samples() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
        for index, name in enumerate(names):
            caption, label = rows[name]
            where = f"{captions_file}#{name}"
            if not caption:
                stats.skip("missing_caption", where)
                continue
            if has_labels and not label:
                stats.skip("bad_row", where)
                continue
            path = image_dir / name
            if not path.is_file():
                stats.skip("missing_file", where)
                continue
            try:
                image = _load_folder_image(path, image_size)
            except Exception:  # noqa: BLE001 - PIL raises many kinds on a bad file; skip it, whatever it is
                stats.skip("bad_image", where)
                continue
            cls = class_of[label] if has_labels else -1
            meta = {"index": index, "label": cls, "caption_label": cls, "noisy": False, "source": source}
            stats.read += 1
            yield f"{index:0{width}d}", _pool_members(image, caption, meta, image_format)

    manifest = {"kind": POOL_KIND, "image_size": image_size, "classnames": classnames, "source_names": [source],
                "num_indices": len(names), "pool_config": None}
    return _write_set(Path(out_dir), samples(), samples_per_shard, prefix, manifest)


def write_feature_shards(image: torch.Tensor, text: torch.Tensor, indices: torch.Tensor | Sequence[int],
                         out_dir: str | Path, samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD, *,
                         logit_scale: torch.Tensor | float | None = None, num_indices: int | None = None,
                         prefix: str = "features") -> list[Path]:
    """Write per-sample feature rows as tar shards (`<key>.image.npy`, `<key>.text.npy`, key = the
    zero-padded sample index, samples in index order) plus manifest.json; returns the shard paths.

    `image` and `text` are float [N, D] (D may differ between them), row i belonging to sample
    `indices[i]` (distinct, >= 0). `num_indices` (default: max index + 1) and `logit_scale` are
    recorded in the manifest so read_feature_shards can rebuild a refcache-style table. A full
    refcache table is written with indices = arange(num_indices)."""
    idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    if image.ndim != 2 or text.ndim != 2 or len(image) != len(idx) or len(text) != len(idx):
        raise ValueError(f"image and text must be [N, D] with N = len(indices) = {len(idx)}, "
                         f"got {tuple(image.shape)} and {tuple(text.shape)}")
    if not (image.is_floating_point() and text.is_floating_point()):
        raise ValueError("features must be floating point")
    if len(idx) and (int(idx.min()) < 0 or len(torch.unique(idx)) != len(idx)):
        raise ValueError("indices must be distinct and >= 0")
    bound = int(idx.max()) + 1 if len(idx) else 0
    if num_indices is None:
        num_indices = bound
    elif num_indices < bound:
        raise ValueError(f"num_indices {num_indices} is smaller than the largest index + 1 ({bound})")
    order = torch.argsort(idx)
    image, text = (x.float() if x.dtype == torch.bfloat16 else x for x in (image, text))  # numpy has no bfloat16
    image_np, text_np = image.detach().cpu()[order].numpy(), text.detach().cpu()[order].numpy()
    sorted_idx = idx[order].tolist()
    width = _key_width(num_indices)

    def samples() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
        for row, index in enumerate(sorted_idx):
            yield f"{index:0{width}d}", [("image.npy", _npy(image_np[row])), ("text.npy", _npy(text_np[row]))]

    scale = None if logit_scale is None else float(torch.as_tensor(logit_scale).detach().cpu().reshape(()))
    manifest = {"kind": FEATURES_KIND, "num_indices": int(num_indices), "image_dim": int(image.shape[1]),
                "text_dim": int(text.shape[1]), "dtype": str(image_np.dtype), "logit_scale": scale}
    return _write_set(Path(out_dir), samples(), samples_per_shard, prefix, manifest)


def shard_spec(out_dir: str | Path) -> str:
    """The brace spec naming every shard of the set in `out_dir`, from its manifest
    (e.g. "out/shard-{000000..000009}.tar")."""
    manifest = _load_manifest_file(Path(out_dir) / MANIFEST)
    return str(Path(out_dir) / manifest["pattern"])


def manifest_digest(source: str | Path) -> str:
    """The SHA-256 of a shard set's manifest (a directory, or its manifest.json): it names every
    shard's SHA-256, so it identifies the set's content (for cache and run identities)."""
    path = Path(source)
    path = path / MANIFEST if path.is_dir() else path
    return io.file_sha256(path)


def _key_width(num_indices: int) -> int:
    return max(9, len(str(max(num_indices - 1, 0))))


def _check_image_format(image_format: str) -> None:
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")


def _pool_members(image: torch.Tensor, caption: str, meta: dict[str, Any],
                  image_format: str) -> list[tuple[str, bytes]]:
    data = _png(image) if image_format == "png" else _npy(image.numpy())
    return [("json", json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()),
            (image_format, data), ("txt", caption.encode("utf-8"))]


def _png(image: torch.Tensor) -> bytes:
    buf = _io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _npy(row: np.ndarray) -> bytes:
    buf = _io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(row), allow_pickle=False)
    return buf.getvalue()


def _load_folder_image(path: Path, size: int) -> torch.Tensor:
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
    w, h = img.size
    side = min(w, h)
    if side == 0:
        raise ValueError("empty image")
    left, top = (w - side) // 2, (h - side) // 2
    array = np.asarray(img.crop((left, top, left + side, top + side)))
    return as_image_tensor(array[None], size)[0]


def _caption_rows(path: Path, stats: ReadStats) -> dict[str, tuple[str, str | None]]:
    """filename -> (caption, label or None) from a captions file (see write_folder_shards)."""
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty captions file (expected a header naming filename and caption)")
        columns = {name.strip().lower(): i for i, name in enumerate(header)}
        if "filename" not in columns or "caption" not in columns:
            raise ValueError(f"{path}: the header must name the columns 'filename' and 'caption' "
                             f"(and optionally 'label'), got {header!r}")
        fi, ci, li = columns["filename"], columns["caption"], columns.get("label")
        rows: dict[str, tuple[str, str | None]] = {}
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            need = max(fi, ci, li if li is not None else 0)
            name = row[fi].strip() if len(row) > fi else ""
            parts = Path(name).parts
            if len(row) <= need or not name or Path(name).is_absolute() or ".." in parts:
                stats.skip("bad_row", f"{path}:{line}")
                continue
            name = Path(name).as_posix()
            if name in rows:
                raise ValueError(f"{path}:{line}: {name!r} is listed twice")
            rows[name] = (row[ci], row[li].strip() if li is not None else None)
    return rows


def _write_set(out_dir: Path, samples: Iterator[tuple[str, list[tuple[str, bytes]]]], samples_per_shard: int,
               prefix: str, manifest: dict[str, Any]) -> list[Path]:
    """Write samples into shards of `samples_per_shard` and the manifest (last); returns the shards."""
    if isinstance(samples_per_shard, bool) or not isinstance(samples_per_shard, int) or samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be an integer >= 1, got {samples_per_shard!r}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", prefix):
        raise ValueError(f"prefix must be letters, digits and underscores, got {prefix!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # from here on the directory holds no complete set
    paths, entries = [], []
    it = iter(samples)
    for number in itertools.count():
        first = next(it, None)
        if first is None:
            break
        path = out_dir / f"{prefix}-{number:06d}.tar"
        entry = _write_tar(path, itertools.chain([first], itertools.islice(it, samples_per_shard - 1)))
        paths.append(path)
        entries.append(entry)
    names = {p.name for p in paths}
    for stale in out_dir.glob(f"{prefix}-*.tar"):
        if re.fullmatch(prefix + _SHARD_RE, stale.name) and stale.name not in names:
            stale.unlink()
    last = len(paths) - 1
    pattern = (f"{prefix}-{{{0:06d}..{last:06d}}}.tar" if last > 0 else paths[0].name) if paths else ""
    io.write_json(out_dir / MANIFEST, {"format": FORMAT, "version": VERSION, **manifest,
                                       "count": sum(e["count"] for e in entries),
                                       "samples_per_shard": samples_per_shard, "pattern": pattern,
                                       "shards": entries})
    return paths


def _write_tar(path: Path, samples: Iterable[tuple[str, list[tuple[str, bytes]]]]) -> dict[str, Any]:
    """One shard, atomically, with fixed metadata; its manifest entry."""
    entry: dict[str, Any] = {"name": path.name, "count": 0, "first_key": None, "last_key": None}

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in samples:
                for ext, data in members:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, _io.BytesIO(data))
                entry["count"] += 1
                entry["first_key"] = entry["first_key"] or key
                entry["last_key"] = key
        entry["sha256"], entry["bytes"] = io.file_sha256(tmp), tmp.stat().st_size

    io.save_with(path, write)
    return entry


# --- the tar container, read -----------------------------------------------------------------------

class _TarError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_ZERO_BLOCK = bytes(512)


_READ_CHUNK = 1 << 20  # a damaged header's size must not allocate its bytes before they arrive


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """n bytes, or fewer where the stream ends; one read call in the common case (a tar member costs
    three of these, so the loop's overhead counts)."""
    if n <= _READ_CHUNK:
        data = stream.read(n)
        if len(data) == n or not data:
            return data
        chunks, left = [data], n - len(data)
    else:
        chunks, left = [], n
    while left > 0:
        chunk = stream.read(min(left, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _number(fieldbytes: bytes) -> int:
    if fieldbytes[0] & 0x80:  # GNU base-256
        if fieldbytes[0] != 0x80:
            raise ValueError("negative base-256 number")
        return int.from_bytes(fieldbytes[1:], "big")
    text = fieldbytes.split(b"\0", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    stored = _number(header[148:156])
    rest = header[:148] + header[156:]
    unsigned = sum(rest) + 8 * 32
    return stored == unsigned or stored == unsigned - 256 * sum(1 for b in rest if b > 127)


def _pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        record = data[space + 1:pos + length]
        if length <= 0 or not record.endswith(b"\n"):
            raise ValueError("bad pax record")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8", "replace")
        pos += length
    return out


def _tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file of a tar stream (ustar, GNU and pax headers); raises _TarError
    ("truncated": the stream ended before the end-of-archive block; "bad_header": a damaged header)."""
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        header = _read_exact(stream, 512)
        if len(header) < 512:
            raise _TarError("truncated")
        if header == _ZERO_BLOCK:
            return
        try:
            if not _checksum_ok(header):
                raise ValueError("checksum")
            kind = header[156:157]
            size = _number(header[124:136])
            if kind not in (b"x", b"g", b"L", b"K") and "size" in pax:
                size = int(pax["size"])
        except ValueError:
            raise _TarError("bad_header") from None
        if not 0 <= size <= MAX_MEMBER_BYTES:
            raise _TarError("bad_header")
        data = _read_exact(stream, size)
        pad = -size % 512
        if len(data) < size or (pad and len(_read_exact(stream, pad)) < pad):
            raise _TarError("truncated")
        if kind == b"x":
            try:
                pax = _pax(data)
            except (ValueError, UnicodeDecodeError):
                raise _TarError("bad_header") from None
            continue
        if kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        if kind in (b"g", b"K"):
            continue
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0]
            name = prefix + b"/" + name if prefix else name
        name_str = long_name or pax.get("path") or name.decode("utf-8", "replace")
        pax, long_name = {}, None
        if kind in (b"0", b"\0", b"7"):
            yield name_str, data


class _Prefixed:
    """A read-only stream with some bytes already read from it put back in front."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            out, self.head = self.head + self.stream.read(), b""
            return out
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        return self.stream.read(n)


_DUPLICATE = "\0duplicate"


def _split_name(name: str) -> tuple[str, str] | None:
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        return None
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _groups(stream: BinaryIO, stats: ReadStats) -> Iterator[tuple[str, dict[str, bytes], str | None]]:
    """(key, {field: bytes}, error) per sample of a shard: error is None, or the reason the shard ended
    early for its last, possibly incomplete, sample (also counted in stats.shard_errors)."""
    key, group, error = None, {}, None
    try:
        head = _read_exact(stream, 2)
        source: BinaryIO = stream
        if stream.seekable():  # put the head back without a Python-level read in front of every read
            stream.seek(-len(head), os.SEEK_CUR)
        else:
            source = _Prefixed(head, stream)  # type: ignore[assignment]
        if head == b"\x1f\x8b":
            source = gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[arg-type]
        for name, data in _tar_members(source):
            parts = _split_name(name)
            if parts is None:
                continue
            if parts[0] != key:
                if key is not None:
                    yield key, group, None
                key, group = parts[0], {}
            if parts[1] in group:
                group[_DUPLICATE] = b""
            group[parts[1]] = data
    except _TarError as e:
        error = e.reason
    except EOFError:
        error = "truncated"
    except (OSError, zlib.error, ValueError):  # a damaged gzip stream, a failing network read
        error = "read_error"
    if error:
        stats.shard_errors[error] += 1
    if key is not None:
        yield key, group, error


def _is_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _local_path(url: str) -> str:
    if url.startswith("file://"):
        return urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    return url


def _open(url: str) -> BinaryIO:
    if _is_url(url):
        return urllib.request.urlopen(url, timeout=URL_TIMEOUT_S)  # noqa: S310 - http(s) only
    return open(_local_path(url), "rb")


def normalized_url(url: str) -> str:
    """A shard's URL as manifests are matched against it: URLs as given, local paths absolute and normalised."""
    return url if _is_url(url) else os.path.normpath(os.path.abspath(_local_path(url)))


# --- manifests -------------------------------------------------------------------------------------

@dataclass
class _Manifest:
    data: dict[str, Any]
    base: str  # the folder (or URL prefix) the shard names are relative to

    def url(self, name: str) -> str:
        return f"{self.base.rstrip('/')}/{name}" if _is_url(self.base) else str(Path(self.base) / name)

    def urls(self) -> list[str]:
        return [self.url(e["name"]) for e in self.data["shards"]]

    def entries(self) -> dict[str, dict[str, Any]]:
        return {normalized_url(self.url(e["name"])): e for e in self.data["shards"]}


def _check_manifest(data: Any, where: str) -> dict[str, Any]:
    if (not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("shards"), list)
            or not all(isinstance(e, dict) and {"name", "count", "sha256"} <= set(e) for e in data["shards"])):
        raise ValueError(f"{where} is not a {FORMAT} manifest")
    if data.get("version") != VERSION:
        raise ValueError(f"{where}: manifest version {data.get('version')!r}, this reader knows {VERSION}")
    return data


def _load_manifest_file(path: Path) -> dict[str, Any]:
    try:
        data = io.read_json(path)
    except ValueError as e:
        raise ValueError(f"{path}: unreadable manifest ({e})") from None
    return _check_manifest(data, str(path))


def _sibling_manifest(url: str) -> str:
    if _is_url(url):
        return url.rsplit("/", 1)[0] + "/" + MANIFEST
    return str(Path(_local_path(url)).parent / MANIFEST)


def _fetch_manifest(where: str, required: bool) -> _Manifest | None:
    base = where.rsplit("/", 1)[0] if _is_url(where) else str(Path(_local_path(where)).parent)
    if _is_url(where):
        try:
            with urllib.request.urlopen(where, timeout=URL_TIMEOUT_S) as response:  # noqa: S310
                raw = response.read()
        except (OSError, urllib.error.URLError):
            if required:
                raise
            return None
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{where}: unreadable manifest ({e})") from None
        return _Manifest(_check_manifest(data, where), base)
    path = Path(_local_path(where))
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"no shard manifest at {path}")
        return None
    return _Manifest(_load_manifest_file(path), base)


def resolve_set(urls: str | Path | Sequence[str | Path], manifest: Any, kind: str) -> tuple[list[str], _Manifest | None]:
    """Shard URLs and the manifest describing them. `urls` may be a shard-set directory or its
    manifest.json (every shard it names), or a spec / list of shards. `manifest`: "auto" (the
    manifest.json beside the first shard, if there is one), None (none), a path/URL, or a dict."""
    if isinstance(urls, (str, Path)) and not (isinstance(urls, str) and ("{" in urls or "::" in urls)):
        local = Path(_local_path(str(urls))) if not _is_url(str(urls)) else None
        if local is not None and (local.is_dir() or (local.name == MANIFEST and local.is_file())):
            found = _fetch_manifest(str(local / MANIFEST if local.is_dir() else local), required=True)
            _check_kind(found, kind)
            return found.urls(), found
        if _is_url(str(urls)) and str(urls).endswith("/" + MANIFEST):
            found = _fetch_manifest(str(urls), required=True)
            _check_kind(found, kind)
            return found.urls(), found
    url_list = [str(u) for u in expand_urls(urls)]
    if not url_list:
        raise ValueError(f"the shard spec {urls!r} names no shards")
    if manifest is None or isinstance(manifest, _Manifest):
        found = manifest
    elif isinstance(manifest, dict):
        found = _Manifest(_check_manifest(manifest, "the given manifest"), os.path.dirname(url_list[0]))
    elif isinstance(manifest, str) and manifest == "auto":
        found = _fetch_manifest(_sibling_manifest(url_list[0]), required=False)
    else:
        found = _fetch_manifest(str(manifest), required=True)
    _check_kind(found, kind)
    return url_list, found


def _check_kind(found: _Manifest | None, kind: str) -> None:
    if found is not None and found.data.get("kind") != kind:
        raise ValueError(f"the shards at {found.base} hold {found.data.get('kind')!r}, not {kind!r}")


# --- reading samples -------------------------------------------------------------------------------

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
    read = _PoolRead.make(urls, shuffle_buffer, seed, resample, epoch, shuffle_shards, image_size, manifest, verify)
    stats = stats if stats is not None else ReadStats()
    return SampleStream(read.samples(stats), stats)


@dataclass(frozen=True)
class _PoolRead:
    """What to read from pool shards and how: the arguments of iterate_samples, checked and resolved."""

    url_list: list[str]
    found: _Manifest | None
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
             verify: bool) -> "_PoolRead":
        url_list, found = resolve_set(urls, manifest, POOL_KIND)
        _check_read_args(shuffle_buffer, seed, epoch, verify, found)
        if image_size is None and found is not None:
            image_size = found.data.get("image_size")
        return cls(url_list, found, shuffle_buffer, seed, resample, epoch,
                   shuffle_buffer > 0 if shuffle_shards is None else shuffle_shards, image_size, verify)

    def samples(self, stats: ReadStats, reader: int = 0, readers: int = 1) -> Iterator[Sample]:
        """Reader `reader` of `readers`'s decoded samples (see _stream), counted in `stats`."""
        decoder = _PoolDecoder(self.image_size, self.found.data if self.found else None)
        return _stream(self.url_list, self.found, decoder.decode, stats, self.shuffle_buffer, self.seed,
                       self.resample, self.epoch, self.shuffle_shards, self.verify, reader, readers)


# --- training batches ------------------------------------------------------------------------------

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

    def __init__(self, read: _PoolRead, batch_size: int, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
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
    read = _PoolRead.make(urls, shuffle_buffer, seed, resample, epoch, shuffle_shards, image_size, manifest, verify)
    workers = num_workers if resample else min(num_workers, len(read.url_list))
    return BatchStream(_BatchReader(read, batch_size, tokenizer), workers)


def _check_read_args(shuffle_buffer: int, seed: int, epoch: int, verify: bool, found: _Manifest | None) -> None:
    for name, value in (("shuffle_buffer", shuffle_buffer), ("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if verify and found is None:
        raise ValueError("verify=True needs a manifest (its per-shard SHA-256)")


class _PoolDecoder:
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
        if _DUPLICATE in group:
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
        array = _load_npy(data)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[0] != 3:
            raise ValueError(f"an image array must be uint8 [3, H, W], got {array.dtype} {array.shape}")
        return torch.from_numpy(array)
    with Image.open(_io.BytesIO(data)) as img:
        array = np.array(img if img.mode == "RGB" else img.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)


_NPY_MAGIC = b"\x93NUMPY"


def _load_npy(data: bytes) -> np.ndarray:
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


Decode = Callable[[str, dict[str, bytes], "str | None", str], Any]


def _stream(url_list: list[str], found: _Manifest | None, decode: Decode, stats: ReadStats, shuffle_buffer: int,
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
        stream = _open(url)
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
        for key, group, error in _groups(stream, stats):
            seen += 1
            result = decode(key, group, error, url)
            if isinstance(result, str):
                stats.skip(result, f"{url}#{key}")
            else:
                stats.read += 1
                yield result
    if expected is not None and seen < expected:
        stats.skip("lost", url, expected - seen)


# --- a pool from shards ----------------------------------------------------------------------------

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


# --- reference features from shards ----------------------------------------------------------------

@dataclass
class FeatureTable:
    """Feature rows by sample index, the layout of a reference-feature cache (harness.run.refcache):
    image [num_indices, D_image] and text [num_indices, D_text], zero where `present` is false."""

    image: torch.Tensor
    text: torch.Tensor
    present: torch.Tensor          # bool [num_indices]
    logit_scale: torch.Tensor | None
    num_indices: int

    def cache_dict(self) -> dict[str, torch.Tensor]:
        """{"image", "text", "logit_scale"}: what refcache saves as features.pt (CachedReference's inputs)."""
        if self.logit_scale is None:
            raise ValueError("these feature shards carry no logit_scale")
        return {"image": self.image, "text": self.text, "logit_scale": self.logit_scale}


def read_feature_shards(urls: str | Path | Sequence[str | Path], manifest: Any = "auto", *,
                        num_indices: int | None = None, verify: bool = False,
                        stats: ReadStats | None = None) -> FeatureTable:
    """The feature table of feature shards (see write_feature_shards), rows by sample index.
    num_indices: the argument, else the manifest's, else largest index + 1. Damaged samples
    (bad_key, missing_image, missing_text, bad_array, bad_shape, bad_index, duplicate_index) are
    skipped and counted in `stats`; their rows stay zero and not present."""
    url_list, found = resolve_set(urls, manifest, FEATURES_KIND)
    stats = stats if stats is not None else ReadStats()
    meta = found.data if found else {}
    bound = num_indices if num_indices is not None else meta.get("num_indices")
    dims = {"image": meta.get("image_dim"), "text": meta.get("text_dim")}

    def decode(key: str, group: dict[str, bytes], error: str | None, url: str) -> tuple[int, np.ndarray, np.ndarray] | str:
        if error and not ("image.npy" in group and "text.npy" in group):
            return "truncated"
        if _DUPLICATE in group:
            return "duplicate_member"
        base = key.rpartition("/")[2]
        if not base.isdigit() or len(base) > 18:
            return "bad_key"
        rows = []
        for name in ("image", "text"):
            if f"{name}.npy" not in group:
                return f"missing_{name}"
            try:
                row = _load_npy(group[f"{name}.npy"])
            except Exception:  # noqa: BLE001 - reading .npy raises several kinds on damaged data
                return "bad_array"
            if row.ndim != 1 or row.dtype.kind != "f" or not len(row):
                return "bad_array"
            if dims[name] is None:
                dims[name] = len(row)
            if len(row) != dims[name]:
                return "bad_shape"
            rows.append(row)
        index = int(base)
        if bound is not None and index >= bound:
            return "bad_index"
        return index, rows[0], rows[1]

    _check_read_args(0, 0, 0, verify, found)
    got: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for index, image_row, text_row in _stream(url_list, found, decode, stats, 0, 0, False, 0, False, verify):
        if index in got:
            stats.read -= 1
            stats.skip("duplicate_index", str(index))
            continue
        got[index] = (image_row, text_row)
    n = bound if bound is not None else (max(got) + 1 if got else 0)
    dtype = torch.from_numpy(next(iter(got.values()))[0][:0]).dtype if got else torch.float32
    image = torch.zeros((n, dims["image"] or 0), dtype=dtype)
    text = torch.zeros((n, dims["text"] or 0), dtype=dtype)
    present = torch.zeros(n, dtype=torch.bool)
    if got:
        idx = torch.tensor(sorted(got), dtype=torch.int64)
        image[idx] = torch.from_numpy(np.stack([got[i][0] for i in idx.tolist()])).to(dtype)
        text[idx] = torch.from_numpy(np.stack([got[i][1] for i in idx.tolist()])).to(dtype)
        present[idx] = True
    scale = meta.get("logit_scale")
    return FeatureTable(image=image, text=text, present=present,
                        logit_scale=None if scale is None else torch.tensor(float(scale)), num_indices=int(n))
