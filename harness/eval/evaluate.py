"""Zero-shot evaluation through clip_benchmark's metric functions, over the registry of `harness.eval.tasks`.

Tasks are named as in the registry (embedded ones, DataComp's 38 read from disk, or a task set standing for its
tasks). Each task reports one main metric (DataComp convention) and `average` is their unweighted mean.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Sequence

import torch
import tqdm
from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

import harness  # noqa: F401  (torchvision guard before clip_benchmark and open_clip)
from harness.eval.tasks import SUITE_VERSION, TASKS, check_data, resolve
from harness.models import BuiltModel


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """clip_benchmark draws a tqdm bar per call; silence them so training logs stay readable."""
    modules = (zeroshot_classification, zeroshot_retrieval)
    saved = [m.tqdm for m in modules]
    for m in modules:
        m.tqdm = functools.partial(tqdm.tqdm, disable=True)
    try:
        yield
    finally:
        for m, bar in zip(modules, saved):
            m.tqdm = bar


def _run(name: str, built: BuiltModel, device: str, amp: bool, batch_size: int) -> tuple[dict, list[str]]:
    """Task `name`'s result ({"main_metric", "metric", its metrics as floats...}) and the templates it used."""
    task = TASKS[name]
    metrics, templates = task.score(built, device, amp, batch_size)
    metrics = {k: float(v) for k, v in metrics.items()}
    return {"main_metric": metrics[task.metric], "metric": task.metric, **metrics}, templates


def evaluate(built: BuiltModel, tasks: Sequence[str], device: str = "cpu", batch_size: int = 512) -> dict:
    """Zero-shot scores of `built` (which must live on `device`) on `tasks` (registered task or task set names).

    Returns {"tasks": {name: {"main_metric", "metric", clip_benchmark's metrics...}},
    "average": unweighted mean of main metrics, "templates": {name: templates}, "suite_version"}.
    An unknown name raises UnknownTask, and a task whose data is missing MissingData, before any task runs.
    The model runs in eval mode under no_grad; its modules' train/eval modes are restored after.
    """
    names = resolve(tasks)
    check_data(names)
    with evaluating(built, device) as (kind, amp):
        runs = {n: _run(n, built, kind, amp, batch_size) for n in names}
    results = {n: metrics for n, (metrics, _) in runs.items()}
    return {"tasks": results,
            "average": sum(r["main_metric"] for r in results.values()) / len(results),
            "templates": {n: templates for n, (_, templates) in runs.items()},
            "suite_version": SUITE_VERSION}


def class_logits(built: BuiltModel, tasks: Sequence[str], device: str = "cpu",
                 batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Zero-shot class logits [images, classes] of `built` at its own logit scale on each zero-shot
    classification task among `tasks` (others are left out), run as `evaluate` runs them."""
    names = resolve(tasks)
    check_data(names)
    with evaluating(built, device) as (kind, amp):
        logits = {n: TASKS[n].class_logits(built, kind, amp, batch_size) for n in names}
    return {n: x for n, x in logits.items() if x is not None}


@contextlib.contextmanager
def evaluating(built: BuiltModel, device: str) -> Iterator[tuple[str, bool]]:
    """`built` in eval mode under no_grad on `device` (its modules' modes restored after); yields the device
    type and whether to use autocast (on cuda)."""
    target = torch.device(device)
    place = torch.cuda.device(target.index) if target.type == "cuda" and target.index is not None \
        else contextlib.nullcontext()
    modes = [(m, m.training) for m in built.model.modules()]
    built.model.eval()
    try:
        with place, torch.no_grad(), _quiet_progress():
            yield target.type, target.type == "cuda"
    finally:
        for module, mode in modes:
            module.training = mode
