"""`clipsteer status` and runs of earlier grid versions: what each run's state is, and what is kept apart."""
import subprocess
import sys
import textwrap

from harness import io, sweep
from harness.cli import main
from harness.grid.config import ExecutorConfig, load_grid
from harness.grid.spec import expand
from harness.launch import launcher
from harness.store import lease, records
from harness.store.rundir import RunDir

GRID = """
name: st
data: {sources: [shapes], shapes_count: 256}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32, warmup_steps: 1}
executor: {kind: debug}
stages:
  - name: s
    methods: [clip]
    models: [tiny-s]
    samples_seen: [SAMPLES]
"""


def grid_file(tmp_path, samples):
    path = tmp_path / "st.yaml"
    path.write_text(textwrap.dedent(GRID).replace("SAMPLES", samples))
    return path


def test_status_names_each_state_with_its_detail(tmp_path, capsys):
    path, results = grid_file(tmp_path, "32, 64, 96, 128, 160"), tmp_path / "out"
    done, failed, interrupted, running, missing = expand(load_grid(path))
    records.finish(records.run_dir(results, done.run_id), {"eval": {"average": 0.25}})
    records.fail(records.run_dir(results, failed.run_id), RuntimeError("boom\nlast line"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for spec, pid in ((interrupted, int(dead.stdout)), (running, None)):
        rdir = RunDir.of(results, spec.run_id)
        records.begin(rdir.path, spec)
        held = lease.acquire(rdir.path)
        if pid is not None:  # the process that held it is gone
            record = io.read_json(rdir.lease)
            io.write_json(rdir.lease, {**record, "owners": [{**record["owners"][0], "pid": pid}]})
            rdir.checkpoints.mkdir()
            (rdir.checkpoints / "step-000000006-0123456789abcdef.pt").write_bytes(b"")
        assert held is not None
    assert main(["status", str(path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "5 units: 1 done, 1 running, 1 interrupted, 1 failed, 1 missing" in out
    lines = {spec.run_id: next(line for line in out.splitlines() if spec.run_id in line)
             for spec in (done, failed, interrupted, running, missing)}
    assert "done" in lines[done.run_id] and "average 0.2500" in lines[done.run_id]
    assert "failed" in lines[failed.run_id] and "RuntimeError: last line" in lines[failed.run_id]
    assert "interrupted" in lines[interrupted.run_id] and "resumes from step 6" in lines[interrupted.run_id]
    holder = lease.describe(lease.read(records.run_dir(results, running.run_id)))
    assert "running" in lines[running.run_id] and f"on {holder}" in lines[running.run_id]
    assert "missing" in lines[missing.run_id]


def test_runs_of_an_edited_grid_are_kept_apart_and_shown_only_when_asked(tmp_path, capsys):
    results = tmp_path / "out"
    for samples in ("32", "64"):  # the grid file is edited between two sweeps
        specs = expand(load_grid(grid_file(tmp_path, samples)))
        io.write_json(results / sweep.SPECS, {"grid": "st", "source": "st.yaml", "specs": [s.to_json() for s in specs]})
        assert launcher.launch(specs, results, ExecutorConfig(kind="debug"), log=lambda *_: None).done
    _, table = sweep.results_of(results)
    assert table.samples_seen.tolist() == [64] and table.stage.tolist() == ["s"]
    _, everything = sweep.results_of(results, include_earlier=True)
    assert sorted(zip(everything.stage, everything.samples_seen)) == [("s", 64), ("s (earlier spec)", 32)]
    assert main(["status", str(grid_file(tmp_path, "64")), "--results", str(results)]) == 0
    assert "1 run(s) of earlier versions of this grid are kept" in capsys.readouterr().out
