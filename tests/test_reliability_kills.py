"""Kills from outside, as a cluster deals them: a worker's controller killed while its task trains, a job killed
between its result and its outcome, a report killed mid-write; and a task that lost its lease stopping."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from benchmarks.chaos import _members
from harness import io
from harness.grid.config import ExecutorConfig, load_grid
from harness.grid.spec import expand
from harness.launch import launcher
from harness.run.job import run_job
from harness.run.train import checkpoint_files
from harness.store import lease, records
from harness.store.rundir import RunDir
from harness.sweep import SPECS

GRID = """
name: kills
data: {{sources: [shapes], shapes_count: 256, noise: 0.2}}
eval: {{tasks: [shapes_retrieval]}}
train: {{batch_size: 32, warmup_steps: 1, checkpoint_every: 2, log_every: 1}}
executor: {{kind: local, max_parallel: 1, timeout_min: 10}}
stages:
  - name: s
    methods: [clip]
    models: [tiny-s]
    samples_seen: [{samples}]
"""
DEBUG = ExecutorConfig(kind="debug")


def quiet(*_):
    pass


def grid_file(tmp_path, samples=128):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(GRID.format(samples=samples)))
    return path, expand(load_grid(path))[0]


def launch(grid, results, **env):
    cli = [sys.executable, "-m", "harness", "run", str(grid), "--results", str(results)]
    return subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, **env})


def trained_lines(rdir):
    return [a for a in io.read_jsonl(RunDir(rdir).attempts) if "trained" in a]


def test_a_controller_killed_while_its_task_trains_leaves_the_run_to_the_task(tmp_path):
    """Defect 1: the worker's submitit controller dies, its task trains on. Nobody records the run failed or
    frees its lease; a second launch waits for it (or finds it done) instead of starting it again."""
    grid, spec = grid_file(tmp_path, samples=640)
    results = tmp_path / "results"
    rdir = records.run_dir(results, spec.run_id)
    first = launch(grid, results)
    deadline = time.monotonic() + 300
    while not checkpoint_files(rdir) and time.monotonic() < deadline:  # the task is training
        time.sleep(0.2)
    controllers = [pid for pid, role in _members({first.pid}).items() if role == "controller"]
    assert len(controllers) == 1
    os.kill(controllers[0], signal.SIGKILL)
    time.sleep(1)  # the launcher sees its worker's job end
    second = launch(grid, results)
    out_first, _ = first.communicate(timeout=600)
    out_second, _ = second.communicate(timeout=600)
    assert (first.returncode, second.returncode) == (0, 0), out_first + out_second
    assert "still works on it: waiting for that" in out_first
    assert "running elsewhere" in out_second or "1 already done" in out_second  # as its start-up took
    assert records.state(results, spec.run_id, spec) == "done" and records.attempts(rdir) == 1
    assert len(trained_lines(rdir)) == 1 and not RunDir(rdir).error.exists()
    assert lease.read(rdir) is None


def test_a_job_killed_after_its_result_is_done_and_its_earlier_error_goes(tmp_path):
    """Defect 2: a job killed after result.json, before it could report its outcome, is done (exit 0, status
    'done'), and the error.txt of an earlier killed attempt does not outlive the success."""
    grid, spec = grid_file(tmp_path)
    results = tmp_path / "results"
    rdir = RunDir(records.run_dir(results, spec.run_id))
    killed = launch(grid, results, CLIPSTEER_FAULT="step@3")
    out, _ = killed.communicate(timeout=600)
    assert killed.returncode == 1, out
    assert records.read_status(rdir.path)["state"] == "failed" and rdir.error.exists()
    # the second status write is finish's 'done', after result.json: the worker dies between the two
    after_result = launch(grid, results, CLIPSTEER_FAULT="write:status.json@2")
    out, _ = after_result.communicate(timeout=600)
    assert after_result.returncode == 0, out
    assert "done    " + spec.run_id in out and "FAILED" not in out
    assert records.read_status(rdir.path)["state"] == "done" and not rdir.error.exists()
    assert records.attempts(rdir.path) == 2


def test_a_done_run_whose_records_contradict_its_result_is_repaired_not_failed(tmp_path):
    """A launcher that sees a valid result.json beside a 'failed' status and an error.txt counts the run as done
    and repairs the records; a result naming another run is not taken for this run's."""
    grid, spec = grid_file(tmp_path)
    results = tmp_path / "results"
    rdir = RunDir(records.run_dir(results, spec.run_id))
    assert launcher.launch([spec], results, DEBUG, log=quiet).done == [spec.run_id]
    records.fail(rdir.path, RuntimeError("Loading pickle: a submitit log line, not the cause"))
    assert records.state(results, spec.run_id, spec) == "done"  # result.json decides
    report = launcher.launch([spec], results, DEBUG, log=quiet)
    assert report.skipped == [spec.run_id] and not report.failed
    assert records.read_status(rdir.path)["state"] == "done" and not rdir.error.exists()
    io.write_json(rdir.result, {**io.read_json(rdir.result), "run_id": "someone-else"})
    assert records.state(results, spec.run_id, spec) == "stale"


