"""The GPU check: `python -m benchmarks.gpu [--out DIR] [--batch-size B] [--steps N] [--peak-tflops X] [--dry-run-cpu]`.

On one GPU, ViT-B/32 at 224 px in bf16 trains through harness.run.train() for clip, drrho with a cached and
with an on-the-fly reference (a fresh ViT-B/32) and fastclip, each with torch.compile off and on: steps/s,
samples/s and MFU (the learner's forward FLOPs per pair from harness.profiles.model_profile, x3 for forward and
backward, x the batch, / the median step time / the GPU's dense bf16 peak, looked up from its name in
PEAK_TFLOPS); the drrho/clip step-time ratios; then a 2-step data-parallel drrho run (on-the-fly reference)
over every GPU present on NCCL (one GPU still starts the process group, so the path runs). About 5 minutes on
one H100-class GPU; writes gpu.json and gpu.md under --out. Without CUDA it refuses (exit 2).
`--dry-run-cpu` runs every one of these paths at tiny sizes on the CPU (tiny-s at 32 px, fp32, a gloo group
of 2 processes, one torch thread each) and writes gpu-dry-run-cpu.json/.md: its numbers time nothing worth reading,
and its compile-on runs take the harness's compile path with dynamo disabled (inductor on a small CPU takes minutes
a model). One thread, as in the harness's own CPU runs: on a busy 2-core machine (the test suite's two workers),
torch's default of a thread a core made each tiny step take seconds instead of a tenth of one.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import harness  # noqa: F401  (torchvision guard before open_clip, which benchmarks.fixtures imports)
from benchmarks.fixtures import fresh_model, harness_train, references
from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.profiles import model_profile
from harness.run import distributed
from harness.run.features import OnlineReference
from harness.run.train import TrainConfig, train
from methods import get_method

DEFAULT_OUT = Path("results") / "benchmarks"
# Dense (no sparsity) bf16 tensor-core peak per GPU in TFLOP/s, from NVIDIA's datasheets, by a substring of
# torch.cuda.get_device_name(); the first match wins, so the more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A6000", 155.0), ("A10", 125.0))
CASES = (("clip", None), ("drrho", "cached"), ("drrho", "online"), ("fastclip", None))  # (method, reference)


@dataclass(frozen=True)
class Setting:
    """What one check trains: model, pool, batch per GPU, timed steps (the first `skip` left out), precision."""

    model: str
    image_size: int
    pool_size: int
    batch_size: int
    steps: int
    skip: int
    device: str
    precision: str
    dp_processes: int  # data-parallel processes: every GPU, or 2 gloo processes in the dry run


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named `device_name` (PEAK_TFLOPS), or None when it is not in the table."""
    return next((peak for key, peak in PEAK_TFLOPS if key.lower() in device_name.lower()), None)


def setting(args: argparse.Namespace) -> Setting:
    """The full check on CUDA, or tiny sizes on the CPU with --dry-run-cpu; --batch-size and --steps override."""
    if args.dry_run_cpu:
        base = Setting("tiny-s", 32, 64, 16, 3, 1, "cpu", "fp32", 2)
    else:
        base = Setting("ViT-B-32", 224, 4096, 256, 30, 10, "cuda", "bf16", torch.cuda.device_count())
    return replace(base, batch_size=args.batch_size or base.batch_size, steps=args.steps or base.steps)


def pool_of(s: Setting) -> Any:
    """The shapes pool at the check's resolution (the harness's own data path)."""
    return build_pool(PoolConfig(sources=("shapes",), shapes_count=s.pool_size, image_size=s.image_size))


def train_config(s: Setting, compile: bool, batch_size: int | None = None) -> TrainConfig:
    return TrainConfig(batch_size=batch_size or s.batch_size, device=s.device, precision=s.precision, compile=compile)


