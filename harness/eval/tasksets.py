"""Real-data evaluation tasks, read through clip_benchmark from a local root: DataComp's 38 and the ImageNet set.

Each task's data is one folder under `$CLIPSTEER_EVAL_ROOT` and nothing is ever downloaded. Classification
tasks are the webdataset copies DataComp's `download_evalsets.py` writes (`wds_<key>_test/`, read by
clip_benchmark's `wds/` builder with the classnames and templates that ship with them). Flickr and MSCOCO are
clip_benchmark's webdataset copies of the same Karpathy test splits (`wds_flickr30k/`, `wds_mscoco_captions/`),
and WinoGAViL, which clip_benchmark has no builder for, is its CSV with one image per candidate. Task names,
main metrics and the average follow DataComp's tasklist.yml and evaluate.py. Each task registers in
`harness.eval.tasks`, with the sets "datacomp" (DataComp's 38, a fixed list) and "imagenet". Declaring them
loads no torch; they are scored by `harness.eval.scoring`, imported on first use.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from harness.eval.tasks import MissingData, Task, register, register_set

if TYPE_CHECKING:
    import torch

    from harness.models import BuiltModel

ROOT_ENV = "CLIPSTEER_EVAL_ROOT"
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
        from harness.eval import scoring

        return scoring.real_metrics(self, data_folder(self), built, device, amp, batch_size)

    def class_logits(self, built: BuiltModel, device: str, amp: bool, batch_size: int) -> torch.Tensor | None:
        """Zero-shot class logits of a classification task's test images at `built`'s own logit scale."""
        from harness.eval import scoring

        return scoring.real_logits(self, data_folder(self), built, device, amp, batch_size) \
            if self.kind == "classification" else None


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
