"""Zero-shot evaluation through clip_benchmark's metric functions, over a registry of tasks.

A task is a test set plus its zero-shot prompts; `register` adds an in-memory one. Images reach
the model through its own preprocessing (`BuiltModel.preprocess`), from the same uint8 storage
resolution the training pool uses. Each task reports one main metric (DataComp convention:
top-1 accuracy, or the mean of image and text recall@1) and `average` is their unweighted mean.
Beside them, the real-data tasks of `harness.eval.tasksets` (DataComp's 38, read from disk) are
evaluated by name too, each with DataComp's main metric.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import tqdm
from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

import harness  # noqa: F401  (torchvision guard before clip_benchmark and open_clip)
from harness.data.pool import PoolConfig, as_image_tensor
from harness.data.sources import SHAPE_CLASSES, SHAPE_COLOURS, SHAPE_SIZES, digits, fashion_mnist, shapes_grid
from harness.eval.tasksets import REAL_TASKS, check_data, score_task
from harness.models import BuiltModel

SUITE_VERSION = "clipsteer-eval-1"  # bump when a task's data or prompts change
IMAGE_SIZE = PoolConfig.image_size  # uint8 storage resolution, as in the training pool
KINDS = ("classification", "retrieval")


@dataclass(frozen=True)
class ClassificationData:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: torch.Tensor  # int64 [N]
    classnames: tuple[str, ...]


@dataclass(frozen=True)
class RetrievalData:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    captions: tuple[tuple[str, ...], ...]  # the captions matching each image


@dataclass(frozen=True)
class Task:
    """A named test set, how it is scored and its prompts (classification: templates with {c})."""

    name: str
    kind: str
    load: Callable[[], ClassificationData | RetrievalData]
    templates: tuple[str, ...]

    def prompts(self) -> list[str]:
        """Every text this task shows a model."""
        data = self.load()
        if isinstance(data, ClassificationData):
            return [t.format(c=c) for c in data.classnames for t in self.templates]
        return [caption for captions in data.captions for caption in captions]


TASKS: dict[str, Task] = {}


def register(name: str, kind: str, templates: tuple[str, ...]) -> Callable:
    """Decorator: register the decorated loader (called once, then cached) as task `name`."""
    if kind not in KINDS:
        raise ValueError(f"task kind must be one of {KINDS}, got {kind!r}")

    def wrap(load: Callable[[], ClassificationData | RetrievalData]) -> Callable:
        if name in TASKS or name in REAL_TASKS:
            raise ValueError(f"task {name!r} is already registered")
        TASKS[name] = Task(name, kind, functools.lru_cache(maxsize=1)(load), tuple(templates))
        return load
    return wrap


@register("fashion_mnist", "classification", (
    "a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.",
    "a low contrast photo of a {c}.", "a good photo of a {c}.", "a bad photo of a {c}.", "a photo of the {c}."))
def _fashion_mnist() -> ClassificationData:
    test = fashion_mnist()[1]
    return ClassificationData(as_image_tensor(test.images, IMAGE_SIZE), torch.from_numpy(test.labels.copy()),
                              test.classnames)


@register("digits", "classification", (
    'a photo of the number: "{c}".', "a photo of the number {c}.",
    "a black and white photo of the number {c}.", "a blurry photo of the number {c}."))
def _digits() -> ClassificationData:
    test = digits()[1]
    return ClassificationData(as_image_tensor(test.images, IMAGE_SIZE), torch.from_numpy(test.labels.copy()),
                              test.classnames)


@register("shapes_retrieval", "retrieval", (
    "a photo of a {size} {colour} {shape}.", "a rendering of a {size} {colour} {shape}."))
def _shapes_retrieval() -> RetrievalData:
    grid = shapes_grid()
    colours = list(SHAPE_COLOURS)
    templates = TASKS["shapes_retrieval"].templates
    captions = tuple(
        tuple(t.format(size=SHAPE_SIZES[size], colour=colours[colour], shape=SHAPE_CLASSES[shape]) for t in templates)
        for shape, colour, size in zip(grid.labels.tolist(), grid.attributes["colour"].tolist(),
                                       grid.attributes["size"].tolist()))
    return RetrievalData(as_image_tensor(grid.images, IMAGE_SIZE), captions)


class _Batches(Dataset):
    """Indexed by a list of rows: the model-preprocessed images and the targets of those rows."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor | tuple, preprocess: Callable,
                 classes: tuple[str, ...] = ()) -> None:
        self.images, self.targets, self.preprocess, self.classes = images, targets, preprocess, list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor | list[list[str]]]:
        targets = (self.targets[rows] if isinstance(self.targets, torch.Tensor)
                   else [list(self.targets[r]) for r in rows])
        return self.preprocess(self.images[rows]), targets