@pytest.mark.parametrize("how", ["released", "taken over"])
def test_a_task_that_lost_its_lease_stops_before_its_next_write(tmp_path, monkeypatch, how):
    """A task whose lease was released or taken over (its launcher gave the run up, another took it) raises
    LeaseLost before it writes another metrics line or checkpoint, and records nothing more."""
    _, spec = grid_file(tmp_path, samples=320)
    rdir = records.run_dir(tmp_path, spec.run_id)
    held = lease.acquire(rdir)
    real, calls = lease.confirm, []

    def lost_at_the_fourth_step(path):
        calls.append(path)
        if len(calls) == 4:
            lease.release(held)  # this process was its only owner: the lease goes
            if how == "taken over":
                io.write_json(RunDir(rdir).lease, {"token": "another", "since": time.time(), "expires": time.time() + 60,
                                                   "owners": [{"host": "elsewhere", "pid": 1, "start": "0"}]})
        real(path)

    monkeypatch.setattr(lease, "confirm", lost_at_the_fourth_step)
    with pytest.raises(lease.LeaseLost, match="no longer holds the lease"):
        run_job(spec, tmp_path, 1, False, lease_token=held.token)
    assert [m["step"] for m in io.read_jsonl(RunDir(rdir).metrics)] == [1, 2, 3]
    assert [p.name.split("-")[1] for p in checkpoint_files(rdir)] == ["000000002"]
    assert not RunDir(rdir).result.exists() and not RunDir(rdir).error.exists()
    assert records.read_status(rdir)["state"] == "running" and not trained_lines(rdir)


def test_release_keeps_the_lease_while_another_owner_lives(tmp_path):
    """The launcher letting go does not free a run its task still works on; the last live owner's release does."""
    rdir = tmp_path / "run"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        held = lease.acquire(rdir)
        record = lease.read(rdir)
        task = {**record["owners"][0], "pid": other.pid, "start": lease._start_time(other.pid)}
        io.write_json(RunDir(rdir).lease, {**record, "owners": record["owners"] + [task]})
        assert [o["pid"] for o in lease.others_alive(held)] == [other.pid]
        lease.release(held)
        assert lease.read(rdir)["owners"] == [task] and lease.holder(rdir) is not None
        assert lease.acquire(rdir) is None
    finally:
        other.kill()
        other.wait()
    assert lease.holder(rdir) is None and lease.acquire(rdir) is not None  # its last owner died: it lapsed


def test_a_remote_owner_lives_while_its_own_heartbeat_is_fresh(tmp_path):
    rdir = tmp_path / "run"
    held = lease.acquire(rdir)
    record = lease.read(rdir)
    remote = {"host": "elsewhere", "pid": 1, "start": "0", "beat": time.time()}
    io.write_json(RunDir(rdir).lease, {**record, "owners": record["owners"] + [remote]})
    assert lease.others_alive(held) == [remote]
    io.write_json(RunDir(rdir).lease, {**record, "owners": record["owners"] + [{**remote, "beat": time.time() -
                                                                               lease.TTL_S - 1}]})
    assert lease.others_alive(held) == []  # its heartbeats stopped: dead, though the launcher renews the lease
    lease.release(held)
    assert lease.read(rdir) is None


def test_a_report_killed_mid_write_leaves_nothing_after_the_next_report(tmp_path, clipsteer):
    """Defect 3: `clipsteer report` killed while writing a plot and while writing the leaderboard leaves hidden
    temporaries; the next report (or run) of that directory removes them."""
    grid, spec = grid_file(tmp_path)
    results = tmp_path / "results"
    launcher.launch([spec], results, DEBUG, log=quiet)
    io.write_json(results / SPECS, {"grid": "kills", "source": str(grid), "specs": [spec.to_json()]})
    killed = clipsteer("report", results, env={"CLIPSTEER_FAULT": "write:training_curves.png"})
    assert killed.returncode == -signal.SIGKILL
    assert [p.name.split(".")[1] for p in results.rglob(f".*{io.TMP_SUFFIX}")] == ["training_curves"]
    killed = clipsteer("report", results, env={"CLIPSTEER_FAULT": "write:leaderboard.md"})
    assert killed.returncode == -signal.SIGKILL  # it removed the first one's temporary before it wrote
    assert [p.name.split(".")[1] for p in results.rglob(f".*{io.TMP_SUFFIX}")] == ["leaderboard"]
    assert clipsteer("report", results).returncode == 0
    assert not list(results.rglob(f".*{io.TMP_SUFFIX}")) and (results / "leaderboard.md").exists()
