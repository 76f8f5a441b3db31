"""Scaling with size: clip step time (bare loop) against model preset and batch size, a table and step_time.png."""
from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.fixtures import BareClip, demo_pool, demo_train, fresh_model
from benchmarks.timing import GroupResult, Result, Settings, interleave
from harness.presets import preset_names
from harness.profiles import model_profile

BATCHES = (32, 64, 128, 256)
BASE_BATCH = 128
STEP_LIMIT_S = 2.0
STEPS_PER_ROUND = 2


def plan(probe_s: float) -> tuple[list[str], dict[str, float]]:
    """Presets whose step at BASE_BATCH is estimated under STEP_LIMIT_S (tiny-s's measured seconds scaled by
    forward GFLOPs per pair), and the estimates of those left out."""
    base = model_profile("tiny-s")["gflops"]
    estimate = {name: probe_s * model_profile(name)["gflops"] / base for name in preset_names()}
    ordered = sorted(estimate, key=estimate.get)  # smallest first
    return [n for n in ordered if estimate[n] < STEP_LIMIT_S], {n: estimate[n] for n in ordered if estimate[n] >= STEP_LIMIT_S}


def run(settings: Settings, out: Path) -> GroupResult:
    """Interleave STEPS_PER_ROUND steps of every (preset, batch) per round; plot the medians."""
    pool, cfg = demo_pool(), demo_train()
    probe = BareClip(fresh_model("tiny-s"), pool, BASE_BATCH, cfg).median_step(5, 2)
    presets, skipped = plan(probe)
    loops = {(p, b): BareClip(fresh_model(p), pool, b, cfg) for p in presets for b in BATCHES}
    t = interleave({key: (lambda loop=loop: statistics.median(loop.step() for _ in range(STEPS_PER_ROUND)))
                    for key, loop in loops.items()}, settings.rounds, settings.warmup_rounds)
    result = GroupResult(measurements=[Result(f"clip step, {p}, b{b} (bare loop)", "s", v) for (p, b), v in t.items()])
    result.table = [{"preset": p, "batch": b, "gflops_per_pair": model_profile(p)["gflops"],
                     "step_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v), "max_ms": 1e3 * max(v),
                     "samples_per_s": b / statistics.median(v)} for (p, b), v in t.items()]
    result.facts["scaling_presets"] = presets
    result.facts["scaling_skipped"] = {n: f"estimated {s:,.1f} s per step at b{BASE_BATCH} (limit {STEP_LIMIT_S:g} s)"
                                       for n, s in skipped.items()}
    plot(t, out / "step_time.png")
    result.notes.append(
        f"Scaling: bare clip steps (the loop of the overhead benchmark; harness overhead is that benchmark's ratio), "
        f"{STEPS_PER_ROUND} steps per (preset, batch) per round, median; presets whose step at b{BASE_BATCH} is "
        f"estimated at {STEP_LIMIT_S:g} s or more (tiny-s's measured step scaled by GFLOPs/pair) are skipped.")
    return result


def plot(times: dict[tuple[str, int], list[float]], path: Path) -> None:
    """step_time.png: milliseconds per step against batch size, a line per preset, min-max band over rounds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    rows = pd.DataFrame([{"preset": p, "batch size": b, "ms per step": 1e3 * v}
                         for (p, b), values in times.items() for v in values])
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    sns.lineplot(rows, x="batch size", y="ms per step", hue="preset", marker="o", estimator="median",
                 errorbar=("pi", 100), ax=ax)
    ax.set(xscale="log", yscale="log", xticks=list(BATCHES), xticklabels=[str(b) for b in BATCHES],
           title="clip training step on CPU (1 thread; median, band: min-max)")
    ax.minorticks_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
