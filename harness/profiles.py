"""Parameters and forward FLOPs of a model: stored for the presets in harness/model_profiles.json (what
harness.models.count_profile counts; tests recount every one), so the dry run, the estimate and the reports
load no torch; counted for any other open_clip config."""
from __future__ import annotations

import functools
import json
from pathlib import Path

PROFILES = Path(__file__).parent / "model_profiles.json"


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
