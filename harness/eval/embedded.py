"""Embedded evaluation tasks: test sets the harness builds in memory (Fashion-MNIST, digits, shape retrieval).

Images reach the model through its own preprocessing (`BuiltModel.preprocess`), from the same uint8 storage
resolution the training pool uses. Each task reports one main metric (DataComp convention: top-1 accuracy, or the
mean of image and text recall@1); `register_embedded` adds one to the registry of `harness.eval.tasks`.
Declaring them loads no torch: a task's data is built, and it is scored (`harness.eval.scoring`), on first use.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from harness.data.poolconfig import PoolConfig
from harness.eval.tasks import TASKS, Task, register

if TYPE_CHECKING:
    import torch

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
        from harness.eval import scoring

        return scoring.embedded_metrics(self, built, device, amp, batch_size)

    def class_logits(self, built: BuiltModel, device: str, amp: bool, batch_size: int) -> torch.Tensor | None:
        """Zero-shot class logits of a classification task's test images at `built`'s own logit scale."""
        from harness.eval import scoring

        return scoring.embedded_logits(self, built, device, amp, batch_size) if self.kind == "classification" \
            else None


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
    import torch

    from harness.data.pool import as_image_tensor
    from harness.data.sources import fashion_mnist

    test = fashion_mnist()[1]
    return ClassificationData(as_image_tensor(test.images, IMAGE_SIZE), torch.from_numpy(test.labels.copy()),
                              test.classnames)


@register_embedded("digits", "classification", (
    'a photo of the number: "{c}".', "a photo of the number {c}.",
    "a black and white photo of the number {c}.", "a blurry photo of the number {c}."))
def _digits() -> ClassificationData:
    import torch

    from harness.data.pool import as_image_tensor
    from harness.data.sources import digits

    test = digits()[1]
    return ClassificationData(as_image_tensor(test.images, IMAGE_SIZE), torch.from_numpy(test.labels.copy()),
                              test.classnames)


@register_embedded("shapes_retrieval", "retrieval", (
    "a photo of a {size} {colour} {shape}.", "a rendering of a {size} {colour} {shape}."))
def _shapes_retrieval() -> RetrievalData:
    from harness.data.pool import as_image_tensor
    from harness.data.sources import SHAPE_CLASSES, SHAPE_COLOURS, SHAPE_SIZES, shapes_grid

    grid = shapes_grid()
    colours = list(SHAPE_COLOURS)
    templates = TASKS["shapes_retrieval"].templates
    captions = tuple(
        tuple(t.format(size=SHAPE_SIZES[size], colour=colours[colour], shape=SHAPE_CLASSES[shape]) for t in templates)
        for shape, colour, size in zip(grid.labels.tolist(), grid.attributes["colour"].tolist(),
                                       grid.attributes["size"].tolist()))
    return RetrievalData(as_image_tensor(grid.images, IMAGE_SIZE), captions)
