"""Atomic file writes: a reader sees the old file or the whole new one, never half of one."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are for others to read, as open() would make them
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write bytes to `path` atomically."""
    return _atomic(path, lambda p: p.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    """Write text (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    """Write `obj` as indented, key-sorted JSON to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def digest(obj: Any, length: int = 10) -> str:
    """The first `length` hex digits of the SHA-256 of `obj` as canonical JSON (sorted keys, no spaces):
    the same plain data always gives the same digest (run ids, cache ids)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def torch_save(path: Path, obj: Any) -> Path:
    """torch.save to `path` atomically."""
    return _atomic(path, lambda p: torch.save(obj, p))


def save_with(path: Path, save: Callable[[Path], None]) -> Path:
    """Run `save(tmp_path)` and move the result to `path` atomically (for savefig and friends)."""
    return _atomic(path, save)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line (flushed and fsynced, so a kill loses at most the line being written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
