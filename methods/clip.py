"""clip: plain CLIP, the symmetric InfoNCE of open_clip's ClipLoss with the model's learnable logit scale.

Written out here (the same operations in the same order, so the same bits as open_clip.ClipLoss on one
process; tests/test_methods.py checks it) so that methods/ depends on torch alone.
"""
from __future__ import annotations

from methods.base import Features, LossOutput, Method, Progress
from methods.deferred import F, torch


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of the image->text and text->image cross-entropies, positives on the diagonal."""
    labels = torch.arange(image.shape[0], device=image.device, dtype=torch.long)
    logits_per_image = logit_scale * image @ text.T
    logits_per_text = logit_scale * text @ image.T
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


class Clip(Method):
    name = "clip"

    def loss(self, feats: Features, ref: Features | None, indices: torch.Tensor, progress: Progress) -> LossOutput:
        value = info_nce(feats.image, feats.text, feats.logit_scale)
        return LossOutput(value, {"contrastive_loss": float(value.detach())})
