"""Reference models: an earlier run of the sweep, a local checkpoint, or an open_clip pretrained tag.

All three go through open_clip's own loading code (`pretrained=` takes a tag or a file), and
the reference is frozen: eval mode, no gradients.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import store
from harness.models import BuiltModel, build_model
from harness.train import FINAL_MODEL


class ReferenceNotReady(RuntimeError):
    """The reference run has not finished (or failed)."""


def load_reference(ref: dict[str, Any], results: Path, device: str = "cpu") -> BuiltModel:
    """Build and freeze the reference model that `ref` (a spec's 'reference' entry) names."""
    if ref["kind"] == "run":
        state = store.state(results, ref["run_id"])
        if state != "done":
            raise ReferenceNotReady(f"reference run {ref['run_id']} is {state}")
        source = str(store.run_dir(results, ref["run_id"]) / FINAL_MODEL)
    elif ref["kind"] == "checkpoint":
        source = ref["path"]
    else:
        source = ref["tag"]
    built = build_model(ref["model"], pretrained=source, device=device)
    built.model.eval().requires_grad_(False)
    return built
