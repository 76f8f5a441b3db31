"""A results directory that keeps records only (as committed ones do: no weights, checkpoints or feature caches):
done runs stay done; a run still to do that reads a reference or a cache whose files are gone trains them again,
under the same ids and with the same numbers."""
import shutil
import textwrap

from harness import io, sweep
from harness.grid.config import load_grid
from harness.grid.spec import expand
from harness.launch.plan import pending
from harness.store.rundir import RunDir

GRID = """
name: rec
data: {sources: [shapes], shapes_count: 256}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32, warmup_steps: 1}
executor: {kind: debug}
stages:
  - {name: ref, methods: [clip], models: [tiny-s], samples_seen: [64]}
  - {name: steered, reference: {stage: ref, features: cached}, methods: [drrho], models: [tiny-s],
     samples_seen: [32], seeds: [0, 1]}
"""
KEPT = {"spec.json", "status.json", "result.json", "eval.json", "metrics.jsonl"}


def _records_only(results):
    """Delete everything a committed results directory leaves out (the .gitignore's rules)."""
    for rdir in RunDir.all(results):
        for path in rdir.path.iterdir():
            if path.name not in KEPT:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_a_run_to_do_retrains_the_reference_and_cache_whose_files_are_gone(tmp_path):
    path = tmp_path / "rec.yaml"
    path.write_text(textwrap.dedent(GRID))
    grid, results = load_grid(path), tmp_path / "out"
    assert not sweep.run(grid, results, grid.executor).launch.failed
    specs = expand(grid)
    ref, first, second = specs
    before = {s.run_id: io.read_json(RunDir.of(results, s.run_id).eval) for s in specs}
    _records_only(results)
    assert pending(specs, results) == []  # every run done: nothing needs the missing weights
    shutil.rmtree(RunDir.of(results, second.run_id).path)
    assert [s.run_id for s in pending(specs, results)] == [ref.run_id, second.run_id]
    outcome = sweep.run(grid, results, grid.executor).launch
    assert not outcome.failed and first.run_id in outcome.skipped
    assert RunDir.of(results, ref.run_id).final_model.is_file()
    after = {s.run_id: io.read_json(RunDir.of(results, s.run_id).eval) for s in specs}
    assert after == before
