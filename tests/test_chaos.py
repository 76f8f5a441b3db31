"""Chaos: seeded SIGKILLs of real `clipsteer run` processes from outside (launcher, worker controller, worker
task, whole process group), with relaunches and concurrent launches; the final launch must leave the sweep as an
undisturbed one would (benchmarks/chaos.py has the trials; `python -m benchmarks.chaos` runs many)."""
import shutil

import pytest

from benchmarks import chaos
from harness import io
from harness.store.rundir import RunDir

SEED = 3


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """The undisturbed sweep's folder and its fingerprint (metrics, scores and weights of every run)."""
    folder = tmp_path_factory.mktemp("undisturbed")
    return folder / "baseline", chaos.baseline(folder)


def test_a_sweep_killed_from_outside_at_random_ends_as_an_undisturbed_one(undisturbed, tmp_path):
    trial = chaos.trial(SEED, tmp_path, undisturbed[1], max_kills=3)
    assert trial.final_exit == 0 and not trial.problems, chaos.table([trial])
    assert len(trial.kills) >= 2 and trial.launches >= 3


def test_the_checks_see_what_a_kill_could_leave_behind(undisturbed, tmp_path):
    """The chaos checks fail on a run that differs, was trained to the end twice, or left a temporary file."""
    folder, expected = undisturbed
    shutil.copytree(folder, tmp_path / "r")
    assert chaos.check(tmp_path / "r", expected, set()) == []
    twice, short = RunDir.all(tmp_path / "r")
    io.append_jsonl(twice.attempts, {"trained": 6, "resumed_from": 2})
    short.metrics.write_text("".join(line + "\n" for line in short.metrics.read_text().splitlines()[:-1]))
    (tmp_path / "r" / "plots").mkdir()
    (tmp_path / "r" / "plots" / ".scaling_law.png.x1y2.tmp").write_text("")
    problems = chaos.check(tmp_path / "r", expected, set())
    assert problems == [f"{short.path.name}: differs from the undisturbed sweep",
                        f"{twice.path.name} trained to its last step 2 times",
                        "temporary file left: plots/.scaling_law.png.x1y2.tmp"]
