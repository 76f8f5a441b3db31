"""Atomic file writes: a reader sees the old file or the whole new one, never half of one."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from harness import faults

_UMASK = os.umask(0)
os.umask(_UMASK)


TMP_SUFFIX = ".tmp"


def _atomic(path: Path, write: Callable[[Path], None], name: Callable[[Path], str] | None = None) -> Path:
    """Write through a temporary file in the same directory, fsync it, rename it to `path` (or to the
    name `name(tmp)` gives in that directory, e.g. one carrying the content's checksum), fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are for others to read, as open() would make them
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if name is not None:
            path = path.parent / name(Path(tmp))
        faults.hit(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files that writes killed before their rename left in `directory`."""
    left = sorted(Path(directory).glob(f".*{TMP_SUFFIX}")) if Path(directory).is_dir() else []
    for tmp in left:
        tmp.unlink(missing_ok=True)
    return left


@contextmanager
def flocked(lock: Path) -> Iterator[None]:
    """Hold an exclusive flock on the file `lock` (created if missing) for the block."""
    Path(lock).parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


WRITING_LOCK = ".writing.lock"


@contextmanager
def writing(directory: Path, *subfolders: str) -> Iterator[Path]:
    """Write into `directory` (and its `subfolders`) as its one writer: under an flock on its WRITING_LOCK,
    having first removed the temporaries that an earlier writer killed mid-write left there."""
    directory = Path(directory)
    with flocked(directory / WRITING_LOCK):
        for folder in (directory, *(directory / s for s in subfolders)):
            remove_temporaries(folder)
        yield directory


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


CHECKSUM_DIGITS = 16


def save_checksummed(directory: Path, stem: str, save: Callable[[Path], None]) -> Path:
    """Run `save(tmp_path)` and move the file atomically to `directory/<stem>-<sha256 prefix>.pt`:
    the name carries the checksum of the content, so a damaged file is recognised (verify_checksummed)."""
    return _atomic(Path(directory) / f"{stem}.pt", save,
                   name=lambda tmp: f"{stem}-{file_sha256(tmp)[:CHECKSUM_DIGITS]}.pt")


def verify_checksummed(path: Path) -> bool:
    """True when a file written by save_checksummed still has the content its name's checksum says."""
    expected = Path(path).stem.rsplit("-", 1)[-1]
    return len(expected) == CHECKSUM_DIGITS and file_sha256(path)[:CHECKSUM_DIGITS] == expected


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
    import torch  # here: harness.io is on the grid validator's path, which must not load torch

    return _atomic(path, lambda p: torch.save(obj, p))


def save_with(path: Path, save: Callable[[Path], None]) -> Path:
    """Run `save(tmp_path)` and move the result to `path` atomically (for savefig and friends)."""
    return _atomic(path, save)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file, skipping lines that do not parse as an object (a kill can cut
    the last one short); empty when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line (flushed and fsynced, so a kill loses at most the line being written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