def timed_cases(s: Setting, peak: float | None) -> list[dict[str, Any]]:
    """Each case of CASES with compile off and on: median step time over the timed steps, throughput, MFU."""
    pool = pool_of(s)
    sources = references(pool, s.model, s.device)
    flops_per_step = 3 * 1e9 * model_profile(s.model)["gflops"] * s.batch_size
    rows = []
    for compiled in (False, True):
        for method, ref in CASES:
            torch.compiler.reset()
            timing = harness_train(method, pool, s.steps, s.skip, train_config(s, compiled),
                                   getattr(sources, ref) if ref else None, model=s.model)
            rows.append({"method": method, "reference": ref, "compile": compiled, "step_s": timing.step_s,
                         "steps_per_s": 1 / timing.step_s, "samples_per_s": s.batch_size / timing.step_s,
                         "mfu": None if peak is None else flops_per_step / timing.step_s / (peak * 1e12),
                         "loop_s": timing.loop_s, "call_s": timing.call_s})
            print(f"[gpu] {method}{f' ({ref})' if ref else ''} compile={compiled}: "
                  f"{rows[-1]['samples_per_s']:,.0f} samples/s", file=sys.stderr, flush=True)
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """drrho's step time over clip's, for each reference and compile setting."""
    step = {(r["method"], r["reference"], r["compile"]): r["step_s"] for r in rows}
    return [{"name": f"drrho ({ref}) / clip step time, compile {'on' if c else 'off'}",
             "value": step[("drrho", ref, c)] / step[("clip", None, c)]}
            for c in (False, True) for ref in ("cached", "online")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dp_rank(rank: int, s: Setting, port: int, out: str) -> None:
    """One data-parallel process: join the group as a launcher's task would (harness.run.distributed), train
    drrho with an on-the-fly reference for 2 steps of the global batch, check an all_reduce, write what it saw."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(s.dp_processes), LOCAL_RANK=str(rank))
    if s.device == "cpu":
        torch.set_num_threads(1)
    distributed.join(s.device)
    if not dist.is_initialized():  # one process: join leaves it out of any group; start one, to run the backend
        if s.device == "cuda":
            torch.cuda.set_device(0)
        dist.init_process_group("nccl" if s.device == "cuda" else "gloo", rank=0, world_size=1)
    try:
        world = distributed.current()
        pool, batch = pool_of(s), s.batch_size * world.size
        built, reference = fresh_model(s.model), OnlineReference(fresh_model(s.model, seed=1), s.device)
        method = get_method("drrho")({}, num_indices=pool.num_indices)
        with tempfile.TemporaryDirectory() as run_dir:
            summary = train(built, method, pool, 2 * batch, train_config(s, False, batch), 0, Path(run_dir),
                            reference=reference, show_progress=False)
        total = torch.tensor([rank + 1.0], device=s.device)
        dist.all_reduce(total)
        record = {"rank": rank, "world_size": world.size, "backend": dist.get_backend(), "steps": summary.steps,
                  "global_batch": batch, "final_loss": summary.final_loss, "all_reduce_sum": total.item(),
                  "device": torch.cuda.get_device_name(rank) if s.device == "cuda" else "cpu"}
        Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        distributed.leave()


def data_parallel(s: Setting) -> dict[str, Any]:
    """The 2-step data-parallel run over s.dp_processes processes; passed when every rank trained both steps,
    agrees on the loss of the global batch and summed 1 + 2 + ... + W in its all_reduce."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_dp_rank, args=(s, _free_port(), out), nprocs=s.dp_processes, start_method="spawn")
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(s.dp_processes)]
    size = s.dp_processes
    passed = all(r["steps"] == 2 and r["world_size"] == size and r["all_reduce_sum"] == size * (size + 1) / 2
                 and r["final_loss"] == ranks[0]["final_loss"] for r in ranks)
    return {"processes": size, "backend": ranks[0]["backend"], "passed": passed, "ranks": ranks}


