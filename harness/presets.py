"""Model preset names: the tiny CPU configs shipped in harness/model_configs/ and the cluster architectures,
and the check of a model name, without loading torch or open_clip for a tiny preset (harness.models builds them)."""
from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_PRESETS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
CLUSTER_PRESETS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")


def preset_names() -> tuple[str, ...]:
    """Presets listed by `clipsteer models`: the tiny CPU configs, then the cluster architectures."""
    return TINY_PRESETS + CLUSTER_PRESETS


def check_model_name(name: str) -> None:
    """Raise ValueError naming the allowed presets if open_clip has no config called `name`."""
    if name in TINY_PRESETS:
        return
    import open_clip  # only for names beyond the tiny presets: the validator of a tiny grid loads no torch

    if name not in open_clip.list_models():
        raise ValueError(f"unknown model {name!r}; presets: {', '.join(preset_names())} "
                         f"(or any of open_clip's {len(open_clip.list_models())} configs)")
    if "multimodal_cfg" in open_clip.get_model_config(name):
        raise ValueError(f"model {name!r} is a captioning (CoCa) model; clipsteer trains contrastive CLIP models")
