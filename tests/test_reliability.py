"""Reliability on real runs: kills at any point, damaged files, full disks, NaNs, stale specs, code edits."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
import torch

from harness import io
from harness.codeversion import CodeChanged, code_version
from harness.grid.config import ExecutorConfig, load_grid
from harness.grid.runspec import MethodConfig
from harness.grid.spec import expand
from harness.launch import launcher
from harness.report.leaderboard import write_report
from harness.run.job import run_job
from harness.store import lease, records
from harness.store.rundir import RunDir, checkpoint_files

GRID = """
name: reliable
data: {sources: [shapes], shapes_count: 256, noise: 0.2}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32, warmup_steps: 2, checkpoint_every: 3, log_every: 1}
executor: {kind: debug}
stages:
  - name: s
    methods: [fastclip]
    models: [tiny-s]
    samples_seen: [320]
"""
DEBUG = ExecutorConfig(kind="debug")


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "grid.yaml"
    path.write_text(textwrap.dedent(GRID))
    return expand(load_grid(path))[0]


@pytest.fixture(scope="module")
def straight(spec, tmp_path_factory):
    """The uninterrupted run every interrupted one must equal."""
    results = tmp_path_factory.mktemp("straight")
    assert launcher.launch([spec], results, DEBUG, log=quiet).done == [spec.run_id]
    return records.run_dir(results, spec.run_id)


def final_state(rdir):
    rdir = RunDir(rdir)
    weights = torch.load(rdir.final_model, weights_only=True)["state_dict"]
    metrics = [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in rdir.metrics.read_text().splitlines()]
    return weights, io.read_json(rdir.eval), metrics


def killed_job(spec, results, fault):
    """Run the job in a fresh process that SIGKILLs itself at `fault` (harness.faults)."""
    code = ("import json, sys; from harness.grid.runspec import RunSpec; from harness.run.job import run_job; "
            "run_job(RunSpec.from_json(json.loads(sys.argv[1])), sys.argv[2], 1, False)")
    env = {**os.environ, "CLIPSTEER_FAULT": fault}
    return subprocess.run([sys.executable, "-c", code, json.dumps(spec.to_json()), str(results)], env=env,
                          capture_output=True, text=True, timeout=300)


KILL_POINTS = [
    ("step@5", "mid-training, two steps after a checkpoint"),
    ("write:step-000000006-*", "while writing the second checkpoint (before its rename)"),
    ("evaluate", "after training, before evaluation"),
    ("write:eval.json", "while writing the evaluation"),
    ("write:result.json", "while writing the result"),
]


@pytest.mark.parametrize("fault, where", KILL_POINTS, ids=[f for f, _ in KILL_POINTS])
def test_a_run_killed_anywhere_completes_on_the_next_launch_bit_identical(spec, straight, tmp_path, fault, where):
    proc = killed_job(spec, tmp_path, fault)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    rdir = records.run_dir(tmp_path, spec.run_id)
    assert records.state(tmp_path, spec.run_id) == "running"  # as the kill left it: no result, a dead lease
    assert lease.read(rdir) is not None and lease.holder(rdir) is None

    report = launcher.launch([spec], tmp_path, DEBUG, log=quiet)
    assert report.done == [spec.run_id], report.failed
    assert records.attempts(rdir) == 2
    assert not list(rdir.rglob(f"*{io.TMP_SUFFIX}")) and not RunDir(rdir).lease.exists()
    weights, scores, metrics = final_state(rdir)
    want_weights, want_scores, want_metrics = final_state(straight)
    assert scores == want_scores
    assert metrics == want_metrics
    for name, value in want_weights.items():
        assert torch.equal(weights[name], value), name
    result = io.read_json(rdir / "result.json")
    assert result["eval"] == want_scores and result["train"]["steps"] == 10
    resumed_from = {"step@5": 3, "write:step-000000006-*": 3}.get(fault, 10)
    assert result["train"]["resumed_from_step"] == resumed_from


def test_a_full_disk_fails_the_run_with_that_reason_and_keeps_earlier_checkpoints(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSTEER_FAULT", "write:step-000000006-*=enospc")
    report = launcher.launch([spec], tmp_path, DEBUG, log=quiet)
    rdir = records.run_dir(tmp_path, spec.run_id)
    assert report.failed[spec.run_id].startswith("OSError: [Errno 28] No space left on device")
    assert records.read_status(rdir)["error"] == report.failed[spec.run_id]
    [kept] = checkpoint_files(rdir)
    assert io.verify_checksummed(kept) and torch.load(kept, weights_only=True)["step"] == 3
    assert not list(rdir.rglob(f"*{io.TMP_SUFFIX}"))

    monkeypatch.delenv("CLIPSTEER_FAULT")  # space freed: the run goes on from its last checkpoint
    assert launcher.launch([spec], tmp_path, DEBUG, log=quiet).done == [spec.run_id]
    assert io.read_json(rdir / "result.json")["train"]["resumed_from_step"] == 3


def test_a_disk_too_full_to_record_the_failure_still_reports_it(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSTEER_FAULT", "write:step-000000006-*=enospc,write:error.txt@1+=enospc")
    report = launcher.launch([spec], tmp_path, DEBUG, log=quiet)
    reason = report.failed[spec.run_id]
    assert reason.startswith("OSError: [Errno 28] No space left on device") and "not recorded on disk" in reason


def test_a_nan_loss_fails_that_run_with_step_and_parts_and_the_sweep_goes_on(spec, tmp_path):
    nan = replace(spec, train=replace(spec.train, lr=1e30), method=MethodConfig("clip"), run_id="nan-run")
    fine = replace(spec, method=MethodConfig("clip"), run_id="fine-run")
    report = launcher.launch([nan, fine], tmp_path, DEBUG, log=quiet)
    assert report.done == ["fine-run"]
    assert report.failed["nan-run"].startswith("NonFiniteLoss: non-finite loss nan at step ")
    assert "loss parts: {'contrastive_loss'" in report.failed["nan-run"]
    table = records.results_table(tmp_path, [nan, fine])
    failed = table.set_index("run_id").loc["nan-run"]
    assert failed.status == "failed" and failed.error == report.failed["nan-run"]


def test_a_sweep_whose_every_run_failed_still_gets_its_report(spec, tmp_path):
    nan = replace(spec, train=replace(spec.train, lr=1e30), method=MethodConfig("clip"), run_id="nan-run")
    assert list(launcher.launch([nan], tmp_path, DEBUG, log=quiet).failed) == ["nan-run"]
    table = records.results_table(tmp_path, [nan])
    assert table["average"].isna().all() and table["c_paper"].isna().all()
    paths = write_report(table, tmp_path / "report", "all failed")
    assert "failed: NonFiniteLoss" in paths["leaderboard_md"].read_text()


def test_a_directory_holding_another_spec_is_never_reused(spec, tmp_path):
    rdir = records.run_dir(tmp_path, spec.run_id)
    other = {**spec.to_json(), "seed": 99}
    io.write_json(rdir / "spec.json", other)
    io.write_json(rdir / "result.json", {"format": records.RESULT_FORMAT, "eval": {"average": 0.99}})
    assert records.state(tmp_path, spec.run_id, spec) == "conflict"
    report = launcher.launch([spec], tmp_path, DEBUG, log=quiet)
    assert "holds a different spec" in report.failed[spec.run_id]
    assert io.read_json(rdir / "spec.json") == other and io.read_json(rdir / "result.json")["eval"]["average"] == 0.99
    with pytest.raises(records.SpecConflict):
        records.begin(rdir, spec)


def test_fields_outside_the_identity_do_not_make_a_conflict(spec, tmp_path):
    rdir = records.run_dir(tmp_path, spec.run_id)
    io.write_json(rdir / "spec.json", {**spec.to_json(), "train": {**spec.to_json()["train"], "log_every": 7}})
    assert records.state(tmp_path, spec.run_id, spec) == "missing"


def test_a_job_refuses_to_run_on_code_other_than_the_sweeps(spec, tmp_path):
    with pytest.raises(CodeChanged, match="the harness code changed since the sweep started"):
        run_job(spec, tmp_path, 1, False, code="000000000000")
    assert records.read_status(records.run_dir(tmp_path, spec.run_id))["error"].startswith("CodeChanged")
    assert len(code_version()) == 12


def test_a_run_held_by_a_live_process_is_not_started_again(spec, tmp_path):
    rdir = records.run_dir(tmp_path, spec.run_id)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        held = lease.acquire(rdir)
        record = io.read_json(RunDir(rdir).lease)
        io.write_json(RunDir(rdir).lease, {**record, "owners": [{**record["owners"][0], "pid": other.pid,
                                                                   "start": lease._start_time(other.pid)}]})
        assert held is not None and lease.acquire(rdir) is None
        with pytest.raises(lease.LeaseLost, match="is being worked on by"):
            run_job(spec, tmp_path, 1, False)
        assert records.attempts(rdir) == 0
    finally:
        other.kill()
        other.wait()
    assert lease.holder(rdir) is None and lease.acquire(rdir) is not None  # its owner died: the lease lapsed


def test_lease_expiry_and_takeover(tmp_path, monkeypatch):
    rdir = tmp_path / "run"
    first = lease.acquire(rdir)
    path = RunDir(rdir).lease
    io.write_json(path, {**io.read_json(path), "owners": [{"host": "elsewhere", "pid": 1, "start": "0"}]})
    assert lease.acquire(rdir) is None  # another host's live lease
    io.write_json(path, {**io.read_json(path), "expires": time.time() - 1})
    second = lease.acquire(rdir)  # its heartbeat stopped: expired
    assert second is not None and second.token != first.token
    with pytest.raises(lease.LeaseLost):
        lease.renew(first)
    lease.release(first)  # not its lease any more: nothing happens
    assert lease.holder(rdir)["token"] == second.token
    monkeypatch.setattr(lease, "BEAT_S", 0.05)
    with lease.Heartbeat([first, second]) as beat:
        time.sleep(0.3)
    assert beat.lost == {first}
    lease.release(second)
    assert lease.read(rdir) is None


CLI_GRID = """
name: race
data: {sources: [shapes], shapes_count: 256}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32, warmup_steps: 1, checkpoint_every: 2}
executor: {kind: local, max_parallel: 2, timeout_min: 10}
stages:
  - name: ref
    methods: [clip]
    models: [tiny-s]
    samples_seen: [128]
  - name: sweep
    reference: ref
    methods: [clip, drrho]
    models: [tiny-s]
    samples_seen: [96]
"""


def test_killed_sweep_then_two_concurrent_reruns_finish_every_run_exactly_once(tmp_path, clipsteer):
    grid, results = tmp_path / "race.yaml", tmp_path / "results"
    grid.write_text(textwrap.dedent(CLI_GRID))
    first = clipsteer("run", grid, "--results", results, env={"CLIPSTEER_FAULT": "step@3"})
    assert first.returncode == 1  # every job was killed at its third step; dependents failed unstarted
    specs = expand(load_grid(grid))
    ref_dir = records.run_dir(results, specs[0].run_id)
    assert checkpoint_files(ref_dir)
    before = {s.run_id: records.attempts(records.run_dir(results, s.run_id)) for s in specs}
    assert before[specs[0].run_id] == 1

    cli = [sys.executable, "-m", "harness", "run", str(grid), "--results", str(results)]
    both = [subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    assert any("(by another process)" in out for out, _ in outputs)  # the two launches did meet
    for s in specs:
        rdir = records.run_dir(results, s.run_id)
        assert records.state(results, s.run_id, s) == "done"
        assert records.attempts(rdir) - before[s.run_id] == 1, s.run_id  # once, by one of the two launches
    assert io.read_json(ref_dir / "result.json")["train"]["resumed_from_step"] == 2