def markdown(doc: dict[str, Any]) -> str:
    """gpu.md: the setting, the table of runs, the ratios and the data-parallel check."""
    s = doc["setting"]
    peak = f"{doc['peak_tflops']:g} TFLOP/s" if doc["peak_tflops"] else "not in the table (no MFU)"
    lines = ["# GPU check (benchmarks/gpu.py)", ""]
    if doc["dry_run_cpu"]:
        lines += ["**A dry run on the CPU** (`--dry-run-cpu`): every code path at tiny sizes; the numbers time "
                  "nothing worth reading.", ""]
    lines += [f"- command: `{doc['command']}`, {doc['wall_time_s']:.0f} s in all; {doc['date']}",
              f"- device: {doc['device']}" + (f" x {doc['device_count']}" if doc["device_count"] else "")
              + f"; peak {peak}; torch {doc['torch']}",
              f"- {s['model']} at {s['image_size']} px, {s['precision']}, batch {s['batch_size']} per step, "
              f"median over steps {s['skip'] + 1}-{s['steps']} of each run (the first {s['skip']} warm up, and "
              "compile)",
              "- MFU: 3 x the learner's forward FLOPs per pair (harness.profiles.model_profile) x batch / step time / "
              "peak; an on-the-fly reference's forward pass is not counted as model FLOPs", "",
              "| method | reference | compile | ms/step | steps/s | samples/s | MFU |",
              "|---|---|---|---:|---:|---:|---:|"]
    for r in doc["runs"]:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {r['method']} | {r['reference'] or '-'} | {'on' if r['compile'] else 'off'} | "
                     f"{1e3 * r['step_s']:.1f} | {r['steps_per_s']:.2f} | {r['samples_per_s']:,.0f} | {mfu} |")
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {r['name']} | {r['value']:.3f} |" for r in doc["ratios"]]
    dp = doc["data_parallel"]
    lines += ["", f"Data parallel: drrho (on-the-fly reference), 2 steps over {dp['processes']} process(es) on "
              f"{dp['backend']}: **{'passed' if dp['passed'] else 'FAILED'}** (every rank trained both steps, the "
              "ranks agree on the global batch's loss, and their all_reduce summed right).", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run the check (exit 2 without CUDA unless --dry-run-cpu) and write gpu.json and gpu.md."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--batch-size", type=int, default=None, help="batch per step (default 256; dry run 16)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed run (default 30; dry run 3)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak, for a GPU not in the table (or to exercise MFU in a dry run)")
    parser.add_argument("--dry-run-cpu", action="store_true", help="every code path at tiny sizes on the CPU")
    args = parser.parse_args(argv)
    if not args.dry_run_cpu and not torch.cuda.is_available():
        print("benchmarks.gpu: error: no CUDA device here (torch.cuda.is_available() is False); this check needs "
              "one GPU (--dry-run-cpu runs its code paths on the CPU)", file=sys.stderr)
        return 2
    for name in ("batch_size", "steps", "peak_tflops"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            print(f"benchmarks.gpu: error: --{name.replace('_', '-')} must be > 0, got {value}", file=sys.stderr)
            return 2
    s = setting(args)
    if s.steps <= s.skip:
        print(f"benchmarks.gpu: error: --steps must be more than the {s.skip} warm-up step(s), got {s.steps}",
              file=sys.stderr)
        return 2
    if args.dry_run_cpu:
        torch._dynamo.config.disable = True  # model.compile() is called, and compiles nothing
        torch.set_num_threads(1)
    device = "cpu" if args.dry_run_cpu else torch.cuda.get_device_name(0)
    peak = args.peak_tflops or (None if args.dry_run_cpu else peak_tflops(device))
    start = time.perf_counter()
    runs = timed_cases(s, peak)
    doc = {"command": "python -m benchmarks.gpu" + " ".join([""] + argv), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                              time.gmtime()),
           "dry_run_cpu": args.dry_run_cpu, "device": device, "device_count": torch.cuda.device_count(),
           "torch": torch.__version__, "peak_tflops": peak, "setting": asdict(s), "runs": runs, "ratios": ratios(runs),
           "data_parallel": data_parallel(s)}
    doc["wall_time_s"] = time.perf_counter() - start
    stem = "gpu-dry-run-cpu" if args.dry_run_cpu else "gpu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (args.out / f"{stem}.md").write_text(markdown(doc), encoding="utf-8")
    print(f"[gpu] wrote {args.out / stem}.json and .md in {doc['wall_time_s']:.0f} s", file=sys.stderr)
    return 0 if doc["data_parallel"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
