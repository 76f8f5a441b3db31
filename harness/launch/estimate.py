"""Dry-run estimates: the GPU-hours a grid's runs would take, from their compute and a stated throughput.

FLOPs of a run, from harness.run.compute's forward GFLOPs: trained samples count 3x their forward FLOPs
(forward and backward, the backward pass costing about twice the forward), every other pass 1x (the
learner's no-gradient scoring of super-batches, the reference on the fly, the filter's pool scoring);
a reference-feature cache counts its one forward pass over the pool, once. Evaluation, data loading
and checkpointing are not counted. GPU time = FLOPs / (peak FLOP/s x MFU). The defaults are an H100's
dense bf16 peak at 40% MFU; the DRRho paper's ViT-B/16 run (1.28B samples with an online ViT-B/32
reference, "2 days on 8 H100") works out at about 13% end to end, so state your own with --mfu.

For the local and debug executors (no GPU asked for) the estimate is wall time in minutes instead: the same
forward-equivalent FLOPs at the training rate measured on a CPU (CPU_THROUGHPUT: samples/s of a clip step per
preset and batch, from benchmarks/scaling.py, with the machine that measured it), the run's own preset at the
nearest measured batch size, or the measured preset closest in GFLOPs per pair.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness import io
from harness.data.poolconfig import embedded_pool_size
from harness.errors import ConfigError
from harness.grid.config import ExecutorConfig, pool_config
from harness.grid.runspec import CacheUnit, RunSpec
from harness.profiles import model_profile
from harness.run.compute import run_compute
from methods import get_method

if TYPE_CHECKING:
    from harness.data.shardset import ShardSet

TRAIN_FACTOR = 3.0  # forward + backward of a trained sample, in forwards
H100_BF16_TFLOPS = 989.0  # H100 SXM, dense bf16 (no sparsity)
DEFAULT_MFU = 0.4
CPU_THROUGHPUT = Path(__file__).with_name("cpu_throughput.json")


@dataclass(frozen=True)
class Throughput:
    """What one GPU delivers: its peak TFLOP/s and the fraction of it training achieves (MFU)."""

    peak_tflops: float = H100_BF16_TFLOPS
    mfu: float = DEFAULT_MFU

    @property
    def flops_per_second(self) -> float:
        return self.peak_tflops * 1e12 * self.mfu

    def describe(self) -> str:
        """The assumption in words, for the dry run's output."""
        gpu = " (H100 SXM, dense bf16)" if self.peak_tflops == H100_BF16_TFLOPS else ""
        return f"{self.peak_tflops:g} TFLOP/s peak per GPU{gpu} at {self.mfu:.0%} MFU"


def throughput(peak_tflops: float | None, mfu: float | None) -> Throughput:
    """The throughput the command line states (defaults where a flag is not given); ConfigError naming the flag."""
    peak = H100_BF16_TFLOPS if peak_tflops is None else peak_tflops
    frac = DEFAULT_MFU if mfu is None else mfu
    if not 0 < peak < math.inf:
        raise ConfigError("--gpu-tflops", "", f"must be a positive number of TFLOP/s, got {peak_tflops}")
    if not 0 < frac <= 1:
        raise ConfigError("--mfu", "", f"must be a fraction in (0, 1], got {mfu}")
    return Throughput(peak, frac)


def gpus_per_run(executor: ExecutorConfig) -> int:
    """GPUs a run's job asks for: a Slurm job's nodes x gpus_per_node; 0 for the local and debug executors."""
    return executor.slurm.nodes * executor.slurm.gpus_per_node if executor.slurm is not None else 0


@dataclass(frozen=True)
class Estimate:
    """The estimate of each unit to launch (run or cache id): forward GFLOPs (C_total for a run: the
    leaderboard's 1x convention) and GPU-hours (training at TRAIN_FACTOR); and the shard sets they read."""

    gflops: dict[str, float]
    gpu_hours: dict[str, float]
    cpu_minutes: dict[str, float]  # local and debug executors only (no GPU): wall time at the measured CPU rate
    shard_sets: dict[str, ShardSet]
    lazy: set[str]  # the shard sets every unit reads lazily (decoding batches from disk)
    runs: int
    caches: int
    gpus: int
    throughput: Throughput

    @property
    def total_gpu_hours(self) -> float:
        return sum(self.gpu_hours.values())

    def cost(self, uid: str) -> str:
        """A unit's estimate in the dry run's listing: minutes on a CPU executor, GPU-hours otherwise."""
        return f"~{self.cpu_minutes[uid]:.3g} min" if self.cpu_minutes else f"~{self.gpu_hours[uid]:.3g} GPU-h"


