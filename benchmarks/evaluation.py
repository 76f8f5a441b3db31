"""Evaluation: wall time of evaluate() on the demo's task suite against one training epoch of tiny-s over
the demo pool, and how many times the text encoder runs per task."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.fixtures import demo_grid, demo_pool, demo_train, fresh_model, scratch
from benchmarks.timing import GroupResult, Result, Settings, interleave, ratio, seconds
from harness.eval.evaluate import evaluate
from harness.eval.tasks import TASKS
from harness.models import BuiltModel
from harness.run.train import steps_per_epoch, train
from methods import get_method


def epoch_seconds() -> float:
    """Wall seconds of harness.run.train() for one epoch of clip on tiny-s over the demo pool (demo settings)."""
    pool, cfg = demo_pool(), demo_train()
    built, method = fresh_model("tiny-s"), get_method("clip")({}, num_indices=pool.num_indices)
    with scratch() as run_dir:
        return seconds(lambda: train(built, method, pool, steps_per_epoch(len(pool), cfg.batch_size) * cfg.batch_size,
                                     cfg, 0, Path(run_dir), show_progress=False))


def text_encoder_use(built: BuiltModel, task: str) -> dict[str, Any]:
    """evaluate() on one task with model.encode_text wrapped: its calls, rows encoded and the task's prompts."""
    rows: list[int] = []
    original = built.model.encode_text

    def counted(text, *args, **kwargs):
        rows.append(len(text))
        return original(text, *args, **kwargs)

    built.model.encode_text = counted
    try:
        start = time.perf_counter()
        evaluate(built, [task])
        elapsed = time.perf_counter() - start
    finally:
        del built.model.encode_text
    prompts = len(TASKS[task].prompts())
    return {"encode_text_calls": len(rows), "rows_encoded": sum(rows), "prompts": prompts,
            "each_prompt_encoded_once": sum(rows) == prompts, "seconds": elapsed}


def run(settings: Settings, out: Path) -> GroupResult:
    """A warm-up evaluate() (it loads the task data), then evaluate and a training epoch, interleaved."""
    tasks = list(demo_grid().eval_tasks)
    built = fresh_model("tiny-s")
    first = seconds(lambda: evaluate(built, tasks))
    rounds = 1 if settings.quick else 3
    t = interleave({"evaluate": lambda: seconds(lambda: evaluate(built, tasks)), "epoch": epoch_seconds},
                   rounds, warmup_rounds=0)
    use = {task: text_encoder_use(built, task) for task in tasks}
    suite = ", ".join(tasks)
    result = GroupResult(measurements=[
        Result(f"evaluate() on the demo suite ({suite}), tiny-s", "s", t["evaluate"]),
        Result("one training epoch, clip tiny-s over the demo pool (harness.run.train, demo settings)", "s", t["epoch"]),
        Result("first evaluate() call in a process (includes loading the task data)", "s", [first]),
        *[Result(f"evaluate() on {task} alone, tiny-s", "s", [u["seconds"]]) for task, u in use.items()],
    ])
    result.ratios = [ratio("evaluate() / one training epoch (tiny-s, demo pool)", ("evaluate", t["evaluate"]),
                           ("epoch", t["epoch"]))]
    result.facts["text_encoder_per_task"] = {task: {k: v for k, v in u.items() if k != "seconds"}
                                            for task, u in use.items()}
    result.notes.append(
        f"Evaluation: {rounds} interleaved round(s) of evaluate() and one epoch ({len(demo_pool()):,} pairs, "
        "log_every 10), after one warm-up evaluate(). Text-encoder use is counted by wrapping model.encode_text "
        "during one evaluate() per task: a classification task encodes its prompts in one call per class "
        "(clip_benchmark's zero_shot_classifier), a retrieval task its captions with each image batch.")
    return result
