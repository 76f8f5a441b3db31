"""Reference models and their features.

A reference is an earlier run of the sweep, a local checkpoint, or an open_clip pretrained tag;
all three go through open_clip's own loading code (`pretrained=` takes a tag or a file), and the
reference is frozen: eval mode, no gradients.

Training asks a feature source for the reference's features of a batch or of the whole pool:
`OnlineReference` runs the reference model on the batch being trained (augmented as the learner
sees it); `CachedReference` looks them up by sample index in features computed once per pool
sample (harness.run.refcache), so a run using it does no reference forward pass at all. Without
augmentation both give the same features up to float rounding, hence the same trajectory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from harness.models import BuiltModel, build_model, encode
from harness.run.train import FINAL_MODEL
from harness.store import records
from methods import Features

POOL_CHUNK = 256


class ReferenceNotReady(RuntimeError):
    """The reference run has not finished (or failed)."""


def load_reference(ref: dict[str, Any], results: Path, device: str = "cpu") -> BuiltModel:
    """Build and freeze the reference model that `ref` (a spec's 'reference' entry) names."""
    if ref["kind"] == "run":
        state = records.state(results, ref["run_id"])
        if state != "done":
            raise ReferenceNotReady(f"reference run {ref['run_id']} is {state}")
        source = str(records.run_dir(results, ref["run_id"]) / FINAL_MODEL)
    elif ref["kind"] == "checkpoint":
        source = ref["path"]
    else:
        source = ref["tag"]
    built = build_model(ref["model"], pretrained=source, device=device)
    built.model.eval().requires_grad_(False)
    return built


@torch.no_grad()
def pool_features(built: BuiltModel, pool: Any, device: str, chunk: int = POOL_CHUNK,
                  show_progress: bool = False) -> Features:
    """Features of every pool sample (un-augmented images, their captions), in pool order, in chunks."""
    images, texts, scale = [], [], None
    for start in tqdm(range(0, len(pool), chunk), desc=f"encode pool with {built.name}", disable=not show_progress,
                      dynamic_ncols=True):
        part = torch.arange(start, min(start + chunk, len(pool)))
        feats = encode(built, pool.images_at(part), pool.tokens_at(built.tokenizer, part), device)
        images.append(feats.image)
        texts.append(feats.text)
        scale = feats.logit_scale
    return Features(torch.cat(images), torch.cat(texts), scale)


class OnlineReference:
    """Reference features from a forward pass of the frozen reference model (no gradient)."""

    def __init__(self, built: BuiltModel, device: str) -> None:
        self.built, self.device = built, device
        built.model.to(device).eval()

    def batch(self, pool: Any, pos: torch.Tensor, images: torch.Tensor) -> Features:
        """Features of pool samples `pos`, whose (possibly augmented) images are `images`."""
        with torch.no_grad():
            return encode(self.built, images, pool.tokens_at(self.built.tokenizer, pos), self.device)

    def pool(self, pool: Any) -> Features:
        """Features of every pool sample, un-augmented, in pool order."""
        return pool_features(self.built, pool, self.device)


class CachedReference:
    """Reference features looked up by stable sample index in a precomputed table."""

    def __init__(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, device: str) -> None:
        self.image, self.text = image.to(device), text.to(device)
        self.logit_scale, self.device = logit_scale.to(device), device

    def batch(self, pool: Any, pos: torch.Tensor, images: torch.Tensor) -> Features:
        """Cached features of pool samples `pos` (the images are not looked at)."""
        return self._lookup(pool.indices[pos])

    def pool(self, pool: Any) -> Features:
        """Cached features of every pool sample, in pool order."""
        return self._lookup(pool.indices)

    def _lookup(self, indices: torch.Tensor) -> Features:
        idx = indices.to(self.device)
        return Features(self.image[idx], self.text[idx], self.logit_scale)
