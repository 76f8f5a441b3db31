"""Embedded evaluation tasks: test sets the harness builds in memory (Fashion-MNIST, digits, shape retrieval).

Images reach the model through its own preprocessing (`BuiltModel.preprocess`), from the same uint8 storage
resolution the training pool uses. Each task reports one main metric (DataComp convention: top-1 accuracy, or the
mean of image and text recall@1); `register_embedded` adds one to the registry of `harness.eval.tasks`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from clip_benchmark.metrics import zeroshot_classification
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

import harness  # noqa: F401  (torchvision guard before clip_benchmark and open_clip)
from harness.data.pool import PoolConfig, as_image_tensor
from harness.data.sources import SHAPE_CLASSES, SHAPE_COLOURS, SHAPE_SIZES, digits, fashion_mnist, shapes_grid
from harness.eval.tasks import TASKS, Task, own_scale, register, retrieval_scores
from harness.models import BuiltModel

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
class EmbeddedTask(Task):
    """A named in-memory test set, how it is scored and its prompts (classification: templates with {c})."""

    name: str
    kind: str
    load: Callable[[], ClassificationData | RetrievalData]
    templates: tuple[str, ...]

    @property
    def metric(self) -> str:
        """Top-1 accuracy for classification, the mean of image and text recall@1 for retrieval."""
        return "acc1" if self.kind == "classification" else "mean_recall@1"

    def prompts(self) -> list[str]:
        """Every text this task shows a model."""
        data = self.load()
        if isinstance(data, ClassificationData):
            return [t.format(c=c) for c in data.classnames for t in self.templates]
        return [caption for captions in data.captions for caption in captions]

    def score(self, built: BuiltModel, device: str, amp: bool, batch_size: int) -> tuple[dict, list[str]]:
        """clip_benchmark's zero-shot classification or retrieval metrics (recall@1 and @5), and the templates."""
        data = self.load()
        if self.kind == "classification":
            loader = _loader(_Batches(data.images, data.labels, built.preprocess, data.classnames), batch_size)
            metrics = zeroshot_classification.evaluate(built.model, loader, built.tokenizer, list(data.classnames),
                                                       list(self.templates), device, amp=amp)
        else:
            loader = _loader(_Batches(data.images, data.captions, built.preprocess), batch_size)
            metrics = retrieval_scores(built, loader, device, amp, [1, 5])
        return metrics, list(self.templates)

    def class_logits(self, built: BuiltModel, device: str, amp: bool, batch_size: int) -> torch.Tensor | None:
        """Zero-shot class logits of a classification task's test images at `built`'s own logit scale."""
        if self.kind != "classification":
            return None
        data = self.load()
        classifier = zeroshot_classification.zero_shot_classifier(
            built.model, built.tokenizer, list(data.classnames), list(self.templates), device, amp=amp)
        loader = _loader(_Batches(data.images, data.labels, built.preprocess, data.classnames), batch_size)
        logits, _ = zeroshot_classification.run_classification(built.model, classifier, loader, device, amp=amp)
        return own_scale(built, logits)


def register_embedded(name: str, kind: str, templates: tuple[str, ...]) -> Callable:
    """Decorator: register the decorated loader (called once, then cached) as the embedded task `name`."""
    if kind not in KINDS:
        raise ValueError(f"task kind must be one of {KINDS}, got {kind!r}")

    def wrap(load: Callable[[], ClassificationData | RetrievalData]) -> Callable:
        register(EmbeddedTask(name, kind, functools.lru_cache(maxsize=1)(load), tuple(templates)))
        return load
    return wrap


def embedded_tasks() -> list[EmbeddedTask]:
    """The registered embedded tasks, in registration order (their prompts are known without reading any disk)."""
    return [t for t in TASKS.values() if isinstance(t, EmbeddedTask)]


@register_embedded("fashion_mnist", "classification", (
    "a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.",
    "a low contrast photo of a {c}.", "a good photo of a {c}.", "a bad photo of a {c}.", "a photo of the {c}."))
def _fashion_mnist() -> ClassificationData:
    test = fashion_mnist()[1]
    return ClassificationData(as_image_tensor(test.images, IMAGE_SIZE), torch.from_numpy(test.labels.copy()),
                              test.classnames)


@register_embedded("digits", "classification", (
    'a photo of the number: "{c}".', "a photo of the number {c}.",
    "a black and white photo of the number {c}.", "a blurry photo of the number {c}."))
def _digits() -> ClassificationData:
    test = digits()[1]
    return ClassificationData(as_image_tensor(test.images, IMAGE_SIZE), torch.from_numpy(test.labels.copy()),
                              test.classnames)


@register_embedded("shapes_retrieval", "retrieval", (
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
