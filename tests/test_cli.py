"""The command line answers at once: importing it, the grid validator and the method registry loads no torch
(checked in a fresh interpreter), so --help and a grid's validation errors come before any heavy import; nor
do `status` and `run --dry-run` of the demo grid."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "torchvision", "clip_benchmark", "pandas")


def _heavy_loaded(code: str) -> dict:
    """Run `code` in a fresh interpreter; the heavy modules it left in sys.modules, and what it printed last."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_importing_the_cli_and_the_grid_validator_loads_no_torch():
    assert _heavy_loaded("import harness.cli, harness.grid.config, harness.presets, methods") == []


def test_help_and_a_validation_error_load_no_torch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [{name: s, methods: [{name: drrho, tau: -1.0}], models: [tiny-s], samples_seen: [256],"
                   " reference: {pretrained: x, model: tiny-s}}]\ntrain: {lr: 0.002}\n")
    code = f"""
import contextlib, io
from harness.cli import main
from harness.errors import ConfigError
from harness.grid.config import load_grid
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["run", "--help"])
    except SystemExit:
        pass
try:
    load_grid({str(bad)!r})
except ConfigError as e:
    assert "tau and eps must be finite and > 0" in str(e), e
else:
    raise AssertionError("the bad method parameter was accepted")
"""
    assert _heavy_loaded(code) == []


def test_status_and_the_dry_run_of_the_demo_load_no_torch_nor_pandas(tmp_path):
    # the demo reads a reference-feature cache and runs drrho: expansion, the cache units, the estimate (pool
    # sizes, model FLOPs, method accounting) and the run states all come from data, not from torch
    code = f"""
import contextlib, io
from harness.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main(["status", "grids/demo.yaml", "--results", {str(tmp_path / "demo")!r}]) == 0
    assert main(["run", "grids/demo.yaml", "--dry-run", "--results", {str(tmp_path / "demo")!r}]) == 0
text = out.getvalue()
assert "26 units: 26 missing" in text and "refcache-tiny-m-" in text, text
assert "25 runs, 0 done, 25 to launch" in text and "C_total=" in text and "min of wall time" in text, text
"""
    assert _heavy_loaded(code) == []
    assert not (tmp_path / "demo").exists()  # both write nothing


def test_a_launcher_loads_no_torch_only_the_jobs_it_submits_do():
    # each `clipsteer run` (a chaos trial starts several) saves the seconds that torch and open_clip take to
    # load: the functions its jobs call are pickled by name and import the run's code where they run
    code = """
import cloudpickle
import harness.sweep
from harness.grid.config import ExecutorConfig
from harness.launch import launcher
cloudpickle.dumps(launcher._run_function(ExecutorConfig(kind="local")))
cloudpickle.dumps(launcher._FirstTaskOnly(launcher.build_cache_job))
"""
    assert _heavy_loaded(code) == ["pandas"]  # the report's


def test_a_method_loads_torch_at_its_first_use_and_computes_as_before():
    code = """
import math, sys
from methods import Features, Progress, get_method
clip = get_method("clip")({}, num_indices=4)
assert "torch" not in sys.modules
import torch
feats = Features(torch.eye(4), torch.eye(4), torch.tensor(1.0))
loss = clip.loss(feats, None, torch.arange(4), Progress(0, 0.0)).loss
expected = -math.log(math.e / (math.e + 3))
assert abs(float(loss) - expected) < 1e-6, (float(loss), expected)
"""
    assert _heavy_loaded(code) == ["torch"]


def test_version_and_a_bad_flag_gets_the_subcommand_usage_and_the_flag_meant(capsys):
    import pytest

    import harness
    from harness.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"clipsteer {harness.__version__}\n"
    with pytest.raises(SystemExit) as done:
        main(["run", "grids/demo.yaml", "--dryrun"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("usage: clipsteer run ")
    assert "clipsteer run: error: unrecognized arguments: --dryrun (did you mean '--dry-run'?)" in err
    with pytest.raises(SystemExit):
        main(["status", "grids/demo.yaml", "--resutls=x"])
    assert "unrecognized arguments: --resutls=x (did you mean '--results'?)" in capsys.readouterr().err


def test_did_you_mean_for_a_grid_file_name_and_key_synonyms(tmp_path, capsys):
    from harness.cli import main

    assert main(["run", "grids/demo.yml", "--dry-run"]) == 2
    assert "grids/demo.yml: no such grid file (did you mean 'grids/demo.yaml'?)" in capsys.readouterr().err
    for key, meant, section in (("learning_rate", "lr", "train"), ("wd", "weight_decay", "train"),
                                ("bs", "batch_size", "train"), ("type", "kind", "executor"),
                                ("workers", "max_parallel", "executor")):
        grid = tmp_path / "g.yaml"
        grid.write_text(f"{section}: {{{key}: 1}}\nstages: []\n")
        assert main(["run", str(grid), "--dry-run"]) == 2
        assert f"{section}.{key}: unknown key (did you mean '{meant}'?)" in capsys.readouterr().err


SMALL = """name: demo
data: {sources: [shapes], shapes_count: 256}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32}
stages: [{name: s, methods: [clip], models: [tiny-s], samples_seen: [64]}]
"""


def test_the_results_directory_comes_from_the_grid_file_and_is_never_another_grids(tmp_path, monkeypatch, capsys):
    import json

    from harness.cli import main
    from harness.grid.config import load_grid
    from harness.grid.results import SPECS, results_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "grids").mkdir()
    for stem in ("demo", "demo_lr"):  # a copy of the demo with its name unchanged
        (tmp_path / "grids" / f"{stem}.yaml").write_text(SMALL)
    demo, copy = load_grid("grids/demo.yaml"), load_grid("grids/demo_lr.yaml")
    assert copy.name == "demo" and results_dir(demo, None) == Path("results/demo")
    assert results_dir(copy, None) == Path("results/demo_lr")
    (tmp_path / "results" / "demo").mkdir(parents=True)
    (tmp_path / "results" / "demo" / SPECS).write_text(json.dumps({"grid": "demo", "source": "grids/demo.yaml"}))
    assert results_dir(demo, None) == Path("results/demo")  # its own runs
    (tmp_path / "grids" / "demo_lr.yaml").rename(tmp_path / "demo.yaml")  # another file, the same stem
    assert main(["status", "demo.yaml"]) == 2
    err = capsys.readouterr().err
    assert "demo.yaml: its results directory results/demo holds the runs of another grid file, grids/demo.yaml" in err
    assert main(["run", "demo.yaml", "--dry-run"]) == 2
    assert main(["run", "demo.yaml", "--dry-run", "--results", "results/demo"]) == 0  # on purpose
    assert "grid demo: 1 runs, 0 done, 1 to launch" in capsys.readouterr().out
