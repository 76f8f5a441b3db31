"""The code version of a run: a digest of the harness's and the methods' Python sources.

A sweep records it when it starts and every job checks it, so one sweep never mixes results of two
versions of the code (an edit made while a sweep runs fails the runs that would pick it up, saying so).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGES = ("harness", "methods")
_ROOT = Path(__file__).resolve().parent.parent


class CodeChanged(RuntimeError):
    """The harness code differs from the code the sweep started with."""


def code_version() -> str:
    """12 hex digits of the SHA-256 over the harness's and methods' .py files (path and bytes, sorted)."""
    h = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((_ROOT / package).rglob("*.py")):
            h.update(str(path.relative_to(_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def check(expected: str | None) -> str:
    """This process's code version; CodeChanged if the sweep that launched it expected another one."""
    current = code_version()
    if expected is not None and current != expected:
        raise CodeChanged(f"the harness code changed since the sweep started (version {expected} -> {current}); "
                          "results of one sweep must come from one version: run the sweep again")
    return current
