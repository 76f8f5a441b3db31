"""Real-data task sets: DataComp's 38 tasks and the ImageNet set, their expansion in grids, the missing-data errors,
DataComp's average, and evaluation end to end through clip_benchmark's wds builder on data written here."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
import yaml
from PIL import Image
from sklearn.metrics import f1_score

from harness.cli import main
from harness.data.sources import fashion_mnist
from harness.errors import ConfigError
from harness.eval import evaluate as ev
from harness.eval import scoring, tasks
from harness.eval import tasksets as ts
from harness.eval.embedded import EmbeddedTask
from harness.grid.config import parse_grid
from harness.models import BuiltModel, build_model

GRID = {"name": "t", "data": {"sources": ["shapes"], "shapes_count": 512}, "train": {"batch_size": 32},
        "executor": {"kind": "debug"}, "stages": [{"name": "s", "methods": ["clip"], "models": ["tiny-s"],
                                                    "samples_seen": [64]}]}
TEMPLATES = ["a photo of a {c}.", "a blurry photo of a {c}."]
SPECIAL = {"Caltech-101": "mean_per_class_recall", "FGVC Aircraft": "mean_per_class_recall",
           "Oxford Flowers-102": "mean_per_class_recall", "Oxford-IIIT Pet": "mean_per_class_recall",
           "Flickr": "mean_recall@1", "MSCOCO": "mean_recall@1", "WinoGAViL": "jaccard_score_10-12",
           "iWildCam": "F1-macro_all", "FMoW": "acc_worst_region", "Dollar Street": "acc_top5_wg", "GeoDE": "acc_wg"}


def _grid(tasks: list[str]) -> dict:
    return {**GRID, "eval": {"tasks": tasks}}


def _stub_root(root: Path, skip: tuple[str, ...] = ()) -> Path:
    """Every real task's required paths (empty), except those of the tasks in `skip`: enough for the presence check."""
    for task in ts.DATACOMP:
        if task.name in skip:
            continue
        for rel in task.required():
            path = root / task.folder / rel
            if rel == "images":
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    return root


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="png")
    return buf.getvalue()


