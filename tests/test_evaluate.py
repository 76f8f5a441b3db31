"""Zero-shot evaluation through clip_benchmark: result structure, and oracle models whose scores are known."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from harness.eval import evaluate as ev
from harness.models import BuiltModel, build_model


@pytest.fixture(scope="module")
def built() -> BuiltModel:
    torch.manual_seed(0)
    return build_model("tiny-s")


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
    data, templates = ev.TASKS[task].load(), ev.TASKS[task].templates
    texts = {t.format(c=c): k for k, c in enumerate(data.classnames) for t in templates}
    oracle = Oracle(built, texts, data.images, data.labels.tolist(), len(data.classnames), shift)
    return dataclasses.replace(built, model=oracle)


def _retrieval_oracle(built: BuiltModel, task: str, shift: int = 0) -> BuiltModel:
    data = ev.TASKS[task].load()
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
        assert out["templates"][name] == list(ev.TASKS[name].templates)
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
    fashion, digits = ev.TASKS["fashion_mnist"].load(), ev.TASKS["digits"].load()
    retrieval = ev.TASKS["shapes_retrieval"].load()
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


def test_registered_task_is_evaluated(built, monkeypatch):
    monkeypatch.setattr(ev, "TASKS", dict(ev.TASKS))
    images = torch.randint(0, 256, (12, 3, 20, 20), dtype=torch.uint8)

    @ev.register("tiny_classes", "classification", ("a picture of {c}.",))
    def _tiny() -> ev.ClassificationData:
        return ev.ClassificationData(images, torch.arange(12) % 3, ("red", "green", "blue"))

    result = ev.evaluate(built, ["tiny_classes"])["tasks"]["tiny_classes"]
    assert 0.0 <= result["acc1"] <= 1.0 and math.isnan(result["acc5"])  # fewer than 5 classes
    with pytest.raises(ValueError, match="already registered"):
        ev.register("tiny_classes", "classification", ("{c}",))(_tiny)
