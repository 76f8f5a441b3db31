"""Model preset names: the tiny CPU configs shipped in harness/model_configs/ and the cluster architectures,
the check of a model name and each preset's parameters and FLOPs, without loading torch or open_clip for a
preset (harness.models builds them)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "model_configs"
PROFILES = Path(__file__).parent / "model_profiles.json"  # count_profile of every preset; tests recount them
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


@functools.lru_cache(maxsize=None)
def model_profile(name: str) -> dict[str, float]:
    """Parameters (millions: mparams, image_mparams, text_mparams) and forward GFLOPs per image-text pair
    (gflops, image_gflops, text_gflops) of model `name`: stored for the presets (counting builds the model,
    seconds of torch and open_clip), counted by harness.models.count_profile for any other open_clip config."""
    stored = json.loads(PROFILES.read_text(encoding="utf-8")).get(name)
    if stored is not None:
        return stored
    from harness.models import count_profile

    return count_profile(name)
