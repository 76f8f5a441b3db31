"""Fault injection for the reliability tests: die or fail on purpose at a named point of a real run.

Set CLIPSTEER_FAULT to a comma-separated list of `POINT[@N[+]][=ACTION]`:
  POINT   a glob over point names: `step` (after an optimizer step), `evaluate` (before evaluation),
          `write:<file name>` (a file written in full to its temporary name, before the rename)
  @N      act at the N-th hit of the point in this process (default 1); `@N+` at every hit from the N-th
  ACTION  `kill` (SIGKILL this process, the default) or `enospc` (raise "No space left on device")
Unset (the normal case) every point is a dictionary lookup and nothing else.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import signal
from collections import Counter
from dataclasses import dataclass

ENV = "CLIPSTEER_FAULT"
ACTIONS = ("kill", "enospc")
_hits: dict[str, Counter[str]] = {}  # per CLIPSTEER_FAULT value: a new value counts from zero again


@dataclass(frozen=True)
class Fault:
    pattern: str
    nth: int
    onward: bool
    action: str


def parse(text: str) -> list[Fault]:
    """The faults of a CLIPSTEER_FAULT value; ValueError names a malformed entry."""
    faults = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        where, _, action = entry.partition("=")
        pattern, _, count = where.partition("@")
        onward = count.endswith("+")
        count = count.rstrip("+") or "1"
        if not pattern or not count.isdigit() or int(count) < 1 or (action or "kill") not in ACTIONS:
            raise ValueError(f"{ENV}: bad entry {entry!r}; expected POINT[@N[+]][=kill|enospc]")
        faults.append(Fault(pattern, int(count), onward, action or "kill"))
    return faults


def hit(point: str) -> None:
    """Mark that this process reached `point`; act if a configured fault says so."""
    text = os.environ.get(ENV)
    if not text:
        return
    hits = _hits.setdefault(text, Counter())
    hits[point] += 1
    for fault in parse(text):
        if not fnmatch.fnmatchcase(point, fault.pattern):
            continue
        matched = sum(n for p, n in hits.items() if fnmatch.fnmatchcase(p, fault.pattern))
        if matched == fault.nth or (fault.onward and matched > fault.nth):
            if fault.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), point)
