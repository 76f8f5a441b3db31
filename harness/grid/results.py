"""Where a grid's results go: results/<grid file's name>, never a directory that holds another grid's runs.

A copy of grids/demo.yaml with one learning rate changed is another file, so it writes to its own directory
and cannot overwrite the demo's report; a directory whose specs.json names another grid file is refused
unless --results names it on purpose.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.errors import ConfigError
from harness.grid.config import GridConfig

RESULTS_ROOT = Path("results")
SPECS = "specs.json"  # in a results directory: the grid's name, its file and every spec it expands to


def results_dir(grid: GridConfig, given: Path | None) -> Path:
    """`given` (--results) when set; else RESULTS_ROOT/<the grid file's stem>, refused with a ConfigError naming
    both files when its specs.json was written for another grid file."""
    if given is not None:
        return given
    path = RESULTS_ROOT / Path(grid.source).stem
    owner = _owner(path)
    if owner is not None and Path(owner).resolve() != Path(grid.source).resolve():
        raise ConfigError(grid.source, "", f"its results directory {path} holds the runs of another grid file, "
                          f"{owner}; rename this grid file, or give --results DIR to write there on purpose")
    return path


def _owner(path: Path) -> str | None:
    """The grid file whose specs a results directory holds (None: no specs.json yet)."""
    try:
        return json.loads((path / SPECS).read_text(encoding="utf-8"))["source"]
    except FileNotFoundError:
        return None