def _write_wds(folder: Path, samples: list[dict], shards: int, classnames: list[str] | None = None) -> Path:
    """A clip_benchmark wds folder: test/{0..shards-1}.tar, test/nshards.txt, and classnames and templates (or
    dataset_type.txt = retrieval when there are no classnames)."""
    (folder / "test").mkdir(parents=True)
    per = math.ceil(len(samples) / shards)
    for s in range(shards):
        with wds.TarWriter(str(folder / "test" / f"{s}.tar")) as sink:
            for i, sample in enumerate(samples[s * per:(s + 1) * per], start=s * per):
                sink.write({"__key__": f"s{i:05d}", **sample})
    (folder / "test" / "nshards.txt").write_text(f"{shards}\n")
    if classnames is None:
        (folder / "dataset_type.txt").write_text("retrieval\n")
    else:
        (folder / "classnames.txt").write_text("\n".join(classnames) + "\n")
        (folder / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return folder


def _write_winogavil(folder: Path, rows: list[tuple[str, list[str], list[str]]],
                     image: Callable[[str], np.ndarray]) -> Path:
    (folder / "images").mkdir(parents=True)
    for name in {c for _, candidates, _ in rows for c in candidates}:
        Image.fromarray(image(name)).save(folder / "images" / f"{name}.png")
    with open(folder / ts.WINOGAVIL_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["candidates", "cue", "associations", "num_candidates"])
        writer.writerows([json.dumps(candidates), cue, json.dumps(associations), len(candidates)]
                         for cue, candidates, associations in rows)
    return folder


@pytest.fixture(scope="module")
def built() -> BuiltModel:
    torch.manual_seed(0)
    return build_model("tiny-s")


# ---------------------------------------------------------------- the sets

def test_datacomp_has_its_38_tasks_with_their_main_metrics():
    names = [t.name for t in ts.DATACOMP]
    assert len(names) == len(set(names)) == 38 == len(tasks.SETS["datacomp"])
    assert len({t.key for t in ts.DATACOMP}) == len({t.folder for t in ts.DATACOMP}) == 38
    assert {"FairFace", "UTKFace"}.isdisjoint(names)  # no main metric in DataComp: not in its average
    assert {t.name: t.metric for t in ts.DATACOMP if t.metric != "acc1"} == SPECIAL
    assert tasks.TASKS["ImageNet 1k"].folder == "wds_imagenet1k_test"
    assert tasks.TASKS["Caltech-101"].dataset == "wds/vtab/caltech101"
    assert tasks.TASKS["Dollar Street"].folder == "wds_dollar_street_test"  # 'fairness/' dropped, as DataComp
    assert set(tasks.SETS["imagenet"]) <= set(names) and len(tasks.SETS["imagenet"]) == 7
    assert all(isinstance(tasks.TASKS[n], ts.RealTask) for n in names)
    assert {t.name for t in tasks.TASKS.values() if isinstance(t, EmbeddedTask)}.isdisjoint(names)


def test_grid_expands_task_sets(tmp_path, monkeypatch):
    monkeypatch.setenv(ts.ROOT_ENV, str(_stub_root(tmp_path)))
    grid = parse_grid(_grid(["fashion_mnist", "imagenet", "datacomp", "ImageNet 1k"]), "g.yaml")
    assert grid.eval_tasks[:8] == ("fashion_mnist", *tasks.SETS["imagenet"])
    assert len(grid.eval_tasks) == 39 and set(grid.eval_tasks) == {"fashion_mnist", *tasks.SETS["datacomp"]}
    assert parse_grid(_grid(["digits", "fashion_mnist"]), "g.yaml").eval_tasks == ("digits", "fashion_mnist")
    with pytest.raises(ConfigError, match=r"eval.tasks\[0\]: unknown task 'imagenet1k' \(did you mean 'imagenet'\?\)"):
        parse_grid(_grid(["imagenet1k"]), "g.yaml")


# ---------------------------------------------------------------- missing data

def test_missing_data_is_refused_at_validation(tmp_path, monkeypatch):
    root = _stub_root(tmp_path, skip=("ImageNet-R", "WinoGAViL"))
    monkeypatch.setenv(ts.ROOT_ENV, str(root))
    with pytest.raises(ConfigError) as e:
        parse_grid(_grid(["digits", "imagenet"]), "g.yaml")
    assert e.value.key == "eval.tasks[1]"
    assert f"task 'ImageNet-R' has no data at {root / 'wds_imagenet-r_test'}" in str(e.value)
    with pytest.raises(ConfigError, match=r"eval.tasks\[0\]: task 'ImageNet-R' .*; 1 more task\(s\) miss theirs too: "
                                          r"WinoGAViL$"):
        parse_grid(_grid(["datacomp"]), "g.yaml")
    with pytest.raises(ConfigError, match=r"eval.tasks\[2\]: task 'WinoGAViL' has no data at .*winogavil "
                                          r"\(missing winogavil_dataset.csv, images\)"):
        parse_grid(_grid(["MNIST", "Flickr", "WinoGAViL"]), "g.yaml")
    assert parse_grid(_grid(["MNIST"]), "g.yaml").eval_tasks == ("MNIST",)  # only the named tasks are checked
    monkeypatch.delenv(ts.ROOT_ENV)
    with pytest.raises(ConfigError, match=r"eval.tasks\[0\]: task 'MNIST' reads its data from "
                                          r"\$CLIPSTEER_EVAL_ROOT/wds_mnist_test, but \$CLIPSTEER_EVAL_ROOT is not set"):
        parse_grid(_grid(["MNIST"]), "g.yaml")


def test_missing_data_exits_2_and_fails_evaluation_before_it_starts(tmp_path, monkeypatch, capsys, built):
    monkeypatch.setenv(ts.ROOT_ENV, str(tmp_path / "nowhere"))
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_grid(["ImageNet v2"])))
    assert main(["run", str(path), "--dry-run"]) == 2
    assert f"task 'ImageNet v2' has no data at {tmp_path / 'nowhere' / 'wds_imagenetv2_test'}" in capsys.readouterr().err
    monkeypatch.setitem(tasks.TASKS, "digits", dataclasses.replace(tasks.TASKS["digits"], load=None))
    with pytest.raises(tasks.MissingData, match="ImageNet v2"):  # raised before 'digits' would be loaded
        ev.evaluate(built, ["digits", "ImageNet v2"])


# ---------------------------------------------------------------- DataComp's average

def test_datacomp_average_takes_each_tasks_main_metric():
    metrics = {"acc1": 0.5, "mean_per_class_recall": 0.3, "mean_recall@1": 0.2, "jaccard_score_10-12": 0.1,
               "F1-macro_all": 0.4, "acc_worst_region": 0.6, "acc_top5_wg": 0.7, "acc_wg": 0.8}
    scores = {name: {**metrics, "main_metric": 0.0} for name in tasks.SETS["datacomp"]}
    # 27 tasks on acc1, 4 on mean per-class recall, 2 on retrieval recall, one each on the other five metrics
    expected = (27 * 0.5 + 4 * 0.3 + 2 * 0.2 + 0.1 + 0.4 + 0.6 + 0.7 + 0.8) / 38
    assert ts.datacomp_average(scores) == pytest.approx(expected) == pytest.approx(17.7 / 38)
    assert ts.datacomp_average({**scores, "digits": {"acc1": 1.0}}) == pytest.approx(expected)
    with pytest.raises(ValueError, match="missing: GeoDE"):
        ts.datacomp_average({n: m for n, m in scores.items() if n != "GeoDE"})
    with pytest.raises(ValueError, match="missing: FMoW"):
        ts.datacomp_average({**scores, "FMoW": {"acc1": 0.5}})


