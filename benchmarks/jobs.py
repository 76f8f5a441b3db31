"""Stand-in jobs for timing the launcher: importable by submitit's subprocesses, and light (this module imports
only harness.store.records, much as a real run's harness.run.job imports the harness)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.store import records


def trivial_job(spec: dict[str, Any], results: str, threads: int = 1, show_progress: bool = False,
                lease_token: str | None = None, code: str | None = None) -> dict[str, Any]:
    """Stand-in for harness.run.job.run_job with its arguments: the bookkeeping every run pays (the launcher's
    lease joined, the run begun and finished in its directory) around no work; threads, progress bar and
    code version are ignored."""
    rdir = records.run_dir(Path(results), spec["run_id"])
    return records.recorded(rdir, spec, lambda: {"run_id": spec["run_id"]}, lease_token)