def estimate(specs: list[RunSpec], caches: list[CacheUnit], executor: ExecutorConfig,
             rate: Throughput) -> Estimate:
    """GFLOPs and GPU-hours of runs `specs` and feature-cache units `caches`, and the shard sets they read. A
    pool's size counts for a filter scoring its pool on the fly and for a cache: a shard set's comes from its
    manifest, an embedded pool's from its config."""
    shard_sets = {spec: _shard_set(spec) for spec in dict.fromkeys(
        u.data["shards"] for u in specs + caches if u.data.get("shards"))}
    lazy = {spec for spec in shard_sets if all(u.data.get("lazy") for u in specs + caches
                                               if u.data.get("shards") == spec)}
    sizes: dict[str, int] = {}

    def pool_size(data: dict[str, Any]) -> int:
        key = io.digest(data)
        if key not in sizes:
            sizes[key] = shard_sets[data["shards"]].count if data.get("shards") else \
                embedded_pool_size(pool_config(data))
        return sizes[key]

    gflops, flops = {}, {}
    for spec in specs:
        gflops[spec.run_id], flops[spec.run_id] = _run_gflops(spec, pool_size)
    for unit in caches:
        gflops[unit.run_id] = flops[unit.run_id] = model_profile(unit.reference.model)["gflops"] * pool_size(unit.data)
    hours = {uid: 1e9 * f / rate.flops_per_second / 3600 for uid, f in flops.items()}
    units = {unit.run_id: unit for unit in specs + caches}
    minutes = {} if gpus_per_run(executor) else {
        uid: f / cpu_gflops_per_s(_model(units[uid]), _batch(units[uid])) / 60 for uid, f in flops.items()}
    return Estimate(gflops, hours, minutes, shard_sets, lazy, len(specs), len(caches), gpus_per_run(executor), rate)


def _shard_set(spec: str) -> ShardSet:
    """The shard set of `spec` (its manifest read; harness.data.shardset loads torch: only a grid with shards)."""
    from harness.data.shardset import shard_set

    return shard_set(spec)


def _model(unit: RunSpec | CacheUnit) -> str:
    return unit.reference.model if isinstance(unit, CacheUnit) else unit.model


def _batch(unit: RunSpec | CacheUnit) -> int:
    return unit.train.batch_size if isinstance(unit, RunSpec) else 256  # a cache encodes in large chunks


def cpu_gflops_per_s(model: str, batch: int) -> float:
    """Forward-equivalent GFLOP/s of CPU training measured for `model` (or the measured preset closest to it in
    GFLOPs per pair) at the measured batch size nearest `batch` (in ratio): samples/s x TRAIN_FACTOR x GFLOPs."""
    table = json.loads(CPU_THROUGHPUT.read_text(encoding="utf-8"))
    gflops = table["gflops_per_pair"]
    own = model_profile(model)["gflops"] if model not in gflops else gflops[model]
    measured = model if model in gflops else min(gflops, key=lambda m: abs(math.log(gflops[m] / own)))
    rates = table["samples_per_s"][measured]
    nearest = min(rates, key=lambda b: abs(math.log(int(b) / batch)))
    return rates[nearest] * TRAIN_FACTOR * gflops[measured]


def cpu_machine() -> str:
    """The machine CPU_THROUGHPUT was measured on, in words."""
    m = json.loads(CPU_THROUGHPUT.read_text(encoding="utf-8"))
    return (f"{m['machine']['cpu_model']}, {m['machine']['cpu_count']} cores, {m['machine']['torch_threads_used']} "
            f"torch thread, torch {m['machine']['torch']}, {m['date'][:10]}")


def _run_gflops(spec: RunSpec, pool_size: Callable[[dict[str, Any]], int]) -> tuple[float, float]:
    """A run's C_total (forward GFLOPs) and its cost in forward-equivalent GFLOPs (trained samples x3)."""
    method = get_method(spec.method.name).for_accounting(spec.method.params)
    ref = spec.reference
    scores_pool = method.reference == "pool" and ref is not None and ref.features == "online"
    parts = run_compute(spec, method, pool_size(spec.data) if scores_pool else 0)
    forward = parts["learner_scoring"] + parts["reference_forward"] + parts["pool_scoring"]
    return parts["c_paper"] + forward, TRAIN_FACTOR * parts["c_paper"] + forward


