"""The committed results directories work in a fresh clone: `fit`, `report` and `status` read their per-run
records and give the numbers committed with them; they stay small and text-only; and the cheapest of their runs
retrain bit for bit with today's code (a change that moves the numerics must regenerate them, and says so)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness import io
from harness.grid.config import ExecutorConfig
from harness.grid.runspec import RunSpec
from harness.launch.launcher import launch
from harness.profiles import model_profile
from harness.run import refcache
from harness.store.records import reference_run_ids
from harness.store.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
COMMITTED = ("demo", "zoo", "w2s")
BUDGET_BYTES = 6 * 2**20  # per results directory: records, report and plots (the zoo: 96 units, 5.2 MiB, a third of it the HTML page)
TEXT_SUFFIXES = {".json", ".jsonl", ".md", ".csv", ".html", ".png", ".svg"}
UNTIMED = ("provenance", "code")  # how and when, not what: left out of the bit-for-bit comparison


def _files(folder: Path) -> list[Path]:
    """The files git would keep under `folder`: tracked, or new and not ignored (all of them outside git)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z",
                             str(folder.relative_to(ROOT))], capture_output=True, text=True)
    if listed.returncode != 0:
        return [p for p in folder.rglob("*") if p.is_file()]
    return [ROOT / name for name in listed.stdout.split("\0") if name and (ROOT / name).is_file()]


def _specs(name: str) -> list[RunSpec]:
    return [RunSpec.from_json(s) for s in io.read_json(RESULTS / name / "specs.json")["specs"]]


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_results_are_small_text_records(name):
    files = _files(RESULTS / name)
    assert sum(p.stat().st_size for p in files) < BUDGET_BYTES
    assert {p.suffix for p in files} <= TEXT_SUFFIXES, "weights, checkpoints or caches are never committed"
    specs = _specs(name)
    for spec in specs:
        rdir = RunDir.of(RESULTS / name, spec.run_id)
        assert rdir.state() == "done" and rdir.metrics.is_file() and rdir.eval.is_file(), spec.run_id
        assert io.read_json(rdir.result)["provenance"]["torch"], spec.run_id


@pytest.mark.parametrize("name", COMMITTED)
def test_report_from_the_records_rewrites_the_committed_report(name, tmp_path, clipsteer):
    done = clipsteer("report", RESULTS / name, "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    for document in ("leaderboard.csv", "leaderboard.md", "scaling.json"):
        assert (tmp_path / document).read_text() == (RESULTS / name / document).read_text(), document


@pytest.mark.parametrize("name", ["demo", "zoo"])
def test_fit_of_the_records_gives_the_committed_fits(name, clipsteer):
    done = clipsteer("fit", RESULTS / name, "--json")
    assert done.returncode in (0, 1), done.stderr  # 1: some configuration has too few points to fit
    fitted, committed = json.loads(done.stdout), io.read_json(RESULTS / name / "scaling.json")["c_paper"]
    assert fitted["fits"] == committed["fits"] and fitted["skipped"] == committed["skipped"]


def test_status_of_the_demo_grid_finds_every_run_done(clipsteer):
    done = clipsteer("status", ROOT / "grids" / "demo.yaml", "--results", RESULTS / "demo")
    assert done.returncode == 0, done.stderr
    units = len(_specs("demo")) + 1  # and the reference-feature cache
    assert done.stdout.splitlines()[0].endswith(f"{units} units: {units} done")


def _comparable(value):
    """`value` without the keys that say how and when (times, provenance, code digest)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k not in UNTIMED and not k.endswith("_s")}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _c_paper(spec: RunSpec) -> float:
    return model_profile(spec.model)["gflops"] * spec.samples_seen


def _retrained_equal(name: str, specs: list[RunSpec], run: RunSpec, out: Path) -> None:
    """Retrain `run` (and what it reads) under `out` as the committed sweep did, and compare every record."""
    needed = [s for s in specs if s.run_id in set(run.reference.requires() if run.reference else ())] + [run]
    threads = io.read_json(RunDir.of(RESULTS / name, run.run_id).result)["threads"]
    report = launch(needed, out, ExecutorConfig(kind="debug", cpus_per_job=threads))
    assert not report.failed, report.failed
    for spec in needed:
        old, new = RunDir.of(RESULTS / name, spec.run_id), RunDir.of(out, spec.run_id)
        for record in (old.result, old.eval):
            assert _comparable(io.read_json(new.path / record.name)) == _comparable(io.read_json(record)), \
                f"{spec.run_id}/{record.name} moved"
        assert _comparable(io.read_jsonl(new.metrics)) == _comparable(io.read_jsonl(old.metrics)), spec.run_id
    cache = refcache.cache_unit(run)
    if cache is not None:
        old, new = RunDir.of(RESULTS / name, cache.run_id), RunDir.of(out, cache.run_id)
        assert _comparable(io.read_json(new.result)) == _comparable(io.read_json(old.result)), cache.run_id


def test_the_cheapest_clip_run_of_the_demo_retrains_bit_for_bit(tmp_path):
    specs = _specs("demo")
    refs = reference_run_ids(specs)
    clip = min((s for s in specs if s.method.name == "clip" and s.reference is None and s.run_id not in refs),
               key=_c_paper)
    _retrained_equal("demo", specs, clip, tmp_path)


def test_the_cheapest_steered_run_and_its_reference_retrain_bit_for_bit(tmp_path):
    specs = _specs("w2s")
    by_id = {s.run_id: s for s in specs}
    steered = [s for s in specs if s.reference is not None and s.reference.requires()  # its reference trained here
               and all(r in by_id for r in s.reference.requires())]
    run = min(steered, key=lambda s: (_c_paper(s) + sum(_c_paper(by_id[r]) for r in s.reference.requires()),
                                      s.method.name != "drrho", s.seed))
    assert run.reference.features == "cached"  # so the feature cache is retrained and compared as well
    _retrained_equal("w2s", specs, run, tmp_path)
