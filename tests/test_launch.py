"""The launcher's bookkeeping, with submitit's DebugExecutor and stand-in jobs."""
from dataclasses import replace

import pytest

from harness import io
from harness.grid.config import ExecutorConfig
from harness.grid.runspec import MethodConfig, RunSpec
from harness.launch import launcher, plan
from harness.run import features, refcache
from harness.run.reference import RunReference
from harness.run.train import TrainConfig
from harness.store import records


def spec(run_id, reference=None):
    return RunSpec(grid="g", stage="s", method=MethodConfig("drrho" if reference else "clip"), model="tiny-s",
                   samples_seen=32, seed=0, data={}, train=TrainConfig(), eval_tasks=("digits",), eval_suite="test",
                   reference=RunReference(run_id=reference, model="tiny-s") if reference else None, run_id=run_id)


def test_a_job_that_dies_without_a_word_is_recorded_failed_and_its_dependents_too(tmp_path, monkeypatch):
    started = []

    def job(s, results, *_):
        started.append(s.run_id)
        if s.run_id == "ref":
            raise MemoryError("killed by the OOM killer")  # dies before run_job could record anything
        records.finish(records.run_dir(results, s.run_id), {"ok": True})

    monkeypatch.setattr(launcher, "run_job", job)
    specs = [spec("ref"), spec("child", reference="ref"), spec("free")]
    report = launcher.launch(specs, tmp_path, ExecutorConfig(kind="debug"), log=lambda *_: None)
    assert started == ["ref", "free"]  # the reference goes first; its dependent never starts
    assert records.read_status(records.run_dir(tmp_path, "ref"))["error"] == "MemoryError: killed by the OOM killer"
    assert report.failed["child"].startswith("reference run ref is failed: MemoryError")
    assert records.state(tmp_path, "child") == "failed" and report.done == ["free"]


def test_done_runs_are_skipped_and_larger_compute_starts_first(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(launcher, "run_job", lambda s, r, *_: (started.append(s.run_id),
                                                                  records.finish(records.run_dir(r, s.run_id), {})))
    small, big, old = spec("small"), replace(spec("big"), model="tiny-l"), spec("old")
    records.finish(records.run_dir(tmp_path, "old"), {})
    report = launcher.launch([small, big, old], tmp_path, ExecutorConfig(kind="debug"), log=lambda *_: None)
    assert started == ["big", "small"] and report.skipped == ["old"]


@pytest.mark.parametrize("state", ["missing", "running"])
def test_reference_state_decides_readiness(tmp_path, state):
    if state == "running":
        records.begin(records.run_dir(tmp_path, "ref"), spec("ref"))
    assert records.state(tmp_path, "ref") == state


def test_a_result_of_an_older_format_is_stale_and_runs_again(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(launcher, "run_job", lambda s, r, *_: (started.append(s.run_id),
                                                                  records.finish(records.run_dir(r, s.run_id), {})))
    io.write_json(records.run_dir(tmp_path, "old") / "result.json", {"c_paper": 1.0})  # no compute, no format
    assert records.state(tmp_path, "old") == "stale"
    launcher.launch([spec("old")], tmp_path, ExecutorConfig(kind="debug"), log=lambda *_: None)
    assert started == ["old"] and records.state(tmp_path, "old") == "done"


def cached_child():
    return replace(spec("child"), method=MethodConfig("drrho"),
                   reference=RunReference(run_id="ref", model="tiny-s", features="cached"))


def test_requirements_name_the_reference_run_and_the_feature_cache():
    cache = refcache.cache_unit(cached_child())
    assert plan.requirements(cached_child()) == {"ref": "reference run", cache.run_id: "feature cache"}
    assert plan.requirements(cache) == {"ref": "reference run"}  # a cache is its reference run's features
    assert plan.requirements(spec("free")) == {} and refcache.cache_unit(cache) is None


def test_a_failed_feature_cache_fails_the_runs_that_read_it_saying_so(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "run_job", lambda s, r, *_: records.finish(records.run_dir(r, s.run_id), {}))

    def broken(unit, *_):
        raise OSError("disk gone")

    monkeypatch.setattr(features, "build_cache_job", broken)
    report = launcher.launch([spec("ref"), cached_child()], tmp_path, ExecutorConfig(kind="debug"), log=lambda *_: None)
    cache = refcache.cache_unit(cached_child()).run_id
    assert report.done == ["ref"] and report.failed[cache] == "OSError: disk gone"
    assert report.failed["child"] == f"feature cache {cache} is failed: OSError: disk gone"
