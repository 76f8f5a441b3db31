"""The image-text training pool: every sample in memory as tensors, batches are slices.

Images are uint8 [N, 3, S, S]; captions are ids into a list of unique strings, so a model
tokenizes each distinct caption once. Every sample has a stable index (its position in the
full pool of its config) that methods use to keep per-sample state; the clean subset keeps
the indices its samples have in the full pool.

A pool is built from its PoolConfig (harness.data.build): from the embedded sources (Fashion-MNIST,
digits, shapes) or, with `shards`, from a webdataset shard set (harness.data.shardset): a directory,
its manifest.json, or a brace spec of tar paths or URLs beside their manifest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.poolconfig import PoolConfig


@dataclass
class ImageTextPool:
    """In-memory image-caption pairs; all per-sample fields are tensors of length N."""

    images: torch.Tensor          # uint8 [N, 3, S, S]
    caption_ids: torch.Tensor     # int64 [N], into `captions`
    captions: list[str]           # unique caption strings
    labels: torch.Tensor          # int64 [N], global class of the image
    caption_labels: torch.Tensor  # int64 [N], global class the caption describes (differs iff noisy)
    classnames: list[str]         # global class names, sources in config order
    source: torch.Tensor          # int64 [N], into `source_names`
    source_names: tuple[str, ...]
    noisy: torch.Tensor           # bool [N]
    indices: torch.Tensor         # int64 [N], stable sample index in [0, num_indices)
    num_indices: int              # size of the full pool of this config: bound for per-sample state
    config: PoolConfig
    _token_tables: dict[int, tuple[Callable, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.indices)

    def tokenize(self, tokenizer: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Token ids of the unique captions, [len(captions), context_length]: row i is captions[i]."""
        return tokenizer(self.captions)

    def images_at(self, pos: torch.Tensor) -> torch.Tensor:
        """uint8 images of rows `pos` (the access the training loop and references use, as a lazy pool's)."""
        return self.images[pos]

    def tokens_at(self, tokenizer: Callable[[list[str]], torch.Tensor], pos: torch.Tensor) -> torch.Tensor:
        """Token ids of the captions of rows `pos`; each distinct caption is tokenized once per tokenizer."""
        table = self._token_tables.get(id(tokenizer))
        if table is None or table[0] is not tokenizer:
            table = self._token_tables[id(tokenizer)] = (tokenizer, self.tokenize(tokenizer))
        return table[1][self.caption_ids[pos]]

    def subset(self, keep: torch.Tensor) -> "ImageTextPool":
        """The samples where bool mask `keep` is true, with their indices and only their captions."""
        used, caption_ids = torch.unique(self.caption_ids[keep], return_inverse=True)
        return ImageTextPool(
            images=self.images[keep], caption_ids=caption_ids, captions=[self.captions[i] for i in used.tolist()],
            labels=self.labels[keep], caption_labels=self.caption_labels[keep], classnames=self.classnames,
            source=self.source[keep], source_names=self.source_names, noisy=self.noisy[keep],
            indices=self.indices[keep], num_indices=self.num_indices, config=self.config)


def as_image_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 images [N, H, W] or [N, H, W, 3] -> uint8 [N, 3, size, size] (greyscale replicated)."""
    x = torch.tensor(np.asarray(images, dtype=np.uint8))
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).round_().clamp_(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous()
