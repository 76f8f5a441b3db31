"""Seeds pair runs across methods: seed k gives every method of a stage the same initial weights and the same
data order, through the real job path (a steered method loads its reference before the seed is set)."""
from __future__ import annotations

import textwrap

import torch
import yaml

from harness.grid.config import parse_grid
from harness.grid.spec import expand
from harness.models import build_model
from harness.run import job, train

GRID = """
name: pairs
data: {sources: [shapes], shapes_count: 256, noise: 0.2}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 16, warmup_steps: 1, augment: false}
executor: {kind: debug}
stages:
  - name: sweep
    reference: {checkpoint: CKPT, model: tiny-s}
    methods: [clip, drrho]
    models: [tiny-s]
    samples_seen: [16]
    seeds: [3]
"""


def _first_step(spec, results, monkeypatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The weights the job hands to the training loop and the loop's first batch (pool positions), from a real run."""
    seen: dict[str, object] = {}
    real_train, real_positions = train.train, train.batch_positions

    def positions(step, *args):
        out = real_positions(step, *args)
        seen.setdefault("positions", out.clone())
        return out

    def snapshot_then_train(built, *args, **kwargs):
        seen["weights"] = {k: v.clone() for k, v in built.model.state_dict().items()}
        return real_train(built, *args, **kwargs)

    monkeypatch.setattr(train, "batch_positions", positions)
    monkeypatch.setattr(job, "train", snapshot_then_train)
    job.run_job(spec, results, show_progress=False)
    return seen["weights"], seen["positions"]


def test_two_methods_with_one_seed_start_from_the_same_weights_and_draw_the_same_first_batch(tmp_path, monkeypatch):
    ckpt = tmp_path / "ref.pt"
    torch.manual_seed(123)
    torch.save({"state_dict": build_model("tiny-s").model.state_dict()}, ckpt)
    grid = parse_grid(yaml.safe_load(textwrap.dedent(GRID.replace("CKPT", str(ckpt)))), "pairs.yaml")
    clip, drrho = expand(grid)
    assert (clip.method.name, drrho.method.name, clip.seed, drrho.seed) == ("clip", "drrho", 3, 3)
    w_clip, first_clip = _first_step(clip, tmp_path, monkeypatch)
    w_drrho, first_drrho = _first_step(drrho, tmp_path, monkeypatch)
    assert w_clip.keys() == w_drrho.keys()
    assert all(torch.equal(w_clip[k], w_drrho[k]) for k in w_clip)
    assert torch.equal(first_clip, first_drrho)
    other = expand(parse_grid(yaml.safe_load(textwrap.dedent(
        GRID.replace("CKPT", str(ckpt)).replace("seeds: [3]", "seeds: [4]"))), "pairs.yaml"))[0]
    w_other, first_other = _first_step(other, tmp_path, monkeypatch)
    assert not all(torch.equal(w_clip[k], w_other[k]) for k in w_clip)
    assert not torch.equal(first_clip, first_other)
