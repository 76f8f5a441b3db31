"""Harness overhead: harness.run.train() for clip on tiny-s against a bare loop with the same model, optimizer,
loss, batch size and data, per step (augmentation off and on)."""
from __future__ import annotations

from pathlib import Path

from benchmarks.fixtures import bare_train, demo_pool, demo_train, harness_train
from benchmarks.timing import Goal, GroupResult, Result, Settings, interleave, ratio

GOAL = Goal("<=", 1.05)


def run(settings: Settings, out: Path) -> GroupResult:
    """Interleave harness (augment off), bare, harness (augment on) training calls of equal step counts."""
    pool = demo_pool()
    off, on = demo_train(augment=False), demo_train(augment=True)
    timings = interleave({
        "harness": lambda: harness_train("clip", pool, settings.steps, settings.skip, off),
        "bare": lambda: bare_train(pool, settings.steps, settings.skip, off),
        "harness_augment": lambda: harness_train("clip", pool, settings.steps, settings.skip, on),
    }, settings.rounds, settings.warmup_rounds)
    step = {name: [t.step_s for t in runs] for name, runs in timings.items()}
    labels = {"harness": "harness train() step, clip tiny-s b128, augment off",
              "bare": "bare loop step, clip tiny-s b128 (no augmentation)",
              "harness_augment": "harness train() step, clip tiny-s b128, augment on"}
    result = GroupResult(measurements=[Result(labels[n], "s", v) for n, v in step.items()])
    result.measurements += [
        Result("harness train() call, augment off: seconds outside the steps (tokenizing the captions, optimizer, "
               "final checkpoint and model.pt)", "s", [t.call_s - t.loop_s for t in timings["harness"]]),
        Result("bare loop call: seconds outside the steps (tokenizing the captions, optimizer)", "s",
               [t.call_s - t.loop_s for t in timings["bare"]])]
    result.ratios = [
        ratio("harness overhead per step, augment off (harness / bare)", (labels["harness"], step["harness"]),
              ("bare", step["bare"]), GOAL),
        ratio("harness overhead per step, augment on (harness / bare)", (labels["harness_augment"], step["harness_augment"]),
              ("bare", step["bare"]), GOAL, note="includes random_shift; the bare loop does not augment"),
    ]
    result.notes.append(
        f"Per-step times: harness from metrics.jsonl `time_s` differences (log_every=1, run directory on tmpfs, so "
        f"each step includes its own JSON line and fsync), bare loop timed around each step; {settings.steps} steps "
        f"per call, the first {settings.skip} left out, median per call; rounds interleaved harness, bare, "
        "harness+augment. Nothing is subtracted.")
    return result