def test_group_and_winogavil_metrics_by_hand():
    correct = torch.tensor([1, 0, 1, 1, 1, 0])
    assert scoring.worst_group(correct, torch.tensor([0, 0, 3, 3, 7, 7])) == 0.5  # absent groups 1, 2, 4.. are skipped
    assert scoring.worst_group(correct, torch.zeros(6, dtype=torch.long)) == pytest.approx(4 / 6)
    assert scoring.cue_prompt("Apple") == "An apple" and scoring.cue_prompt("moon") == "A moon"
    assert scoring.jaccard_of_top(np.array([0.9, 0.1, 0.8, 0.2, 0.0]), np.array([1, 0, 0, 1, 0], bool)) == pytest.approx(1 / 3)
    m = scoring.winogavil_metrics(np.array([1.0, 0.5, 0.0, 0.25]), np.array([5, 6, 10, 12]))
    assert m == {"avg_jaccard_score": 0.4375, "jaccard_score_5": 1.0, "jaccard_score_6": 0.5, "jaccard_score_10": 0.0,
                 "jaccard_score_12": 0.25, "jaccard_score_5-6": 0.75, "jaccard_score_10-12": 0.125}


# ---------------------------------------------------------------- end to end through clip_benchmark's builder

@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    """MNIST's folder holding 300 Fashion-MNIST test images in 2 shards, Flickr's holding 60 of them with 2
    captions each, and WinoGAViL's with 4 instances over Fashion-MNIST images."""
    root = tmp_path_factory.mktemp("fashion")
    test = fashion_mnist()[1]
    rgb = np.repeat(test.images[:300, :, :, None], 3, axis=3)
    _write_wds(root / "wds_mnist_test", [{"png": _png(im), "cls": int(y)} for im, y in zip(rgb, test.labels)],
               shards=2, classnames=list(test.classnames))
    captions = [f"a photo of a {test.classnames[y]}.\na picture of item {i}." for i, y in enumerate(test.labels[:60])]
    _write_wds(root / "wds_flickr30k", [{"png": _png(im), "txt": c} for im, c in zip(rgb, captions)], shards=1)
    words = [f"item{i}" for i in range(12)]
    rows = [("cat", words[:5], words[:2]), ("orbit", words[:6], words[2:5]), ("dog", words[:10], words[7:9]),
            ("sky", words, words[9:12])]
    _write_winogavil(root / "winogavil", rows, lambda name: rgb[int(name[4:])])
    return root


def test_real_tasks_evaluate_end_to_end(fashion_root, monkeypatch, built):
    monkeypatch.setenv(ts.ROOT_ENV, str(fashion_root))
    out = ev.evaluate(built, ["MNIST", "digits", "Flickr", "WinoGAViL"], batch_size=64)
    mnist, flickr, wino = out["tasks"]["MNIST"], out["tasks"]["Flickr"], out["tasks"]["WinoGAViL"]
    assert mnist["metric"] == "acc1" and mnist["main_metric"] == mnist["acc1"]
    assert {"acc5", "mean_per_class_recall"} <= set(mnist) and 0.0 <= mnist["acc1"] <= mnist["acc5"] <= 1.0
    assert flickr["main_metric"] == pytest.approx((flickr["image_retrieval_recall@1"]
                                                   + flickr["text_retrieval_recall@1"]) / 2)
    assert {"image_retrieval_recall@10", "text_retrieval_recall@5"} <= set(flickr)
    assert wino["metric"] == "jaccard_score_10-12" and 0.0 <= wino["main_metric"] <= 1.0
    assert out["templates"]["MNIST"] == TEMPLATES and out["templates"]["Flickr"] == []
    assert out["average"] == pytest.approx(sum(r["main_metric"] for r in out["tasks"].values()) / 4)
    again = ev.evaluate(built, ["MNIST"], batch_size=37)["tasks"]["MNIST"]  # other batch boundaries, same scores
    assert again["acc1"] == mnist["acc1"] and again["mean_per_class_recall"] == mnist["mean_per_class_recall"]


