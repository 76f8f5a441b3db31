"""The run side of a wsd budget ladder (harness.launch.ladder): the trunk keeps a checkpoint at each shorter
budget's cooldown start, and each shorter budget's run branches from its one.

A branch copies into its own run directory the trunk's checkpoint at its branch point, the trunk's metrics
(the loop drops the lines logged after that step) and a static selection's kept indices, then trains as a
run resumed from that checkpoint: its own checkpoints, kills and resumes work as for any run. branch.json
says where it came from, so its result counts what it spent itself apart from what its model saw. Without
an intact branch point (the trunk ran before the ladder existed, or the file was lost) it trains alone
from step 0, saying so: the weights are the same either way, only the compute differs.
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness import io
from harness.store.rundir import RunDir, checkpoint_files

PER_STEP = ("c_paper", "learner_scoring", "reference_forward")  # compute parts spent in proportion to steps trained


@dataclass(frozen=True)
class Rung:
    """A run's place in a ladder: a trunk keeps checkpoints after the step counts `keep_at`; a branch starts
    from the one its `trunk` (a run id) kept after `step` steps. The default is a run on its own."""

    keep_at: tuple[int, ...] = ()
    trunk: str | None = None
    step: int = 0


def prepare(rdir: Path, trunk_dir: Path | None, step: int) -> dict[str, Any] | None:
    """Seed run directory `rdir` from the checkpoint trunk `trunk_dir` kept after `step` steps, unless `rdir`
    holds checkpoints of its own (a resumed run goes on from those). Returns the branch record
    {"trunk", "step"} of a run that branched, None for a run that trains alone."""
    rdir, record = Path(rdir), RunDir(rdir).branch
    if checkpoint_files(rdir):
        return io.read_json(record) if record.exists() else None
    point = None if trunk_dir is None else branch_point(trunk_dir, step)
    if point is None:
        record.unlink(missing_ok=True)
        if trunk_dir is not None:
            tqdm.write(f"run {rdir.name}: its trunk {Path(trunk_dir).name} kept no intact checkpoint at step {step}; "
                       "training alone from step 0 (same weights, full compute)", file=sys.stderr)
        return None
    branch = {"trunk": Path(trunk_dir).name, "step": step}
    io.write_json(record, branch)
    trunk, own = RunDir(trunk_dir), RunDir(rdir)
    for source, target in ((trunk.metrics, own.metrics), (trunk.kept_indices, own.kept_indices)):
        if source.exists():
            _copy(source, target)
    _copy(point, own.checkpoints / point.name)  # last: once rdir holds a checkpoint, the seeding is complete
    return branch


def branch_point(trunk_dir: Path, step: int) -> Path | None:
    """The intact checkpoint that trunk `trunk_dir` kept after `step` steps, or None."""
    for path in sorted(RunDir(trunk_dir).branch_points.glob(f"step-{step:09d}-*.pt")):
        if io.verify_checksummed(path):
            return path
    return None


def spent(compute: dict[str, float], steps: int, start: int) -> float:
    """GFLOPs a run spent itself (C_total less a cache share): the per-step parts for the steps it trained
    from `start` on (0 unless it branched; the trunk paid for the rest), and the pool scoring only when it
    started at 0 (a branch reads the trunk's selection)."""
    per_step = sum(compute[part] for part in PER_STEP)
    return per_step + compute["pool_scoring"] if start == 0 else per_step * (steps - start) / steps


def _copy(source: Path, target: Path) -> None:
    io.save_with(target, lambda tmp: shutil.copyfile(source, tmp))
