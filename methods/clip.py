"""clip: plain CLIP, open_clip's symmetric InfoNCE with the model's learnable logit scale."""
from __future__ import annotations

import open_clip
import torch

from methods.base import Features, LossOutput, Method, Progress


class Clip(Method):
    name = "clip"

    def __init__(self, params: dict, num_indices: int) -> None:
        super().__init__(params, num_indices)
        self._loss = open_clip.ClipLoss()

    def loss(self, feats: Features, ref: Features | None, indices: torch.Tensor, progress: Progress) -> LossOutput:
        value = self._loss(feats.image, feats.text, feats.logit_scale)
        return LossOutput(value, {"contrastive_loss": float(value.detach())})
