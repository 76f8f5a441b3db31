"""wsd budget ladders: a branch from the shared trunk equals the run trained alone, bit for bit; kills of the trunk or
a branch resume like any run; the sweep counts the trunk once in c_spent."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch

from harness import io
from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.errors import ConfigError
from harness.grid.config import ExecutorConfig, load_grid
from harness.grid.runspec import identity
from harness.grid.spec import expand
from harness.launch import launcher
from harness.launch.ladder import rungs
from harness.models import build_model
from harness.run.branch import Rung, prepare, spent
from harness.run.features import OnlineReference
from harness.run.train import (
    BRANCH_POINTS,
    CHECKPOINTS,
    FINAL_MODEL,
    METRICS,
    TrainConfig,
    train,
)
from harness.store import records
from harness.store.rundir import RunDir, checkpoint_files, checkpoint_step
from methods import get_method

GRID = """
name: ladder
data: {sources: [shapes], shapes_count: 256, noise: 0.2}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 16, warmup_steps: 2, checkpoint_every: 3, log_every: 1, schedule: wsd, cooldown: 0.25}
executor: {kind: debug}
stages:
  - name: s
    methods: [fastclip]
    models: [tiny-s]
    samples_seen: [128, 192]
"""
SHORT_STEPS, BRANCH_STEP = 8, 6  # 128 samples: the last round(0.25 * 8) = 2 steps decay; the trunk has 12 steps
DEBUG = ExecutorConfig(kind="debug")


def quiet(*_):
    pass


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as a run's job sets: on a shared 2-core machine two threads run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_grid(folder, text=GRID):
    path = folder / "grid.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    short, long = sorted(expand(load_grid(write_grid(tmp_path_factory.mktemp("grid")))), key=lambda s: s.samples_seen)
    return short, long


@pytest.fixture(scope="module")
def alone(specs, tmp_path_factory):
    """The short budget trained alone (no ladder in a launch of one run): what every branch must equal."""
    results = tmp_path_factory.mktemp("alone")
    assert launcher.launch([specs[0]], results, DEBUG, log=quiet).done == [specs[0].run_id]
    return records.run_dir(results, specs[0].run_id)


@pytest.fixture(scope="module")
def ladder(specs, tmp_path_factory):
    """Both budgets launched together: the long one is the trunk, the short one branches from it."""
    results = tmp_path_factory.mktemp("ladder")
    report = launcher.launch(list(specs), results, DEBUG, log=quiet)
    assert sorted(report.done) == sorted(s.run_id for s in specs), report.failed
    return results


def final_state(rdir):
    weights = torch.load(rdir / FINAL_MODEL, weights_only=True)["state_dict"]
    lines = (rdir / METRICS).read_text().splitlines()
    metrics = [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]
    method = torch.load(checkpoint_files(rdir)[0], weights_only=True)["method"]
    return weights, method, metrics


def assert_same_run(rdir, want):
    """The final weights, the method's final state and every logged metric but the clock are equal."""
    weights, method, metrics = final_state(rdir)
    want_weights, want_method, want_metrics = final_state(want)
    assert metrics == want_metrics and [m["step"] for m in metrics] == list(range(1, SHORT_STEPS + 1))
    assert weights.keys() == want_weights.keys() and method.keys() == want_method.keys()
    for name, value in [*want_weights.items(), *want_method.items()]:
        assert bits({**weights, **method}[name]) == bits(value), name


def bits(tensor):
    """A tensor's bytes: equal bit for bit, the NaNs of samples fastclip has not seen yet included."""
    return tensor.numpy().tobytes()


def test_wsd_runs_differing_only_in_budget_form_a_ladder_and_cosine_runs_do_not(specs):
    short, long = specs
    assert rungs(list(specs)) == {long.run_id: Rung(keep_at=(BRANCH_STEP,)),
                                  short.run_id: Rung(trunk=long.run_id, step=BRANCH_STEP)}
    cosine = [replace(s, train=replace(s.train, schedule="cosine", cooldown=0.2)) for s in specs]
    other_seed = replace(short, seed=1, run_id="other-seed")
    whole_cooldown = [replace(s, train=replace(s.train, cooldown=1.0)) for s in specs]  # nothing is shared
    assert rungs(cosine) == {} and rungs([other_seed, long]) == {} and rungs(whole_cooldown) == {}


