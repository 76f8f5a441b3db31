"""Real-data evaluation tasks, read through clip_benchmark from a local root: DataComp's 38 and the ImageNet set.

Each task's data is one folder under `$CLIPSTEER_EVAL_ROOT` and nothing is ever downloaded. Classification
tasks are the webdataset copies DataComp's `download_evalsets.py` writes (`wds_<key>_test/`, read by
clip_benchmark's `wds/` builder with the classnames and templates that ship with them). Flickr and MSCOCO are
clip_benchmark's webdataset copies of the same Karpathy test splits (`wds_flickr30k/`, `wds_mscoco_captions/`),
and WinoGAViL, which clip_benchmark has no builder for, is its CSV with one image per candidate. Task names,
main metrics and the average follow DataComp's tasklist.yml and evaluate.py. Each task registers in
`harness.eval.tasks`, with the sets "datacomp" (DataComp's 38, a fixed list) and "imagenet".
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
import webdataset as wds
from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
from clip_benchmark.metrics import zeroshot_classification
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch.utils.data import DataLoader

import harness  # noqa: F401  (torchvision guard before clip_benchmark and open_clip)
from harness.eval.tasks import MissingData, Task, own_scale, register, register_set, retrieval_scores
from harness.models import BuiltModel

ROOT_ENV = "CLIPSTEER_EVAL_ROOT"
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # those clip_benchmark's wds loader reads
WINOGAVIL_CSV = "winogavil_dataset.csv"


@dataclass(frozen=True)
class RealTask(Task):
    """A task on data from disk: DataComp's name and tasklist key, its main metric, and where its data lives."""

    name: str
    key: str
    metric: str
    kind: str  # classification | retrieval | winogavil
    dataset: str  # clip_benchmark's dataset name ("" for WinoGAViL)
    folder: str  # under the evaluation root

    def required(self) -> tuple[str, ...]:
        """The paths inside the task's folder that must exist for it to be evaluated."""
        if self.kind == "classification":
            return "test/nshards.txt", "classnames.txt", "zeroshot_classification_templates.txt"
        if self.kind == "retrieval":
            return "test/nshards.txt", "dataset_type.txt"
        return WINOGAVIL_CSV, "images"

    def check_data(self) -> None:
        """MissingData if the evaluation root is unset or a required path of the task's folder is absent."""
        data_folder(self)

    def score(self, built: BuiltModel, device: str, amp: bool, batch_size: int) -> tuple[dict, list[str]]:
        """Zero-shot metrics of `built` on this task (DataComp's, its main metric among them) and the templates used."""
        folder = data_folder(self)
        transform = eval_transform(built)
        if self.kind == "classification":
            return _classification(self, folder, built, transform, device, amp, batch_size)
        if self.kind == "retrieval":
            return _retrieval_metrics(self, folder, built, transform, device, amp, batch_size), []
        return _winogavil(folder, built, transform, device, amp, batch_size), ["A {c}", "An {c}"]

    def class_logits(self, built: BuiltModel, device: str, amp: bool, batch_size: int) -> torch.Tensor | None:
        """Zero-shot class logits of a classification task's test images at `built`'s own logit scale."""
        if self.kind != "classification":
            return None
        logits = _zero_shot(self, data_folder(self), built, eval_transform(built), device, amp, batch_size)[0]
        return own_scale(built, logits)


def _wds(name: str, key: str, metric: str = "acc1") -> RealTask:
    short = key.removeprefix("fairness/")  # DataComp strips it from the dataset and folder names
    return RealTask(name, key, metric, "classification", f"wds/{short}", f"wds_{short.replace('/', '-')}_test")


def _retrieval(name: str, key: str, clip_benchmark_name: str) -> RealTask:
    return RealTask(name, key, "mean_recall@1", "retrieval", f"wds/{clip_benchmark_name}", f"wds_{clip_benchmark_name}")


# DataComp's tasklist.yml, in its order, without FairFace and UTKFace (no main metric, not in the average).
DATACOMP = (
    _wds("Caltech-101", "vtab/caltech101", "mean_per_class_recall"),
    _wds("CIFAR-10", "cifar10"),
    _wds("CIFAR-100", "vtab/cifar100"),
    _wds("CLEVR Counts", "vtab/clevr_count_all"),
    _wds("CLEVR Distance", "vtab/clevr_closest_object_distance"),
    _wds("Country211", "country211"),
    _wds("Describable Textures", "vtab/dtd"),
    _wds("EuroSAT", "vtab/eurosat"),
    _wds("FGVC Aircraft", "fgvc_aircraft", "mean_per_class_recall"),
    _wds("Food-101", "food101"),
    _wds("GTSRB", "gtsrb"),
    _wds("ImageNet 1k", "imagenet1k"),
    _wds("ImageNet Sketch", "imagenet_sketch"),
    _wds("ImageNet v2", "imagenetv2"),
    _wds("ImageNet-A", "imagenet-a"),
    _wds("ImageNet-O", "imagenet-o"),
    _wds("ImageNet-R", "imagenet-r"),
    _wds("KITTI Vehicle Distance", "vtab/kitti_closest_vehicle_distance"),
    _wds("MNIST", "mnist"),
    _wds("ObjectNet", "objectnet"),
    _wds("Oxford Flowers-102", "vtab/flowers", "mean_per_class_recall"),
    _wds("Oxford-IIIT Pet", "vtab/pets", "mean_per_class_recall"),
    _wds("Pascal VOC 2007", "voc2007"),
    _wds("PatchCamelyon", "vtab/pcam"),
    _wds("Rendered SST2", "renderedsst2"),
    _wds("RESISC45", "vtab/resisc45"),
    _wds("Stanford Cars", "cars"),
    _wds("STL-10", "stl10"),
    _wds("SUN397", "sun397"),
    _wds("SVHN", "vtab/svhn"),
    _retrieval("Flickr", "retrieval/flickr_1k_test_image_text_retrieval", "flickr30k"),
    _retrieval("MSCOCO", "retrieval/mscoco_2014_5k_test_image_text_retrieval", "mscoco_captions"),
    RealTask("WinoGAViL", "misc/winogavil", "jaccard_score_10-12", "winogavil", "", "winogavil"),
    _wds("iWildCam", "wilds/iwildcam", "F1-macro_all"),
    _wds("Camelyon17", "wilds/camelyon17"),
    _wds("FMoW", "wilds/fmow", "acc_worst_region"),
    _wds("Dollar Street", "fairness/dollar_street", "acc_top5_wg"),
    _wds("GeoDE", "fairness/geode", "acc_wg"),
)
for _task in DATACOMP:
    register(_task)
