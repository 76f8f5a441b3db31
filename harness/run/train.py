"""The one training loop: AdamW, warmup then cosine or warmup-stable-decay (harness.run.schedule), seeded,
resumable; it asks the method for a loss and knows no method by name.

Determinism: the batch of step k and its augmentation are functions of (seed, k) alone, so a
run resumed from a checkpoint follows the same trajectory as an uninterrupted one.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness import faults, io
from harness.models import BuiltModel, encode, resolve_device
from harness.run import distributed
from harness.run.schedule import lr_at
from harness.run.trainconfig import TrainConfig
from harness.store.rundir import RunDir, checkpoint_files
from methods import Features, Method, Progress

# file names in a run directory (harness.store.rundir owns them)
CHECKPOINTS = RunDir.checkpoints.name
BRANCH_POINTS = RunDir.branch_points.name  # checkpoints kept for a wsd ladder's shorter budgets (harness.run.branch)
KEEP_CHECKPOINTS = 2  # the newest, and one to fall back to if the newest is found damaged
FINAL_MODEL = RunDir.final_model.name
METRICS = RunDir.metrics.name
KEPT_INDICES = RunDir.kept_indices.name
class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf: training stops with the step and the loss parts."""


@dataclass
class TrainSummary:
    steps: int
    samples_seen: int
    final_loss: float
    train_time_s: float
    resumed_from_step: int
    pool_size: int
    earlier_time_s: float  # training seconds spent before a resume (0 for an uninterrupted run)
    rejected_checkpoints: list[str]  # damaged checkpoints skipped on resume, with the reason


