"""The validation score of a tuning run: retrieval among the pool pairs held out of its training (never a test
task), through clip_benchmark's recall function.

Captions repeat across pairs (templates over classes and attributes), so texts are the distinct captions of the
held-out pairs: an image's positive is its own caption, a caption's positives are every held-out image it
captions. The main metric is the mean of image and text recall@1, as for the retrieval tasks. Noisy pairs stay
in: the validation split is what a practitioner holds, wrong captions included.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

from harness.data.pool import ImageTextPool
from harness.eval.evaluate import evaluating
from harness.models import BuiltModel

TASK = "validation"  # its name in a tuning run's eval.json (no registered task has it)
METRIC = "mean_recall@1"


def validation_scores(built: BuiltModel, held: ImageTextPool, device: str = "cpu",
                      batch_size: int = 512) -> dict:
    """`built`'s retrieval recall@1 among the held-out pairs `held`, as an eval.json of one task (TASK)."""
    with evaluating(built, device) as (kind, amp):
        images = torch.cat([_encode(built.model.encode_image, built.preprocess(held.images[i:i + batch_size]),
                                    kind, amp) for i in range(0, len(held), batch_size)])
        tokens = held.tokenize(built.tokenizer)
        texts = torch.cat([_encode(built.model.encode_text, tokens[i:i + batch_size], kind, amp)
                           for i in range(0, len(tokens), batch_size)])
    scores = texts @ images.T  # [distinct captions, held-out images]
    positive = held.caption_ids[None, :] == torch.arange(len(texts))[:, None]
    image_recall = (batchify(recall_at_k, scores, positive, batch_size, "cpu", k=1) > 0).float().mean().item()
    text_recall = (batchify(recall_at_k, scores.T, positive.T, batch_size, "cpu", k=1) > 0).float().mean().item()
    metrics = {"image_retrieval_recall@1": image_recall, "text_retrieval_recall@1": text_recall,
               METRIC: (image_recall + text_recall) / 2, "pairs": float(len(held)), "captions": float(len(texts))}
    return {"tasks": {TASK: {"main_metric": metrics[METRIC], "metric": METRIC, **metrics}},
            "average": metrics[METRIC], "templates": {TASK: []}, "suite_version": TASK}


def _encode(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: str, amp: bool) -> torch.Tensor:
    with torch.autocast(device, enabled=amp):
        return F.normalize(encode(x.to(device)).float(), dim=-1).cpu()
