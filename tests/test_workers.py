"""Local worker processes (harness.launch.workers): many runs per process, with the launcher's guarantees kept."""
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
import torch

from harness import io
from harness.grid.config import ExecutorConfig, load_grid
from harness.grid.spec import expand
from harness.launch import launcher, workers
from harness.run.train import FINAL_MODEL
from harness.store import lease, records
from harness.store.rundir import RunDir

LOCAL = ExecutorConfig(kind="local", max_parallel=2, timeout_min=5)


@pytest.fixture(autouse=True)
def importable_here(monkeypatch):
    """Worker processes unpickle this module's stand-ins by name: let them import it."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                   os.environ.get("PYTHONPATH")])))


def stand_in(spec, results, threads, show, token, code):
    """run_job's stand-in: the unit recorded under its lease as a run is, its stage saying how it goes."""
    rdir = records.run_dir(Path(results), spec["run_id"])

    def work():
        started = time.time()
        if spec["stage"] == "bad":
            raise ValueError("bad unit")
        if spec["stage"] == "doomed" and not (rdir / "died").exists():
            (rdir / "died").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if spec["stage"] == "ref":
            time.sleep(1.0)
        return {"run_id": spec["run_id"], "pid": os.getpid(), "started": started, "finished": time.time()}

    return records.recorded(rdir, spec, work, token)


STAGES = """
name: stand-ins
data: {sources: [shapes], shapes_count: 256}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32}
stages:
  - {name: ref, methods: [clip], models: [tiny-s], samples_seen: [32]}
  - {name: child, reference: ref, methods: [drrho], models: [tiny-s], samples_seen: [32]}
  - {name: bad, methods: [clip], models: [tiny-s], samples_seen: [32]}
  - {name: doomed, methods: [clip], models: [tiny-s], samples_seen: [32]}
  - {name: orphan, reference: doomed, methods: [drrho], models: [tiny-s], samples_seen: [32]}
  - {name: plain, methods: [clip], models: [tiny-s], samples_seen: [32, 64, 96, 128, 160, 192]}
"""


def test_workers_run_many_units_each_and_keep_failures_kills_and_requirements_per_run(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "run_job", stand_in)
    (tmp_path / "grid.yaml").write_text(textwrap.dedent(STAGES))
    specs = expand(load_grid(tmp_path / "grid.yaml"))
    ids = {stage: [s["run_id"] for s in specs if s["stage"] == stage] for stage in {s["stage"] for s in specs}}
    [ref], [child], [bad], [doomed], [orphan] = (ids[s] for s in ("ref", "child", "bad", "doomed", "orphan"))
    results = tmp_path / "results"
    report = launcher.launch(specs, results, LOCAL, log=lambda *_: None)

    assert sorted(report.done) == sorted([ref, child, *ids["plain"]])
    assert report.failed[bad] == "ValueError: bad unit" == records.read_status(records.run_dir(results, bad))["error"]
    assert report.failed[doomed] == records.read_status(records.run_dir(results, doomed))["error"]
    assert report.failed[orphan].startswith(f"reference run {doomed} is failed")
    assert records.attempts(records.run_dir(results, orphan)) == 0  # failed unstarted
    result = {r: io.read_json(records.run_dir(results, r) / "result.json") for r in report.done}
    assert result[child]["started"] >= result[ref]["finished"]
    pids = [result[r]["pid"] for r in report.done]
    assert len(set(pids)) <= 3 < len(pids)  # two workers and the one that replaced the killed one
    assert all(lease.read(records.run_dir(results, s["run_id"])) is None for s in specs)
    assert not list((results / "submitit").glob("workers-*"))  # the spool is gone with the workers

    again = launcher.launch(specs, results, ExecutorConfig(kind="debug"), log=lambda *_: None)  # the killed one resumes
    assert sorted(again.done) == sorted([doomed, orphan]) and list(again.failed) == [bad]
    assert records.attempts(records.run_dir(results, doomed)) == 2


def test_a_task_past_its_time_limit_fails_and_its_worker_goes_on(tmp_path):
    pool = workers.WorkerPool(tmp_path, 1, timeout_min=0.02)
    try:
        slow, quick = pool.submit(time.sleep, 60), pool.submit(os.getpid)
        while not (slow.done() and quick.done()):
            time.sleep(0.05)
        assert isinstance(slow.exception(), TimeoutError) and "timeout_min (0.02 min)" in str(slow.exception())
        assert quick.exception() is None and len(pool.workers) == 1
    finally:
        pool.close()
    assert not pool.spool.exists() and pool.workers[0].result() == 2  # the one worker ran both, then left


GRID = """
name: warm
data: {sources: [shapes], shapes_count: 256, noise: 0.2}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32, warmup_steps: 1}
stages:
  - name: s
    methods: [clip, fastclip]
    models: [tiny-s]
    samples_seen: [96]
"""


def test_a_run_in_a_worker_after_another_equals_the_run_alone(tmp_path):
    (tmp_path / "grid.yaml").write_text(textwrap.dedent(GRID))
    first, second = expand(load_grid(tmp_path / "grid.yaml"))
    warm = launcher.launch([first, second], tmp_path / "warm", ExecutorConfig(kind="local", max_parallel=1),
                           log=lambda *_: None)
    alone = launcher.launch([second], tmp_path / "alone", ExecutorConfig(kind="debug"), log=lambda *_: None)
    assert sorted(warm.done) == sorted([first["run_id"], second["run_id"]]) and alone.done == [second["run_id"]]
    rdirs = [records.run_dir(tmp_path / "warm", s["run_id"]) for s in (first, second)]
    assert len({io.read_jsonl(RunDir(r).attempts)[0]["pid"] for r in rdirs}) == 1  # one worker ran both
    ran, want = (records.run_dir(tmp_path / where, second["run_id"]) for where in ("warm", "alone"))
    assert io.read_json(ran / "eval.json") == io.read_json(want / "eval.json")
    weights, expected = (torch.load(r / FINAL_MODEL, weights_only=True)["state_dict"] for r in (ran, want))
    assert all(torch.equal(weights[name], value) for name, value in expected.items())


class _EndedWorker:
    """A worker job that ended without taking a task, as one whose controller a cluster killed at start-up."""

    def done(self) -> bool:
        return True

    def exception(self) -> BaseException:
        return RuntimeError("UncompletedJobError: No output/error stream produced")


def test_a_worker_killed_at_start_is_replaced_but_one_that_never_starts_breaks_the_pool(tmp_path):
    pool = workers.WorkerPool(tmp_path, size=2, timeout_min=1)
    try:
        pool.workers = [_EndedWorker(), _EndedWorker()]
        assert pool.broken() is None  # two killed starts of a pool of two: replace them
        pool.workers.append(_EndedWorker())
        assert "No output/error stream" in str(pool.broken())  # a third: the workers cannot start at all
    finally:
        pool.close()
