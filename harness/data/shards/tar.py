"""The tar container, read by a small parser of its own rather than `tarfile`, which ends a truncated archive
silently when the cut falls between members: every damaged or truncated shard is reported. Members are
grouped into webdataset samples (the members of one sample share the key before their base name's first dot)."""
from __future__ import annotations

import gzip
import os
import zlib
from typing import BinaryIO, Iterator

from harness.data.shards.stats import ReadStats

MAX_MEMBER_BYTES = 1 << 30   # a larger tar member is taken for a damaged header


class TarError(Exception):
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


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, int, bytes]]:
    """(name, offset, data) of each regular file of a tar stream (ustar, GNU and pax headers), offset being
    where its data starts in the stream; raises TarError ("truncated": the stream ended before the
    end-of-archive block; "bad_header": a damaged header)."""
    pax: dict[str, str] = {}
    long_name: str | None = None
    offset = 0  # of the next header
    while True:
        header = _read_exact(stream, 512)
        if len(header) < 512:
            raise TarError("truncated")
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
            raise TarError("bad_header") from None
        if not 0 <= size <= MAX_MEMBER_BYTES:
            raise TarError("bad_header")
        data = _read_exact(stream, size)
        pad = -size % 512
        if len(data) < size or (pad and len(_read_exact(stream, pad)) < pad):
            raise TarError("truncated")
        data_offset, offset = offset + 512, offset + 512 + size + pad
        if kind == b"x":
            try:
                pax = _pax(data)
            except (ValueError, UnicodeDecodeError):
                raise TarError("bad_header") from None
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
            yield name_str, data_offset, data


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


DUPLICATE = "\0duplicate"


def _split_name(name: str) -> tuple[str, str] | None:
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        return None
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def sample_groups(stream: BinaryIO, stats: ReadStats) -> Iterator[tuple[str, dict[str, bytes], str | None]]:
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
        for name, _, data in tar_members(source):
            parts = _split_name(name)
            if parts is None:
                continue
            if parts[0] != key:
                if key is not None:
                    yield key, group, None
                key, group = parts[0], {}
            if parts[1] in group:
                group[DUPLICATE] = b""
            group[parts[1]] = data
    except TarError as e:
        error = e.reason
    except EOFError:
        error = "truncated"
    except (OSError, zlib.error, ValueError):  # a damaged gzip stream, a failing network read
        error = "read_error"
    if error:
        stats.shard_errors[error] += 1
    if key is not None:
        yield key, group, error
