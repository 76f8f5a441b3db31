"""Model presets built through open_clip's factory, their preprocessing and FLOPs per pair.

Tiny presets (`tiny-s`, `tiny-m`, `tiny-l`: 32 px ViTs that train on a CPU) are open_clip
model configs shipped in `harness/model_configs/` and registered with the factory; every
other open_clip architecture (ViT-B-32, ViT-B-16, ViT-L-14, ...) is available by name.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable

import open_clip
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from harness.presets import CONFIG_DIR, check_model_name
from methods.base import Features

open_clip.add_model_config(CONFIG_DIR)


def _not_random_init_notice(record: logging.LogRecord) -> bool:
    # clipsteer trains from scratch on purpose; a *requested* checkpoint that fails to load raises instead
    return not record.getMessage().startswith("No pretrained weights loaded")


logging.getLogger().addFilter(_not_random_init_notice)


def resolve_device(device: str) -> str:
    """The torch device a run's `device` setting names: "auto" is cuda when a GPU is visible, else cpu."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class BuiltModel:
    """An open_clip model with its tokenizer and the batched preprocessing it expects."""

    name: str
    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [B, 3, H, W] -> normalised float images at this model's resolution."""
        x = images.to(torch.float32) / 255.0
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                              align_corners=False, antialias=True).clamp_(0.0, 1.0)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)


@functools.lru_cache(maxsize=None)
def _tokenizer(name: str) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's tokenizer for preset `name`, made once per process: loading its vocabulary costs more CPU
    than building a tiny model, and models of one preset then share it (and the pool's token table for it)."""
    return open_clip.get_tokenizer(name)


def build_model(name: str, pretrained: str | None = None, device: str = "cpu") -> BuiltModel:
    """Create preset `name` through open_clip's factory.

    `pretrained` is an open_clip pretrained tag (downloads) or a local checkpoint file
    path; both go through open_clip's own loading code.
    """
    check_model_name(name)
    model = open_clip.create_model(name, pretrained=pretrained, device=device, require_pretrained=bool(pretrained))
    cfg = model.visual.preprocess_cfg
    size = cfg["size"]
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return BuiltModel(name=name, model=model, tokenizer=_tokenizer(name), image_size=size,
                      mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))


def encode(built: BuiltModel, images: torch.Tensor, tokens: torch.Tensor, device: str,
           precision: str = "auto") -> Features:
    """Normalised features of a uint8 image batch and its tokens, with the model's logit scale.

    `precision`: "auto" runs under bf16 autocast on cuda and in fp32 on cpu; "bf16" and "fp32" force one.
    Features come back in fp32 either way, so losses are computed in fp32.
    """
    bf16 = precision == "bf16" or (precision == "auto" and device == "cuda")
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        img, txt, scale = built.model(built.preprocess(images.to(device)), tokens.to(device))[:3]
    return Features(img.float(), txt.float(), scale.float())


def count_profile(name: str) -> dict[str, float]:
    """Parameters (millions) and forward GFLOPs per image-text pair, counted by FlopCounterMode: what
    harness.profiles.model_profile stores for the presets and counts for any other open_clip config.

    The model is built on the meta device, so even ViT-L-14 costs no memory or weights.
    The text side is counted at the full context length, as open_clip's published profile is.
    """
    check_model_name(name)
    with torch.device("meta"):
        model = open_clip.create_model(name, device="meta")
        image_size = model.visual.preprocess_cfg["size"]
        image_size = image_size if isinstance(image_size, (tuple, list)) else (image_size, image_size)
        image = torch.zeros(1, 3, *image_size)
        text = torch.zeros(1, model.context_length, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.encode_image(image)
        image_flops = counter.get_total_flops()
        model.encode_text(text)
    total = counter.get_total_flops()
    visual = sum(p.numel() for p in model.visual.parameters())
    params = sum(p.numel() for p in model.parameters())
    return {"mparams": params / 1e6, "image_mparams": visual / 1e6, "text_mparams": (params - visual) / 1e6,
            "image_gflops": image_flops / 1e9, "text_gflops": (total - image_flops) / 1e9,
            "gflops": total / 1e9}