def test_the_schedule_keeps_existing_run_ids_and_a_bad_one_names_file_and_key(specs, tmp_path):
    wsd = specs[0].to_json()
    cosine = {**wsd, "train": {**wsd["train"], "schedule": "cosine", "cooldown": 0.2}}
    older = {**cosine, "train": {k: v for k, v in cosine["train"].items() if k not in ("schedule", "cooldown")}}
    assert identity(cosine) == identity(older) and identity(wsd) != identity(cosine)
    path = write_grid(tmp_path, GRID.replace("schedule: wsd", "schedule: wds"))
    with pytest.raises(ConfigError, match=rf"^{path}: train: schedule must be one of cosine, wsd, got 'wds' "
                                          r"\(did you mean 'wsd'\?\)"):
        load_grid(path)


@pytest.mark.parametrize("method_name", ["fastclip", "filter"])
def test_a_branch_of_the_trunk_equals_the_run_trained_alone(tmp_path, method_name):
    """fastclip carries per-sample u-states, a gamma schedule and a learnable temperature; filter a static selection."""
    pool = build_pool(PoolConfig(sources=("shapes",), shapes_count=256, noise=0.2))
    cfg = TrainConfig(batch_size=16, warmup_steps=2, log_every=1, schedule="wsd", cooldown=0.25)
    torch.manual_seed(1)
    reference = build_model("tiny-s")
    reference.model.eval().requires_grad_(False)
    reference = OnlineReference(reference, "cpu")

    def run(name, steps, keep_at=()):
        torch.manual_seed(0)
        built = build_model("tiny-s")
        train(built, get_method(method_name)({}, pool.num_indices), pool, steps * cfg.batch_size, cfg, 0,
              tmp_path / name, reference=reference, show_progress=False, keep_at=keep_at)

    run("alone", SHORT_STEPS)
    run("trunk", 12, keep_at=(BRANCH_STEP,))
    [kept] = (tmp_path / "trunk" / BRANCH_POINTS).iterdir()
    assert torch.load(kept, weights_only=True)["step"] == BRANCH_STEP
    assert prepare(tmp_path / "branch", tmp_path / "trunk", BRANCH_STEP) == {"trunk": "trunk", "step": BRANCH_STEP}
    run("branch", SHORT_STEPS)
    assert_same_run(tmp_path / "branch", tmp_path / "alone")


def test_a_sweep_trains_the_trunk_once_and_counts_it_once(specs, alone, ladder):
    short, long = specs
    branch_dir, trunk_dir = records.run_dir(ladder, short.run_id), records.run_dir(ladder, long.run_id)
    assert_same_run(branch_dir, alone)
    assert io.read_json(branch_dir / "eval.json") == io.read_json(alone / "eval.json")
    result = io.read_json(branch_dir / "result.json")
    assert result["branch"] == {"trunk": long.run_id, "step": BRANCH_STEP}
    assert result["train"]["resumed_from_step"] == BRANCH_STEP and result["train"]["steps"] == SHORT_STEPS
    assert io.read_json(trunk_dir / "result.json")["branch"] is None
    assert [p.name.split("-")[1] for p in (trunk_dir / BRANCH_POINTS).iterdir()] == [f"{BRANCH_STEP:09d}"]

    table = records.results_table(ladder, list(specs)).set_index("run_id")
    mine, theirs = table.loc[short.run_id], table.loc[long.run_id]
    assert mine.c_paper == mine.gflops_per_pair * 128 and mine.c_total == mine.c_paper  # what the model saw
    assert theirs.c_spent == theirs.c_total
    assert mine.c_spent == pytest.approx(mine.c_total * (SHORT_STEPS - BRANCH_STEP) / SHORT_STEPS)
    assert table.c_spent.sum() == pytest.approx(mine.gflops_per_pair * (192 + 2 * 16))  # the trunk once, then 2 steps
    alone_table = records.results_table(alone.parent.parent, [short]).set_index("run_id")
    assert alone_table.loc[short.run_id].c_spent == alone_table.loc[short.run_id].c_total


