"""Stand-in jobs for timing the launcher: importable by submitit's subprocesses, and light (this module imports
only harness.store.records, much as a real run's harness.run.job imports the harness)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.store import records


def trivial_job(spec: dict[str, Any], results: str, *launcher_args: Any) -> dict[str, Any]:
    """Stand-in for harness.run.job.run_job: records the unit done at once (as tests/test_launch.py's stand-ins do);
    whatever else the launcher passes (threads, progress bar, lease token, code version) is ignored."""
    record = {"run_id": spec["run_id"]}
    records.finish(records.run_dir(Path(results), spec["run_id"]), record)
    return record
