"""How a model scores on an evaluation task: clip_benchmark's metric functions over the embedded tasks'
in-memory data (`harness.eval.embedded`: name, kind, load, templates) and the on-disk tasks' folders
(`harness.eval.tasksets`: kind, dataset, metric, required files).

The registry and the task declarations load no torch; a task imports this module when it is first scored.
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
import webdataset as wds
from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

import harness  # noqa: F401  (torchvision guard before clip_benchmark and open_clip)
from harness.eval.tasks import Task
from harness.models import BuiltModel

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # those clip_benchmark's wds loader reads


def own_scale(built: BuiltModel, logits: torch.Tensor) -> torch.Tensor:
    """clip_benchmark's classification logits (100 x cosine similarity) at the model's own logit scale instead."""
    return logits.float().cpu() / 100 * built.model.logit_scale.exp().float().cpu()


def retrieval_scores(built: BuiltModel, loader: DataLoader, device: str, amp: bool,
                     recall_k: list[int]) -> dict[str, float]:
    """clip_benchmark's zero-shot retrieval recalls at `recall_k` over `loader`, plus the retrieval main metric
    (DataComp's "mean_recall@1": the mean of image and text recall@1)."""
    metrics = zeroshot_retrieval.evaluate(built.model, loader, built.tokenizer, device, amp=amp,
                                          recall_k_list=recall_k)
    metrics["mean_recall@1"] = (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
    return metrics


def embedded_metrics(task: Task, built: BuiltModel, device: str, amp: bool,
                     batch_size: int) -> tuple[dict, list[str]]:
    """clip_benchmark's zero-shot classification or retrieval metrics (recall@1 and @5) of an embedded task,
    and its templates."""
    data = task.load()
    if task.kind == "classification":
        loader = _loader(_Batches(data.images, data.labels, built.preprocess, data.classnames), batch_size)
        metrics = zeroshot_classification.evaluate(built.model, loader, built.tokenizer, list(data.classnames),
                                                   list(task.templates), device, amp=amp)
    else:
        loader = _loader(_Batches(data.images, data.captions, built.preprocess), batch_size)
        metrics = retrieval_scores(built, loader, device, amp, [1, 5])
    return metrics, list(task.templates)


def embedded_logits(task: Task, built: BuiltModel, device: str, amp: bool, batch_size: int) -> torch.Tensor:
    """Zero-shot class logits of an embedded classification task's test images at `built`'s own logit scale."""
    data = task.load()
    classifier = zeroshot_classification.zero_shot_classifier(
        built.model, built.tokenizer, list(data.classnames), list(task.templates), device, amp=amp)
    loader = _loader(_Batches(data.images, data.labels, built.preprocess, data.classnames), batch_size)
    logits, _ = zeroshot_classification.run_classification(built.model, classifier, loader, device, amp=amp)
    return own_scale(built, logits)


def real_metrics(task: Task, folder: Path, built: BuiltModel, device: str, amp: bool,
                 batch_size: int) -> tuple[dict, list[str]]:
    """Zero-shot metrics of `built` on an on-disk task whose data is in `folder` (DataComp's, its main metric
    among them) and the templates used."""
    transform = eval_transform(built)
    if task.kind == "classification":
        return _classification(task, folder, built, transform, device, amp, batch_size)
    if task.kind == "retrieval":
        return _retrieval_metrics(task, folder, built, transform, device, amp, batch_size), []
    return _winogavil(task, folder, built, transform, device, amp, batch_size), ["A {c}", "An {c}"]


def real_logits(task: Task, folder: Path, built: BuiltModel, device: str, amp: bool,
                batch_size: int) -> torch.Tensor:
    """Zero-shot class logits of an on-disk classification task's test images at `built`'s own logit scale."""
    logits = _zero_shot(task, folder, built, eval_transform(built), device, amp, batch_size)[0]
    return own_scale(built, logits)


def eval_transform(built: BuiltModel) -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's inference preprocessing for `built` (resize, centre crop, normalise), applied to PIL images."""
    return open_clip.image_transform(built.image_size, is_train=False, mean=built.mean, std=built.std)


def _build(task: Task, folder: Path, transform: Callable, kind: str):
    with warnings.catch_warnings():  # the wds builder leaves WebDataset's shardshuffle unset: in order, no shuffle
        warnings.filterwarnings("ignore", message=r"WebDataset\(shardshuffle=\.\.\.\) is None")
        return build_dataset(task.dataset, root=str(folder), transform=transform, split="test", download=False,
                             task=kind)


def _zero_shot(task: Task, folder: Path, built: BuiltModel, transform: Callable, device: str, amp: bool,
               batch_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """clip_benchmark's zero-shot logits (100 x cosine) and the targets of the task's test images, with its
    classes and templates."""
    dataset = _build(task, folder, transform, "zeroshot_classification")
    classes, templates = list(dataset.classes), list(dataset.templates)
    classifier = zeroshot_classification.zero_shot_classifier(built.model, built.tokenizer, classes, templates,
                                                              device, amp=amp)
    logits, target = zeroshot_classification.run_classification(
        built.model, classifier, DataLoader(dataset.batched(batch_size), batch_size=None), device, amp=amp)
    return logits, target, classes, templates


def _classification(task: Task, folder: Path, built: BuiltModel, transform: Callable, device: str, amp: bool,
                    batch_size: int) -> tuple[dict[str, float], list[str]]:
    logits, target, classes, templates = _zero_shot(task, folder, built, transform, device, amp, batch_size)
    metrics = classification_metrics(logits, target, len(classes))
    if task.metric == "F1-macro_all":
        metrics[task.metric] = f1_score(target, logits.argmax(1), average="macro", labels=np.unique(target))
    elif task.metric in ("acc_worst_region", "acc_wg"):
        metrics[task.metric] = worst_group(logits.argmax(1) == target, _groups(folder, target))
    elif task.metric == "acc_top5_wg":
        top5 = (logits.topk(5, dim=1).indices == target[:, None]).any(1)
        metrics[task.metric] = worst_group(top5, _groups(folder, target))
    return metrics, templates


def classification_metrics(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Top-1 and top-5 accuracy (NaN under 5 classes) and mean per-class recall, as clip_benchmark and DataComp."""
    if num_classes >= 5:
        acc1, acc5 = zeroshot_classification.accuracy(logits, target, topk=(1, 5))
    else:
        (acc1,), acc5 = zeroshot_classification.accuracy(logits, target, topk=(1,)), math.nan
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": balanced_accuracy_score(target, logits.argmax(1))}


def worst_group(correct: torch.Tensor, groups: torch.Tensor) -> float:
    """The lowest accuracy over the groups that have samples (WILDS's worst-group metric, as DataComp uses it)."""
    correct = correct.double()
    return min(float(correct[groups == g].mean()) for g in torch.unique(groups))


def _groups(folder: Path, target: torch.Tensor) -> torch.Tensor:
    """Each sample's group (column 0 of its `npy` metadata: region or income group), read from the same shards in
    the same order as the images; the labels read alongside must match the evaluated ones."""
    shards = int((folder / "test" / "nshards.txt").read_text().strip())
    pattern = str(folder / "test" / f"{{0..{shards - 1}}}.tar")
    samples = wds.WebDataset(pattern, shardshuffle=False, nodesplitter=None).decode(only=["cls", "npy"])
    labels, groups = zip(*((int(label), int(np.asarray(meta).reshape(-1)[0]))
                           for label, meta in samples.to_tuple("cls", "npy")))
    if not torch.equal(torch.tensor(labels), target):
        raise ValueError(f"the metadata of {folder} does not line up with its images (labels differ)")
    return torch.tensor(groups)


def _retrieval_metrics(task: Task, folder: Path, built: BuiltModel, transform: Callable, device: str, amp: bool,
                       batch_size: int) -> dict[str, float]:
    dataset = _build(task, folder, transform, "zeroshot_retrieval")
    loader = DataLoader(dataset.batched(batch_size, collation_fn=image_captions_collate_fn), batch_size=None)
    return retrieval_scores(built, loader, device, amp, [1, 5, 10])


def _winogavil(task: Task, folder: Path, built: BuiltModel, transform: Callable, device: str, amp: bool,
               batch_size: int) -> dict[str, float]:
    """DataComp's WinoGAViL score: per instance, the cue prompt picks as many candidates as there are associations
    (highest similarity); the instance scores the Jaccard index of picked and true sets. The task's required
    files are its CSV and its images folder."""
    table, images_dir = (folder / p for p in task.required())
    with open(table, newline="", encoding="utf-8") as f:
        rows = [(r["cue"], json.loads(r["candidates"]), set(json.loads(r["associations"]))) for r in csv.DictReader(f)]
    per_chunk = max(1, batch_size // max(len(candidates) for _, candidates, _ in rows))
    scores, sizes = [], []
    for start in range(0, len(rows), per_chunk):
        chunk = rows[start:start + per_chunk]
        images = torch.stack([transform(_candidate_image(images_dir, c)) for _, candidates, _ in chunk for c in candidates])
        tokens = built.tokenizer([cue_prompt(cue) for cue, _, _ in chunk])
        with torch.autocast(device, enabled=amp):
            image_features = F.normalize(built.model.encode_image(images.to(device)), dim=-1).float().cpu()
            text_features = F.normalize(built.model.encode_text(tokens.to(device)), dim=-1).float().cpu()
        offset = 0
        for text, (_, candidates, associations) in zip(text_features, chunk):
            similarity = (image_features[offset:offset + len(candidates)] @ text).numpy()
            offset += len(candidates)
            scores.append(jaccard_of_top(similarity, np.isin(candidates, list(associations))))
            sizes.append(len(candidates))
    return winogavil_metrics(np.array(scores), np.array(sizes))


def cue_prompt(cue: str) -> str:
    """DataComp's WinoGAViL prompt: the lower-cased cue after "A", or "An" before a vowel."""
    cue = cue.lower()
    return f"An {cue}" if cue[:1] in "aeiou" else f"A {cue}"


def jaccard_of_top(similarity: np.ndarray, truth: np.ndarray) -> float:
    """Jaccard index between the true candidates and the top-|truth| candidates by similarity (np.argsort order)."""
    picked = np.isin(np.arange(len(similarity)), np.argsort(similarity)[-int(truth.sum()):])
    return float((picked & truth).sum() / (picked | truth).sum())


def winogavil_metrics(scores: np.ndarray, sizes: np.ndarray) -> dict[str, float]:
    """Mean Jaccard index over all instances and by number of candidates (5, 6, 10, 12, 5-6, 10-12), as DataComp."""
    groups = {"5": sizes == 5, "6": sizes == 6, "10": sizes == 10, "12": sizes == 12, "5-6": sizes <= 6,
              "10-12": sizes >= 10}
    return {"avg_jaccard_score": float(scores.mean()),
            **{f"jaccard_score_{label}": float(scores[chosen].mean()) if chosen.any() else math.nan
               for label, chosen in groups.items()}}


def _candidate_image(images_dir: Path, candidate: str) -> Image.Image:
    for ext in IMAGE_EXTENSIONS:
        path = images_dir / f"{candidate}.{ext}"
        if path.is_file():
            return Image.open(path).convert("RGB")
    raise FileNotFoundError(f"WinoGAViL candidate {candidate!r} has no image {images_dir / candidate}."
                            f"{{{','.join(IMAGE_EXTENSIONS)}}}")


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
