"""Compatibility guard: make `import torchvision` work where its compiled ops can't load.

The only torchvision wheel matching the pinned CPU torch is a CUDA build whose `_C.so`
fails to load; torchvision then registers fake kernels for `torchvision::nms`/`qnms`
on schemas that were never defined and the import raises. Loading the extension first,
or else defining just those two schemas, lets torchvision (and so open_clip) import.
Nothing here runs where the extension loads normally; nothing calls nms in clipsteer.
"""
from __future__ import annotations

import importlib.util
import os

import torch

_LIBRARY: "torch.library.Library | None" = None  # kept alive: dropping it unregisters the schemas


def _ops_registered() -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return True
    except RuntimeError:
        return False


def install() -> str:
    """Ensure torchvision's op schemas exist; return how ('native', 'loaded', 'defined', 'absent')."""
    global _LIBRARY
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return "absent"
    if _ops_registered():
        return "native"
    folder = os.path.dirname(spec.origin)
    for name in sorted(os.listdir(folder)):
        if name.startswith("_C") and name.endswith(".so"):
            try:
                torch.ops.load_library(os.path.join(folder, name))
                if _ops_registered():
                    return "loaded"
            except (OSError, RuntimeError):
                pass
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return "defined"


MODE = install()
