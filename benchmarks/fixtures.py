"""What the benchmark groups share: the demo pool, the bare baseline loop, timed harness training calls
and reference feature sources (a fresh tiny-s checkpoint, on the fly or cached)."""
from __future__ import annotations

import functools
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

import harness  # noqa: F401  (torchvision guard before open_clip)
from harness.data.build import build_pool
from harness.data.pool import ImageTextPool
from harness.grid.config import GridConfig, load_grid, pool_config
from harness.models import BuiltModel, build_model
from harness.run.features import CachedReference, OnlineReference, pool_features
from harness.run.reference import CheckpointReference
from harness.run.train import METRICS, TrainConfig, param_groups, train
from methods import get_method

REPO = Path(__file__).resolve().parent.parent
DEMO_GRID = REPO / "grids" / "demo.yaml"
TMPFS = Path("/dev/shm")  # run directories live here when it exists: the per-step fsync of metrics.jsonl is then ~free


def scratch() -> tempfile.TemporaryDirectory:
    """A temporary directory on tmpfs when there is one."""
    return tempfile.TemporaryDirectory(prefix="clipsteer-bench-", dir=TMPFS if TMPFS.is_dir() else None)


@functools.lru_cache(maxsize=1)
def demo_grid() -> GridConfig:
    """grids/demo.yaml, validated."""
    return load_grid(DEMO_GRID)


@functools.lru_cache(maxsize=1)
def demo_pool() -> ImageTextPool:
    """The demo's noisy training pool (17,437 pairs), built once per process."""
    return build_pool(pool_config(demo_grid().data))


def demo_train(**overrides: Any) -> TrainConfig:
    """The demo grid's training settings with `overrides`."""
    return TrainConfig(**{**demo_grid().train, **overrides})


def fresh_model(name: str, seed: int = 0) -> BuiltModel:
    """A newly initialised open_clip model of preset `name`, seeded."""
    torch.manual_seed(seed)
    return build_model(name)


@dataclass
class TrainTiming:
    """One harness train() call: median seconds per step after the warm-up steps, the loop's and the call's seconds."""

    step_s: float
    loop_s: float
    call_s: float


def harness_train(method: str, pool: ImageTextPool, steps: int, skip: int, cfg: TrainConfig,
                  reference: Any = None, model: str = "tiny-s") -> TrainTiming:
    """Time harness.run.train() for `steps` steps of a fresh `model`; per-step times are the differences of
    metrics.jsonl's cumulative `time_s` (log_every=1, so each step includes its own logging)."""
    built = fresh_model(model)
    learner = get_method(method)({}, num_indices=pool.num_indices)
    cfg = TrainConfig(**{**vars(cfg), "log_every": 1, "checkpoint_every": 0})
    with scratch() as run_dir:
        start = time.perf_counter()
        train(built, learner, pool, steps * cfg.batch_size, cfg, 0, Path(run_dir), reference=reference,
              show_progress=False)
        call = time.perf_counter() - start
        stamps = [json.loads(line)["time_s"] for line in (Path(run_dir) / METRICS).read_text().splitlines()]
    per_step = [b - a for a, b in zip([0.0] + stamps, stamps)]
    return TrainTiming(statistics.median(per_step[skip:]), stamps[-1], call)


class BareClip:
    """The baseline: an open_clip model, fused AdamW over the same parameter groups and settings, open_clip's
    ClipLoss, batches sliced from the pool's tensors; no harness code inside the step but the model's own
    preprocessing (BuiltModel.preprocess: uint8 to normalised float)."""

    def __init__(self, built: BuiltModel, pool: ImageTextPool, batch_size: int, cfg: TrainConfig, seed: int = 0) -> None:
        self.built = built
        self.model = self.built.model.train()
        self.pool, self.batch_size = pool, batch_size
        self.tokens = pool.tokenize(self.built.tokenizer)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                     betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=True)
        self.loss = open_clip.ClipLoss()
        self.order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
        self.cursor = 0

    def step(self) -> float:
        """One training step on the next slice of the shuffled pool; returns its wall seconds."""
        start = time.perf_counter()
        if self.cursor + self.batch_size > len(self.order):
            self.cursor = 0
        pos = self.order[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        image, text, scale = self.model(self.built.preprocess(self.pool.images[pos]),
                                        self.tokens[self.pool.caption_ids[pos]])[:3]
        loss = self.loss(image, text, scale)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, 4.6052)  # log(100), as open_clip's training loop
        return time.perf_counter() - start

    def median_step(self, steps: int, skip: int) -> float:
        """Median seconds per step over `steps` steps, the first `skip` left out."""
        return statistics.median([self.step() for _ in range(steps)][skip:])


def bare_train(pool: ImageTextPool, steps: int, skip: int, cfg: TrainConfig) -> TrainTiming:
    """The bare loop's counterpart of harness_train: a fresh tiny-s (built before the clock starts, as there),
    then optimizer, loss and `steps` steps."""
    built = fresh_model("tiny-s")
    start = time.perf_counter()
    bare = BareClip(built, pool, cfg.batch_size, cfg)
    times = [bare.step() for _ in range(steps)]
    return TrainTiming(statistics.median(times[skip:]), sum(times), time.perf_counter() - start)


@dataclass
class References:
    """A fresh reference model saved as a checkpoint and loaded the harness's way, as two feature sources."""

    online: OnlineReference
    cached: CachedReference
    cache_build_s: float


def references(pool: ImageTextPool, model: str = "tiny-s", device: str = "cpu") -> References:
    """Save a freshly initialised `model` as a checkpoint, load it as a 'checkpoint' reference, and build
    its feature table over `pool` on `device` (what a refcache holds, indexed by stable sample index)."""
    with scratch() as where:
        path = Path(where) / "reference.pt"
        torch.save({"state_dict": fresh_model(model, seed=1).model.state_dict()}, path)
        built = CheckpointReference(path=str(path), sha256="", model=model).load(Path(where))
    online = OnlineReference(built, device)
    start = time.perf_counter()
    feats = pool_features(built, pool, device)
    image = torch.zeros(pool.num_indices, feats.image.shape[1], device=feats.image.device)
    text = torch.zeros_like(image)
    image[pool.indices.to(image.device)], text[pool.indices.to(image.device)] = feats.image, feats.text
    cache_s = time.perf_counter() - start
    return References(online, CachedReference(image, text, feats.logit_scale, device), cache_s)
