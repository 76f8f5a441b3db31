"""Zero-shot evaluation through clip_benchmark: result structure, oracle models whose scores are known, and the
one task registry that the grid validator and the evaluator share."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from harness.eval import evaluate as ev
from harness.eval import tasks
from harness.eval.embedded import ClassificationData, register_embedded
from harness.eval.tasksets import DATACOMP, RealTask
from harness.grid.config import parse_grid
from harness.models import BuiltModel, build_model


@pytest.fixture(scope="module")
def built() -> BuiltModel:
    torch.manual_seed(0)
    return build_model("tiny-s")


@pytest.fixture
def registry():
    """The evaluation registry, restored after the test (which may register tasks and sets)."""
    saved_tasks, saved_sets = dict(tasks.TASKS), dict(tasks.SETS)
    yield tasks
    tasks.TASKS.clear()
    tasks.TASKS.update(saved_tasks)
    tasks.SETS.clear()
    tasks.SETS.update(saved_sets)


def _grid(names: list[str]) -> dict:
    return {"train": {"batch_size": 32}, "eval": {"tasks": names},
            "stages": [{"name": "s", "methods": ["clip"], "models": ["tiny-s"], "samples_seen": [64]}]}


def _register_tiny_classes() -> None:
    images = torch.randint(0, 256, (12, 3, 20, 20), dtype=torch.uint8)

    @register_embedded("tiny_classes", "classification", ("a picture of {c}.",))
    def _tiny() -> ClassificationData:
        return ClassificationData(images, torch.arange(12) % 3, ("red", "green", "blue"))


class Oracle(torch.nn.Module):
    """Embeds a text or an image as the one-hot vector of the item it stands for, looked up by
    its exact tokens or preprocessed pixels; `shift` points every image at the next item instead."""

    def __init__(self, built: BuiltModel, texts: dict[str, int], images: torch.Tensor, items: list[int],
                 size: int, shift: int = 0) -> None:
        super().__init__()
        self.size = size
        self.text_ids = {tuple(row.tolist()): texts[t] for t, row in zip(texts, built.tokenizer(list(texts)))}
        self.image_ids = {img.numpy().tobytes(): (item + shift) % size
                          for img, item in zip(built.preprocess(images), items)}
        assert len(self.image_ids) == len(items), "images must be distinct for the oracle"

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.one_hot(torch.tensor([self.text_ids[tuple(t.tolist())] for t in tokens]), self.size).float()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.one_hot(torch.tensor([self.image_ids[i.numpy().tobytes()] for i in images]), self.size).float()


def _classification_oracle(built: BuiltModel, task: str, shift: int = 0) -> BuiltModel:
    data, templates = tasks.TASKS[task].load(), tasks.TASKS[task].templates
    texts = {t.format(c=c): k for k, c in enumerate(data.classnames) for t in templates}
    oracle = Oracle(built, texts, data.images, data.labels.tolist(), len(data.classnames), shift)
    return dataclasses.replace(built, model=oracle)


def _retrieval_oracle(built: BuiltModel, task: str, shift: int = 0) -> BuiltModel:
    data = tasks.TASKS[task].load()
    texts = {c: i for i, caps in enumerate(data.captions) for c in caps}
    oracle = Oracle(built, texts, data.images, list(range(len(data.images))), len(data.images), shift)
    return dataclasses.replace(built, model=oracle)


def test_results_structure(built, capsys):
    built.model.train()
    built.model.visual.eval()  # a mixed state, to be restored exactly
    before = [m.training for m in built.model.modules()]
    out = ev.evaluate(built, ["fashion_mnist", "digits", "shapes_retrieval"], batch_size=2048)
    assert [m.training for m in built.model.modules()] == before
    assert set(out) == {"tasks", "average", "templates", "suite_version"}
    assert list(out["tasks"]) == ["fashion_mnist", "digits", "shapes_retrieval"]
    for name, result in out["tasks"].items():
        assert result["main_metric"] == result[result["metric"]]
        metrics = {k: v for k, v in result.items() if k != "metric"}
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in metrics.values()), (name, result)
        assert out["templates"][name] == list(tasks.TASKS[name].templates)
    assert out["tasks"]["fashion_mnist"]["metric"] == "acc1"
    assert {"acc1", "acc5", "mean_per_class_recall"} <= set(out["tasks"]["digits"])
    assert {"image_retrieval_recall@1", "text_retrieval_recall@5"} <= set(out["tasks"]["shapes_retrieval"])
    assert math.isclose(out["average"], sum(r["main_metric"] for r in out["tasks"].values()) / 3)
    assert "it/s" not in capsys.readouterr().err  # clip_benchmark's progress bars are silenced


def test_unknown_or_no_task_raises(built):
    with pytest.raises(ValueError, match="available: .*fashion_mnist"):
        ev.evaluate(built, ["digits", "imagenet1k"])
    with pytest.raises(ValueError, match="available"):
        ev.evaluate(built, [])


def test_task_data_is_what_the_suite_promises():
    fashion, digits = tasks.TASKS["fashion_mnist"].load(), tasks.TASKS["digits"].load()
    retrieval = tasks.TASKS["shapes_retrieval"].load()
    assert fashion.images.shape == (10000, 3, 32, 32) and fashion.images.dtype == torch.uint8
    assert len(fashion.classnames) == 10 and len(digits.images) == 360
    all_captions = [c for caps in retrieval.captions for c in caps]
    assert len(retrieval.images) == 60 and len(set(all_captions)) == len(all_captions) == 120


def test_classification_oracle_scores_exactly(built):
    perfect = ev.evaluate(_classification_oracle(built, "digits"), ["digits"])["tasks"]["digits"]
    assert perfect["acc1"] == perfect["mean_per_class_recall"] == 1.0
    wrong = ev.evaluate(_classification_oracle(built, "digits", shift=1), ["digits"])["tasks"]["digits"]
    assert wrong["acc1"] == wrong["mean_per_class_recall"] == 0.0


def test_retrieval_oracle_scores_exactly(built):
    perfect = ev.evaluate(_retrieval_oracle(built, "shapes_retrieval"), ["shapes_retrieval"], batch_size=16)
    result = perfect["tasks"]["shapes_retrieval"]
    assert result["image_retrieval_recall@1"] == result["text_retrieval_recall@1"] == result["main_metric"] == 1.0
    wrong = ev.evaluate(_retrieval_oracle(built, "shapes_retrieval", shift=1), ["shapes_retrieval"])
    assert wrong["tasks"]["shapes_retrieval"]["main_metric"] == 0.0


def test_registered_task_is_evaluated(built, registry):
    _register_tiny_classes()
    result = ev.evaluate(built, ["tiny_classes"])["tasks"]["tiny_classes"]
    assert 0.0 <= result["acc1"] <= 1.0 and math.isnan(result["acc5"])  # fewer than 5 classes
    with pytest.raises(ValueError, match="'tiny_classes' is already registered"):
        _register_tiny_classes()
    with pytest.raises(ValueError, match="'datacomp' is already registered"):  # a set's name is taken too
        register_embedded("datacomp", "retrieval", ("{c}",))(lambda: None)
    with pytest.raises(ValueError, match="unknown: \\['nope'\\]"):
        registry.register_set("mine", ("digits", "nope"))


# ---------------------------------------------------------------- one registry

def test_validator_and_evaluator_accept_the_same_names(built, registry):
    _register_tiny_classes()
    registry.register_set("small", ("tiny_classes", "digits"))
    grid = parse_grid(_grid(["small", "digits"]), "g.yaml")
    assert grid.eval_tasks == ("tiny_classes", "digits")
    out = ev.evaluate(built, ["small", "digits"])
    assert tuple(out["tasks"]) == grid.eval_tasks
    assert tasks.available().startswith("fashion_mnist, shapes_retrieval; task sets: datacomp (38 tasks), "
                                        "imagenet (7 tasks), small (2 tasks)")  # a task in a set is named by it
    registry.TASKS.pop("tiny_classes")
    registry.SETS.pop("small")
    with pytest.raises(ConfigError, match="unknown task 'small'"):
        parse_grid(_grid(["small"]), "g.yaml")
    with pytest.raises(tasks.UnknownTask, match="unknown task 'tiny_classes'"):
        ev.evaluate(built, ["tiny_classes"])


def test_an_unknown_task_gets_the_same_did_you_mean_from_both(built):
    with pytest.raises(tasks.UnknownTask) as direct:
        ev.evaluate(built, ["digits", "shape_retrieval"])
    assert direct.value.index == 1
    assert str(direct.value).startswith("unknown task 'shape_retrieval' (did you mean 'shapes_retrieval'?); "
                                        "available: digits, fashion_mnist, shapes_retrieval; task sets: datacomp "
                                        "(38 tasks), imagenet (7 tasks)")
    with pytest.raises(ConfigError) as validated:
        parse_grid(_grid(["digits", "shape_retrieval"]), "g.yaml")
    assert str(validated.value) == f"g.yaml: eval.tasks[1]: {direct.value}"
    with pytest.raises(ConfigError, match=r"eval.tasks: at least one task is required; available: digits"):
        parse_grid(_grid([]), "g.yaml")


def test_datacomp_is_the_fixed_list_of_its_38_tasks(registry):
    names = tuple(t.name for t in DATACOMP)
    assert names[:3] == ("Caltech-101", "CIFAR-10", "CIFAR-100") and names[-1] == "GeoDE" and len(names) == 38
    registry.register(RealTask("Extra", "extra/set", "acc1", "classification", "wds/extra", "wds_extra_test"))
    assert registry.SETS["datacomp"] == names
    assert tasks.resolve(["datacomp", "Extra"]) == [*names, "Extra"]
    assert tasks.resolve(["Extra", "datacomp"]) == ["Extra", *names]