class Oracle(torch.nn.Module):
    """Reads each image's id from its colour (red + 256 green, constant images) and embeds it as `images[id]`;
    embeds each text as `texts[prompt]`."""

    def __init__(self, built: BuiltModel, texts: dict[str, torch.Tensor], images: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.built, self.images = built, images
        self.texts = {tuple(t.tolist()): texts[p] for p, t in zip(texts, built.tokenizer(list(texts)))}

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.texts[tuple(t.tolist())] for t in tokens])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        mean, std = torch.tensor(self.built.mean), torch.tensor(self.built.std)
        pixel = ((images[:, :, 0, 0] * std + mean) * 255).round().long()
        return torch.stack([self.images[int(r + 256 * g)] for r, g in pixel[:, :2]])


def _colour(i: int) -> np.ndarray:
    return np.broadcast_to(np.array([i % 256, i // 256, 0], np.uint8), (8, 8, 3)).copy()


def test_oracle_scores_are_datacomps_metrics_exactly(tmp_path, monkeypatch, built):
    """48 images of 6 classes in 4 groups (id % 4); ids 2, 6, 10 (group 2) rank their class second, ids 1, 5
    (group 1) rank it last; the rest first."""
    classes, ids = [f"class{k}" for k in range(6)], range(48)
    label = {i: i % 6 for i in ids}
    shift = {i: 1 if i in (2, 6, 10) else 5 if i in (1, 5) else 0 for i in ids}  # rank of the true class - 1
    samples = [{"png": _png(_colour(i)), "cls": label[i], "npy": np.array([i % 4, 0, 0])} for i in ids]
    folder = _write_wds(tmp_path / "wds_mnist_test", samples, shards=3, classnames=classes)
    for task in ("GeoDE", "Dollar Street", "FMoW", "iWildCam"):
        shutil.copytree(folder, tmp_path / tasks.TASKS[task].folder)
    texts = {t.format(c=c): F.one_hot(torch.tensor(k), 6).float() for k, c in enumerate(classes) for t in TEMPLATES}
    # the class at rank r (0 = first) scores 6 - r
    images = {i: torch.tensor([6.0 - (k - label[i] + shift[i]) % 6 for k in range(6)]) for i in ids}
    monkeypatch.setenv(ts.ROOT_ENV, str(tmp_path))
    out = ev.evaluate(dataclasses.replace(built, model=Oracle(built, texts, images)),
                      ["MNIST", "GeoDE", "Dollar Street", "FMoW", "iWildCam"], batch_size=10)["tasks"]
    assert out["MNIST"]["acc1"] == 43 / 48 and out["MNIST"]["acc5"] == 46 / 48
    assert out["MNIST"]["mean_per_class_recall"] == pytest.approx((5 * 7 / 8 + 1) / 6)
    assert out["GeoDE"]["main_metric"] == out["FMoW"]["acc_worst_region"] == 9 / 12  # group 2
    assert out["Dollar Street"]["main_metric"] == 10 / 12  # top-5: group 1
    predicted = [(label[i] - shift[i]) % 6 for i in ids]
    assert out["iWildCam"]["main_metric"] == pytest.approx(f1_score([label[i] for i in ids], predicted, average="macro"))


def test_winogavil_oracle_scores_exactly(tmp_path, monkeypatch, built):
    """Four instances (5, 6, 10 and 12 candidates); the cue points at the true associations, except in the 10-way
    one, where it points at one right and one wrong candidate (Jaccard 1/3)."""
    words = [f"w{i}" for i in range(12)]
    rows = [("alpha", words[:5], words[:2]), ("beta", words[:6], words[3:6]), ("gamma", words[:10], words[7:9]),
            ("delta", words, words[:3])]
    points = {"alpha": words[:2], "beta": words[3:6], "gamma": [words[7], words[0]], "delta": words[:3]}
    _write_winogavil(tmp_path / "winogavil", rows, lambda name: _colour(int(name[1:])))
    texts = {scoring.cue_prompt(cue): sum(F.one_hot(torch.tensor(int(w[1:])), 12).float() for w in points[cue])
             for cue, _, _ in rows}
    images = {i: F.one_hot(torch.tensor(i), 12).float() for i in range(12)}
    monkeypatch.setenv(ts.ROOT_ENV, str(tmp_path))
    oracle = dataclasses.replace(built, model=Oracle(built, texts, images))
    result = ev.evaluate(oracle, ["WinoGAViL"], batch_size=30)["tasks"]["WinoGAViL"]  # 2 instances per chunk
    assert result["main_metric"] == result["jaccard_score_10-12"] == pytest.approx((1 / 3 + 1) / 2)
    assert result["avg_jaccard_score"] == pytest.approx((3 + 1 / 3) / 4) and result["jaccard_score_5-6"] == 1.0