register_set("datacomp", tuple(t.name for t in DATACOMP))
# ImageNet-1k and the six distribution shifts DataComp reports beside it.
register_set("imagenet", ("ImageNet 1k", "ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R",
                          "ObjectNet"))


def data_folder(task: RealTask) -> Path:
    """The task's folder under $CLIPSTEER_EVAL_ROOT; MissingData if the root is unset or a required path is absent."""
    root = os.environ.get(ROOT_ENV)
    if not root:
        raise MissingData(task.name, f"task {task.name!r} reads its data from ${ROOT_ENV}/{task.folder}, "
                          f"but ${ROOT_ENV} is not set; set it to the directory holding the evaluation data")
    folder = Path(root) / task.folder
    missing = [p for p in task.required() if not (folder / p).exists()]
    if missing:
        raise MissingData(task.name, f"task {task.name!r} has no data at {folder} (missing {', '.join(missing)}); "
                          f"its folder under ${ROOT_ENV} must be {task.folder}/")
    return folder


def datacomp_average(tasks: Mapping[str, Mapping[str, float]]) -> float:
    """DataComp's "Average": the unweighted mean of its 38 tasks' main metrics (each task's own, per tasklist.yml).

    `tasks` maps task names to metrics, as evaluate()'s "tasks"; other tasks in it are ignored. Every one of the
    38 must be there: a mean over fewer tasks is not DataComp's average."""
    missing = [t.name for t in DATACOMP if t.metric not in tasks.get(t.name, {})]
    if missing:
        raise ValueError(f"DataComp's average needs all {len(DATACOMP)} tasks' main metrics; missing: {', '.join(missing)}")
    return sum(float(tasks[t.name][t.metric]) for t in DATACOMP) / len(DATACOMP)


def eval_transform(built: BuiltModel) -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's inference preprocessing for `built` (resize, centre crop, normalise), applied to PIL images."""
    return open_clip.image_transform(built.image_size, is_train=False, mean=built.mean, std=built.std)


def _build(task: RealTask, folder: Path, transform: Callable, kind: str):
    with warnings.catch_warnings():  # the wds builder leaves WebDataset's shardshuffle unset: in order, no shuffle
        warnings.filterwarnings("ignore", message=r"WebDataset\(shardshuffle=\.\.\.\) is None")
        return build_dataset(task.dataset, root=str(folder), transform=transform, split="test", download=False,
                             task=kind)


def _zero_shot(task: RealTask, folder: Path, built: BuiltModel, transform: Callable, device: str, amp: bool,
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


def _classification(task: RealTask, folder: Path, built: BuiltModel, transform: Callable, device: str, amp: bool,
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


def _retrieval_metrics(task: RealTask, folder: Path, built: BuiltModel, transform: Callable, device: str, amp: bool,
                       batch_size: int) -> dict[str, float]:
    dataset = _build(task, folder, transform, "zeroshot_retrieval")
    loader = DataLoader(dataset.batched(batch_size, collation_fn=image_captions_collate_fn), batch_size=None)
    return retrieval_scores(built, loader, device, amp, [1, 5, 10])


def _winogavil(folder: Path, built: BuiltModel, transform: Callable, device: str, amp: bool,
               batch_size: int) -> dict[str, float]:
    """DataComp's WinoGAViL score: per instance, the cue prompt picks as many candidates as there are associations
    (highest similarity); the instance scores the Jaccard index of picked and true sets."""
    with open(folder / WINOGAVIL_CSV, newline="", encoding="utf-8") as f:
        rows = [(r["cue"], json.loads(r["candidates"]), set(json.loads(r["associations"]))) for r in csv.DictReader(f)]
    per_chunk = max(1, batch_size // max(len(candidates) for _, candidates, _ in rows))
    scores, sizes = [], []
    for start in range(0, len(rows), per_chunk):
        chunk = rows[start:start + per_chunk]
        images = torch.stack([transform(_candidate_image(folder, c)) for _, candidates, _ in chunk for c in candidates])
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


def _candidate_image(folder: Path, candidate: str) -> Image.Image:
    for ext in IMAGE_EXTENSIONS:
        path = folder / "images" / f"{candidate}.{ext}"
        if path.is_file():
            return Image.open(path).convert("RGB")
    raise FileNotFoundError(f"WinoGAViL candidate {candidate!r} has no image {folder / 'images' / candidate}."
                            f"{{{','.join(IMAGE_EXTENSIONS)}}}")