def _loader(dataset: _Batches, batch_size: int) -> DataLoader:
    sampler = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
    return DataLoader(dataset, batch_size=None, sampler=sampler, collate_fn=_as_is)


def _as_is(batch: tuple) -> tuple:
    return batch


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


def _run(task: Task, built: BuiltModel, device: str, amp: bool, batch_size: int) -> tuple[dict, list[str]]:
    data = task.load()
    if task.kind == "classification":
        loader = _loader(_Batches(data.images, data.labels, built.preprocess, data.classnames), batch_size)
        metrics = zeroshot_classification.evaluate(built.model, loader, built.tokenizer, list(data.classnames),
                                                   list(task.templates), device, amp=amp)
        main = "acc1"
    else:
        loader = _loader(_Batches(data.images, data.captions, built.preprocess), batch_size)
        metrics = zeroshot_retrieval.evaluate(built.model, loader, built.tokenizer, device, amp=amp,
                                              recall_k_list=[1, 5])
        metrics["mean_recall@1"] = (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
        main = "mean_recall@1"
    metrics = {k: float(v) for k, v in metrics.items()}
    return {"main_metric": metrics[main], "metric": main, **metrics}, list(task.templates)


def evaluate(built: BuiltModel, tasks: list[str], device: str = "cpu", batch_size: int = 512) -> dict:
    """Zero-shot scores of `built` (which must live on `device`) on `tasks` (in-memory or real-data task names).

    Returns {"tasks": {name: {"main_metric", "metric", clip_benchmark's metrics...}},
    "average": unweighted mean of main metrics, "templates": {name: templates}, "suite_version"}.
    A real-data task whose data is missing raises MissingData before any task runs.
    The model runs in eval mode under no_grad; its modules' train/eval modes are restored after.
    """
    names = list(dict.fromkeys(tasks))
    unknown = [n for n in names if n not in TASKS and n not in REAL_TASKS]
    if unknown or not names:
        raise ValueError(f"unknown or no tasks {unknown or names!r}; available: {', '.join([*TASKS, *REAL_TASKS])}")
    check_data([n for n in names if n in REAL_TASKS])
    target = torch.device(device)
    place = torch.cuda.device(target.index) if target.type == "cuda" and target.index is not None \
        else contextlib.nullcontext()
    modes = [(m, m.training) for m in built.model.modules()]
    built.model.eval()
    amp = target.type == "cuda"
    try:
        with place, torch.no_grad(), _quiet_progress():
            runs = {n: _run(TASKS[n], built, target.type, amp, batch_size) if n in TASKS
                    else score_task(REAL_TASKS[n], built, target.type, amp, batch_size) for n in names}
    finally:
        for module, mode in modes:
            module.training = mode
    results = {n: metrics for n, (metrics, _) in runs.items()}
    return {"tasks": results,
            "average": sum(r["main_metric"] for r in results.values()) / len(results),
            "templates": {n: templates for n, (_, templates) in runs.items()},
            "suite_version": SUITE_VERSION}
