"""How a result was made: package versions, the git commit, the code digest, the hardware and the date.

Every result.json carries it (harness.store.records.finish) and the report summarises it in "How these were
made", the facts a scaling-law paper's appendix states. It never enters a run id.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import codeversion

PACKAGES = ("torch", "open_clip_torch", "clip_benchmark", "numpy", "submitit")
_ROOT = Path(__file__).resolve().parent.parent
# what "dirty" looks at: the code that makes results, not the results being written beside it
_CODE_PATHS = (*codeversion.PACKAGES, "pyproject.toml")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """Output of a git command in the project's checkout, or None outside one (an installed copy, no git)."""
    try:
        done = subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The checkout's commit and whether the harness code (harness/, methods/, pyproject.toml) differs from it;
    both None outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    changes = _git("status", "--porcelain", "--untracked-files=normal", "--", *_CODE_PATHS)
    return {"commit": commit, "dirty": None if changes is None else bool(changes)}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else what platform reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> dict[str, Any]:
    """The visible CUDA GPUs' model and count (model None and count 0 without CUDA, or before torch loaded)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {"gpu_model": None, "gpu_count": 0}
    return {"gpu_model": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count()}


def provenance() -> dict[str, Any]:
    """This process's provenance record (plain JSON data)."""
    return {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}, **git_state(),
            "code": codeversion.code_version(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), **gpus(),
            "platform": platform.platform(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}


SUMMARY_FIELDS = ("date", "commit", "dirty", "code", "python", *PACKAGES, "cpu_model", "cpu_count", "gpu_model",
                  "gpu_count", "platform")


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per field, the values the runs' provenance records hold: one value when all agree, else the sorted distinct
    values (dates as the first and last). `runs` counts the records; an empty dict when none has provenance."""
    if not records:
        return {}
    summary: dict[str, Any] = {"runs": len(records)}
    for name in SUMMARY_FIELDS:
        values = sorted({str(r.get(name)) for r in records})
        if name == "date" and len(values) > 1:
            values = [values[0], values[-1]]
        summary[name] = values[0] if len(values) == 1 else values
    return summary