def test_a_branch_whose_trunk_kept_no_branch_point_trains_alone_saying_so(specs, tmp_path, capsys):
    short, long = specs
    trunk = records.run_dir(tmp_path, long.run_id)
    trunk.mkdir(parents=True)
    assert prepare(records.run_dir(tmp_path, short.run_id), trunk, BRANCH_STEP) is None
    assert "kept no intact checkpoint at step 6; training alone from step 0" in capsys.readouterr().err
    compute = {"c_paper": 8.0, "learner_scoring": 0.0, "reference_forward": 4.0, "pool_scoring": 2.0}
    assert spent(compute, 8, 0) == 14.0 and spent(compute, 8, 6) == 3.0


def killed_sweep(specs, results, fault):
    """Launch the ladder (debug executor: every run in this one process) in a process that SIGKILLs itself at
    `fault`."""
    code = ("import json, sys; from harness.grid.config import ExecutorConfig; from harness.launch import launcher; "
            "from harness.grid.runspec import RunSpec; "
            "specs = [RunSpec.from_json(s) for s in json.loads(sys.argv[1])]; "
            "launcher.launch(specs, sys.argv[2], ExecutorConfig(kind='debug'), log=lambda *_: None)")
    env = {**os.environ, "CLIPSTEER_FAULT": fault}
    specs_json = json.dumps([s.to_json() for s in specs])
    return subprocess.run([sys.executable, "-c", code, specs_json, str(results)], env=env, capture_output=True,
                          text=True, timeout=600)


# The trunk writes its branch point at step 6 before its own checkpoint of step 6, then the branch copies it.
KILL_POINTS = [
    ("write:step-000000006-*", "trunk", [3], 3, "the trunk, while it writes its branch point"),
    ("write:step-000000006-*@3", "branch", [], BRANCH_STEP, "the branch, while it copies its branch point"),
    ("step@13", "branch", [BRANCH_STEP], BRANCH_STEP, "the branch, after its first step of cooldown"),
]


@pytest.mark.parametrize("fault, killed, left, resumed_at, where", KILL_POINTS, ids=[k[0] for k in KILL_POINTS])
def test_a_ladder_killed_anywhere_completes_on_the_next_launch_bit_identical(specs, alone, tmp_path, fault, killed,
                                                                            left, resumed_at, where):
    short, long = specs
    proc = killed_sweep(specs, tmp_path, fault)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    rdir = records.run_dir(tmp_path, (short if killed == "branch" else long).run_id)
    assert records.state(tmp_path, rdir.name) == "running"
    assert [checkpoint_step(p) for p in checkpoint_files(rdir)] == left  # the kill hit where it says

    report = launcher.launch(list(specs), tmp_path, DEBUG, log=quiet)
    assert sorted(report.done + report.skipped) == sorted(s.run_id for s in specs), report.failed
    assert records.attempts(rdir) == 2 and not list(tmp_path.rglob(f"*{io.TMP_SUFFIX}"))
    branch_dir = records.run_dir(tmp_path, short.run_id)
    assert_same_run(branch_dir, alone)
    assert io.read_json(branch_dir / "eval.json") == io.read_json(alone / "eval.json")
    assert io.read_json(RunDir(branch_dir).branch) == {"trunk": long.run_id, "step": BRANCH_STEP}
    assert io.read_json(rdir / "result.json")["train"]["resumed_from_step"] == resumed_at
    assert len(checkpoint_files(branch_dir)) <= 2 and (branch_dir / CHECKPOINTS).is_dir()