def generator(seed: int, stream: str, index: int) -> torch.Generator:
    """An independent random stream per (seed, purpose, index): no two (seed, index) pairs share one."""
    digest = hashlib.blake2b(f"{stream}/{seed}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def steps_per_epoch(pool_size: int, batch_size: int) -> int:
    """Full batches per pass over the pool (the remainder waits for the next epoch's shuffle)."""
    if pool_size < batch_size:
        raise ValueError(f"pool has {pool_size} samples, fewer than one batch of {batch_size}")
    return pool_size // batch_size


@functools.lru_cache(maxsize=2)
def _epoch_order(pool_size: int, seed: int, epoch: int) -> torch.Tensor:
    """The pool's shuffled order in `epoch` (cached: drawn once per epoch, not once per step)."""
    return torch.randperm(pool_size, generator=generator(seed, "order", epoch))


def batch_positions(step: int, pool_size: int, batch_size: int, seed: int) -> torch.Tensor:
    """Pool positions of step `step`: a seeded permutation per epoch, cut into full batches."""
    epoch, offset = divmod(step, steps_per_epoch(pool_size, batch_size))
    return _epoch_order(pool_size, seed, epoch)[offset * batch_size:(offset + 1) * batch_size]


def random_shift(images: torch.Tensor, seed: int, step: int, pad: int = 2) -> torch.Tensor:
    """Translate each uint8 image by up to `pad` pixels (zero fill), seeded by (seed, step)."""
    return apply_shifts(images, draw_shifts(seed, step, len(images), pad), pad)


def draw_shifts(seed: int, step: int, count: int, pad: int = 2) -> torch.Tensor:
    """The (dy, dx) shifts in [0, 2 pad] of the `count` images of step `step`'s batch, seeded by (seed, step)."""
    return torch.randint(0, 2 * pad + 1, (count, 2), generator=generator(seed, "augment", step))


def apply_shifts(images: torch.Tensor, shifts: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Each uint8 image translated by its row of `shifts` (zero fill)."""
    _, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shifts.tolist())])


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's convention: no weight decay on gains, biases, embeddings' scalars and logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def train(built: BuiltModel, method: Method, pool: Any, samples_seen: int, cfg: TrainConfig, seed: int,
          run_dir: Path, reference: Any = None, show_progress: bool = True,
          keep_at: tuple[int, ...] = (), before_write: Callable[[], None] | None = None) -> TrainSummary:
    """Train `built.model` on `pool` with `method` for exactly `samples_seen` samples.

    `reference` is a feature source (harness.run.reference: OnlineReference or CachedReference) when
    the method needs one. A method with a static selection trains on the subset it picks once;
    the kept sample indices are saved in the run directory (and reused on resume). Resumes from
    the newest intact checkpoint in run_dir/checkpoints (a damaged one is set aside, saying so); writes
    metrics.jsonl, checkpoints every `checkpoint_every` steps and `checkpoint_minutes` minutes and at the
    end, and model.pt (open_clip-loadable weights). After each step count in `keep_at` it also keeps a checkpoint
    in run_dir/branch_points, never pruned (the branch points of a wsd ladder's shorter budgets). Rank 0
    calls `before_write` before a step's writes (metrics, checkpoints), which raises to stop a process that
    lost the run (its lease).

    Inside a process group (harness.run.distributed) every rank calls this with the same arguments: each
    encodes its share of the global batch of cfg.batch_size, the loss is the global batch's, and only
    rank 0 writes files.
    """
    world = distributed.current()
    if samples_seen % cfg.batch_size:
        raise ValueError(f"samples_seen {samples_seen} is not a multiple of batch_size {cfg.batch_size}")
    if method.reference is not None and reference is None:
        raise ValueError(f"method {method.name!r} needs a reference model")
    world.check_divides(cfg.batch_size, "batch_size")
    run_dir = Path(run_dir)
    cfg = replace(cfg, device=resolve_device(cfg.device))
    device, model = cfg.device, _prepare(built.model, cfg)
    total = samples_seen // cfg.batch_size
    pool = _static_selection(method, pool, reference, seed, run_dir, cfg.batch_size, world)
    groups = param_groups(model, cfg.weight_decay)
    if method.parameters():
        groups.append({"params": method.parameters(), "weight_decay": 0.0})
    params = [p for group in groups for p in group["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            eps=cfg.adam_eps, fused=True)  # fused kernels exist for CPU and CUDA: 5-8x faster steps here
    start, loss_value, time_before, rejected = _resume(run_dir, model, opt, method, world)
    if world.main:
        io.remove_temporaries(run_dir / BRANCH_POINTS)
    model.train()
    drawn = method.candidates(cfg.batch_size)  # > batch_size: a super-batch the method selects from
    world.check_divides(drawn, f"method {method.name!r}'s super-batch of")
    per_epoch = steps_per_epoch(len(pool), drawn)
    t0 = time.perf_counter() - time_before
    last_checkpoint = time.perf_counter()
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"train {method.name}/{built.name}",
               disable=not (show_progress and world.main), dynamic_ncols=True)
    for step in bar:
        progress = Progress(step=step, epoch=step / per_epoch)
        pos = batch_positions(step, len(pool), drawn, seed)  # the global batch, of which this rank reads its share
        shifts = draw_shifts(seed, step, drawn) if cfg.augment else None
        rows = world.share(torch.arange(drawn))
        images = _images(pool, pos, rows, shifts)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        if method.parameters():  # the method's own group, last: its learning rate is the method's to set
            opt.param_groups[-1]["lr"] = method.parameters_lr(opt.param_groups[0]["lr"])
        ref = world.gather(reference.batch(pool, pos[rows], images)) if method.reference == "batch" else None
        trained = torch.arange(drawn)  # rows of the drawn batch that are trained on
        if drawn != cfg.batch_size:
            with torch.no_grad():
                scored = world.gather(encode(built, images, pool.tokens_at(built.tokenizer, pos[rows]), device,
                                             cfg.precision))
            trained = method.select(scored, ref, pool.indices[pos], progress, generator(seed, "select", step),
                                    cfg.batch_size).cpu()
            ref = None if ref is None else Features(ref.image[trained.to(device)], ref.text[trained.to(device)],
                                                    ref.logit_scale)
            rows = world.share(trained)
            images = images[trained] if world.size == 1 else _images(pool, pos, rows, shifts)
        feats = world.gather(encode(built, images, pool.tokens_at(built.tokenizer, pos[rows]), device, cfg.precision))
        pos = pos[trained]
        out = method.loss(feats, ref, pool.indices[pos], progress)
        loss_value = float(out.loss.detach())
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(f"non-finite loss {loss_value} at step {step}; loss parts: {out.logs}")
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        world.average_gradients(params)
        opt.step()
        method.after_step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        faults.hit("step")
        done = step + 1
        log = done % cfg.log_every == 0 or done == total
        due = (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or \
            (cfg.checkpoint_minutes and time.perf_counter() - last_checkpoint >= 60 * cfg.checkpoint_minutes)
        if world.main and before_write is not None and (log or due or done in keep_at):
            before_write()
        if world.main and log:
            record = {"step": done, "samples_seen": done * cfg.batch_size, "loss": loss_value,
                      "lr": opt.param_groups[0]["lr"], "logit_scale": float(model.logit_scale.detach().exp()),
                      "time_s": time.perf_counter() - t0, **_data_stats(pool, pos), **out.logs}
            io.append_jsonl(run_dir / METRICS, record)
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if world.main and done in keep_at:
            _save_state(run_dir / BRANCH_POINTS, model, opt, method, done, loss_value, time.perf_counter() - t0)
        if world.broadcast(bool(done == total or due)):  # rank 0's clock decides, so all ranks agree
            if world.main:
                _checkpoint(run_dir, model, opt, method, done, loss_value, time.perf_counter() - t0)
            last_checkpoint = time.perf_counter()
    bar.close()
    if world.main:
        if before_write is not None:
            before_write()
        io.torch_save(run_dir / FINAL_MODEL, {"state_dict": model.state_dict()})
    world.barrier()
    return TrainSummary(steps=total, samples_seen=total * cfg.batch_size, final_loss=loss_value,
                        train_time_s=time.perf_counter() - t0, resumed_from_step=start, pool_size=len(pool),
                        earlier_time_s=time_before, rejected_checkpoints=rejected)


def _prepare(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """The model on cfg.device with the speed options that keep its math (compiled in place, so its
    state_dict keys stay open_clip's)."""
    model = model.to(cfg.device)
    if cfg.channels_last:
        model.visual.to(memory_format=torch.channels_last)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.compile:
        model.compile()
    return model


def _images(pool: Any, pos: torch.Tensor, rows: torch.Tensor, shifts: torch.Tensor | None) -> torch.Tensor:
    """The (augmented) images of rows `rows` of a global batch of pool positions `pos` with augmentation `shifts`:
    a rank reads only its share, and each image is shifted as it would be in the whole batch."""
    images = pool.images_at(pos[rows])
    return images if shifts is None else apply_shifts(images, shifts[rows])


def _data_stats(pool: Any, pos: torch.Tensor) -> dict[str, float]:
    """What the trained batch holds, for pools that know it: the share of pairs whose caption is noise."""
    noisy = getattr(pool, "noisy", None)
    return {} if noisy is None else {"noisy_fraction": float(noisy[pos].double().mean())}


def _static_selection(method: Method, pool: Any, reference: Any, seed: int, run_dir: Path, batch_size: int,
                      world: distributed.World) -> Any:
    """The pool the method trains on: all of it, or the subset its `select_pool` keeps (chosen once, on
    rank 0; a resumed run reads the kept indices back instead of scoring the pool again)."""
    kept = world.from_main(lambda: _kept_indices(method, pool, reference, seed, run_dir, batch_size))
    return pool if kept is None else pool.subset(torch.isin(pool.indices, kept))


def _kept_indices(method: Method, pool: Any, reference: Any, seed: int, run_dir: Path,
                  batch_size: int) -> torch.Tensor | None:
    """The stable indices of the samples a static selection keeps (saved in the run directory), or None."""
    path = run_dir / KEPT_INDICES
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    ref = reference.pool(pool) if method.reference == "pool" else None
    positions = method.select_pool(ref, pool.indices, generator(seed, "select-pool", 0))
    if positions is None:
        return None
    keep = torch.zeros(len(pool), dtype=torch.bool)
    keep[positions.cpu()] = True
    if int(keep.sum()) != len(positions):
        raise ValueError(f"method {method.name!r} selected a pool position twice")
    if int(keep.sum()) < batch_size:
        raise ValueError(f"method {method.name!r} keeps {int(keep.sum())} of {len(pool)} pool samples, fewer than one "
                         f"batch of {batch_size}; raise 'keep' or use a larger pool")
    kept = pool.indices[keep].clone()
    io.torch_save(path, kept)
    return kept


def _checkpoint(run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, method: Method, step: int,
                loss: float, train_time_s: float) -> None:
    """Save step `step` in run_dir/checkpoints, then drop all but the newest KEEP_CHECKPOINTS."""
    _save_state(run_dir / CHECKPOINTS, model, opt, method, step, loss, train_time_s)
    for old in checkpoint_files(run_dir)[KEEP_CHECKPOINTS:]:
        old.unlink()


def _save_state(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, method: Method, step: int,
                loss: float, train_time_s: float) -> Path:
    """Save the training state after step `step` in `folder` as step-<step>-<sha256>.pt (the name carries its checksum)."""
    state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "method": method.state_dict(), "loss": loss, "train_time_s": train_time_s}
    return io.save_checksummed(folder, f"step-{step:09d}", lambda p: torch.save(state, p))


def _resume(run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, method: Method,
            world: distributed.World) -> tuple[int, float, float, list[str]]:
    """Load the newest intact checkpoint, if any (rank 0 picks it, every rank loads it), and drop metric
    lines logged after it (and a line cut short by a kill). Returns (step, loss at that step, training
    seconds spent before it, what was rejected and why)."""
    path, rejected = world.from_main(lambda: _intact_checkpoint(run_dir))
    metrics = run_dir / METRICS
    if path is None:
        if world.main:
            metrics.unlink(missing_ok=True)
        return 0, float("nan"), 0.0, rejected
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    method.load_state_dict(state["method"])
    step = int(state["step"])
    if world.main and metrics.exists():
        kept = [line for line in metrics.read_text().splitlines() if _logged_step(line) <= step]
        io.write_text(metrics, "".join(line + "\n" for line in kept))
    return step, float(state["loss"]), float(state["train_time_s"]), rejected


def _intact_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that matches the checksum in its name and that torch reads, and what was
    rejected and why. A damaged one is renamed *.corrupt and the one before it is tried; None when
    none is left (training then restarts at step 0)."""
    rejected = []
    for path in checkpoint_files(run_dir):
        try:
            if not io.verify_checksummed(path):
                raise ValueError("its bytes do not match the checksum in its name")
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return path, rejected
        except Exception as e:  # a damaged file fails in many ways (zip, unpickling, EOF): all mean "do not use"
            rejected.append(f"{path.name}: {type(e).__name__}: {e}")
            path.rename(path.with_name(path.name + ".corrupt"))
            tqdm.write(f"checkpoint {path} is damaged ({rejected[-1]}); set aside as *.corrupt, trying an earlier one", file=sys.stderr)
    if rejected:
        tqdm.write(f"no intact checkpoint left in {run_dir / CHECKPOINTS}: training restarts from step 0", file=sys.stderr)
    return None, rejected


def _logged_step(line: str) -> float:
    """The step of a metrics line; infinity for a line that a kill cut short (so it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
