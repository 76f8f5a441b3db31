"""Data-parallel training on CPU (gloo): two processes sharing a global batch train exactly what one process
does with that batch, for a plain loss, a per-sample-state loss, a steered loss and both kinds of selection."""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.models import build_model
from harness.run import distributed
from harness.run.features import OnlineReference
from harness.run.train import FINAL_MODEL, METRICS, TrainConfig, train
from methods import Features, get_method

POOL = PoolConfig(sources=("shapes",), shapes_count=256, noise=0.2)
CFG = TrainConfig(batch_size=16, lr=1e-3, warmup_steps=1, log_every=1, checkpoint_every=2)
STEPS = 4
METHODS = ("clip", "fastclip", "drrho", "jest", "filter")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_all(out: Path) -> None:
    """Train every METHODS entry for STEPS steps from the same seeded initialisation into out/<method>."""
    pool = build_pool(POOL)
    torch.manual_seed(1)
    reference = build_model("tiny-s")
    reference.model.eval().requires_grad_(False)
    for name in METHODS:
        torch.manual_seed(0)
        built = build_model("tiny-s")
        train(built, get_method(name)({}, pool.num_indices), pool, STEPS * CFG.batch_size, CFG, 0, out / name,
              reference=OnlineReference(reference, "cpu"), show_progress=False)


def _rank(rank: int, size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size))
    torch.set_num_threads(1)
    world = distributed.join("cpu")
    assert world == distributed.World(rank, size)
    try:
        _train_all(Path(out))
    finally:
        distributed.leave()


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / METRICS).read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same training, once in this process and once in two gloo processes."""
    root = tmp_path_factory.mktemp("ddp")
    torch.set_num_threads(1)
    _train_all(root / "one")
    mp.start_processes(_rank, args=(2, _free_port(), str(root / "two")), nprocs=2, start_method="spawn")
    return root / "one", root / "two"


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_match_one_process_with_the_same_global_batch(runs, method):
    one, two = (r / method for r in runs)
    assert len(_losses(two)) == STEPS
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5, abs=1e-6)
    a = torch.load(one / FINAL_MODEL, weights_only=True)["state_dict"]
    b = torch.load(two / FINAL_MODEL, weights_only=True)["state_dict"]
    moved = max(float((a[k] - v).abs().max()) for k, v in build_model_state().items())
    assert moved > 1e-4  # the comparison below is about trained weights, not the initialisation
    for key in a:
        x, y = a[key], b[key]
        if key.endswith("attn.in_proj_bias"):
            # The key projection's bias has zero gradient in exact math (it adds the same value to every
            # logit of a softmax row); in floats its gradient is rounding noise, which Adam scales up to
            # lr-sized steps of random sign. Leave that third out; compare the query and value biases.
            width = len(x) // 3
            x, y = torch.cat([x[:width], x[2 * width:]]), torch.cat([y[:width], y[2 * width:]])
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5), key


def build_model_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("tiny-s").model.state_dict()


def test_the_global_batch_must_split_evenly_across_processes():
    world = distributed.World(rank=1, size=3)
    with pytest.raises(ValueError, match="batch_size 16 is not divisible by the 3"):
        world.check_divides(16, "batch_size")
    assert world.share(torch.arange(12)).tolist() == [4, 5, 6, 7]


def test_a_single_process_world_passes_everything_through():
    world = distributed.current()
    assert world == distributed.World() and world.main and not dist.is_initialized()
    feats = Features(torch.ones(2, 3), torch.ones(2, 3), torch.tensor(1.0))
    assert world.gather(feats) is feats and world.from_main(lambda: 7) == 7


GRID = """
name: ddp
data: {sources: [shapes], shapes_count: 256, noise: 0.2}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 16, lr: 1.0e-3, warmup_steps: 1, log_every: 1}
executor: {kind: EXECUTOR}
stages:
  - {name: reference, methods: [clip], models: [tiny-s], samples_seen: [32]}
  - name: sweep
    reference: {stage: reference, features: cached}
    methods: [drrho, jest]
    models: [tiny-s]
    samples_seen: [48]
"""


def test_a_sweep_with_two_processes_per_run_matches_one_process_per_run(tmp_path):
    """Through the real launcher: submitit's local executor starts each run as two tasks that train as one
    gloo process group (the feature cache is built by one task); every result matches the in-process run."""
    from harness import io
    from harness.grid.config import load_grid
    from harness.grid.spec import expand
    from harness.launch import launcher

    results = {}
    for name, executor in (("one", "{kind: debug}"), ("two", "{kind: local, tasks_per_job: 2, max_parallel: 1}")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(GRID.replace("{kind: EXECUTOR}", executor))
        grid = load_grid(path)
        report = launcher.launch(expand(grid), tmp_path / name, grid.executor, log=lambda *_: None)
        assert not report.failed, report.failed
        results[name] = {d.name: io.read_json(d / "result.json") for d in (tmp_path / name / "runs").iterdir()}
    one, two = results["one"], results["two"]
    trained = [run_id for run_id, result in one.items() if "train" in result]  # not the feature cache
    assert one.keys() == two.keys() and len(trained) == 3 and len(one) == 4
    for run_id in trained:
        result = one[run_id]
        assert two[run_id]["processes"] == 2 and result["processes"] == 1
        assert two[run_id]["train"]["final_loss"] == pytest.approx(result["train"]["final_loss"], rel=1e-5)
        assert two[run_id]["eval"]["average"] == pytest.approx(result["eval"]["average"], abs=0.02)