def summary(est: Estimate, executor: ExecutorConfig) -> list[str]:
    """The dry run's closing lines: total GPU-hours, resources per run, the memory a shard set's pool takes (read
    whole, as harness.data.shards.read_pool does), wall-clock per run, and the assumptions."""
    caches = f" and {est.caches} feature cache(s)" if est.caches else ""
    total = est.total_gpu_hours
    if est.cpu_minutes:
        minutes = sum(est.cpu_minutes.values())
        lines = [f"estimate: about {minutes / executor.max_parallel:,.1f} min of wall time for the {est.runs} run(s)"
                 f"{caches} to launch ({minutes:,.1f} min of training, {executor.max_parallel} at a time; a stage "
                 "that reads a reference waits for it)"]
    else:
        lines = [f"estimate: {f'{total:,.1f}' if total >= 10 else f'{total:.3g}'} GPU-hours for the {est.runs} "
                 f"run(s){caches} to launch"]
    if executor.slurm is not None:
        s = executor.slurm
        memory = f", {s.mem_gb:g} GB" if s.mem_gb is not None else ""
        cpus = f", {s.cpus_per_task} CPUs per task" if s.cpus_per_task is not None else ""
        lines.append(f"  resources per run: one Slurm array task of {s.nodes} node(s) x {s.gpus_per_node} GPU(s) = "
                     f"{est.gpus} GPU(s), {s.tasks_per_node} task(s) per node{cpus}{memory}, "
                     f"time limit {s.time_min} min; up to {s.array_parallelism} tasks of each array at a time")
    else:
        lines.append(f"  resources per run: a {executor.kind} process on this machine, {executor.cpus_per_job} CPU(s), "
                     f"up to {executor.max_parallel} at a time; no GPU asked for, so no GPU-hours")
    mem = executor.slurm.mem_gb if executor.slurm is not None else None
    for spec, found in est.shard_sets.items():
        if found.image_size is None:
            lines.append(f"  data: {spec}: {found.count:,} pairs (image size not in the manifest)")
            continue
        if spec in est.lazy:
            from harness.data.lazy import INDEX_BYTES_PER_SAMPLE

            gb = found.count * INDEX_BYTES_PER_SAMPLE / 1e9
            lines.append(f"  data: {spec}: {found.count:,} pairs at {found.image_size} px, read lazily (each batch "
                         f"decoded from the shards): about {gb:,.1f} GB of shard index per process")
        else:
            gb = found.count * 3 * found.image_size ** 2 / 1e9
            lines.append(f"  data: {spec}: {found.count:,} pairs at {found.image_size} px, {gb:,.1f} GB of images "
                         "held in memory by each process that trains on it (the pool is read whole)")
        if mem is not None and gb * (executor.slurm.tasks_per_node if executor.slurm else 1) > mem:
            lines.append(f"  warning: that, times {executor.slurm.tasks_per_node} task(s) per node, is more than "
                         f"executor.slurm.mem_gb ({mem:g} GB): these runs cannot start"
                         + ("" if spec in est.lazy else "; read the set lazily (data.lazy: true)"))
    if est.gpus and est.gpu_hours:
        shortest, longest = min(est.gpu_hours.values()) / est.gpus, max(est.gpu_hours.values()) / est.gpus
        lines.append(f"  wall-clock per job on its {est.gpus} GPU(s): {shortest:,.1f} h to {longest:,.1f} h")
        slurm = executor.slurm
        requeues = math.ceil(60 * longest / slurm.time_min) - 1
        if requeues > slurm.max_requeues:
            lines.append(f"  warning: the longest run needs about {requeues} requeue(s) at time_min {slurm.time_min}, "
                         f"more than max_requeues {slurm.max_requeues}: raise executor.slurm.time_min or max_requeues")
    if est.cpu_minutes:
        lines.append(f"  assuming the CPU training rate measured per preset and batch size on {cpu_machine()} "
                     f"({CPU_THROUGHPUT.name}; re-measure with `python -m benchmarks --only scaling`); each process "
                     f"uses {executor.cpus_per_job} CPU(s)")
    else:
        lines.append(f"  assuming {est.throughput.describe()} (--gpu-tflops, --mfu)")
    lines.append(f"  trained samples count {TRAIN_FACTOR:g}x their forward FLOPs (forward and backward), reference, "
                 "scoring and cache passes 1x; evaluation and data loading are not counted")
    return lines
