"""Training methods behind one interface (methods.base.Method) and their registry.

Adding a method: one file in this package and one line in REGISTRY.
"""
from __future__ import annotations

import harness  # noqa: F401  (torchvision guard before open_clip)
from methods.base import Features, LossOutput, Method, Progress
from methods.clip import Clip
from methods.drrho import DRRho

REGISTRY: dict[str, type[Method]] = {
    Clip.name: Clip,
    DRRho.name: DRRho,
}


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`; ValueError listing the registered names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None


__all__ = ["Features", "LossOutput", "Method", "Progress", "REGISTRY", "get_method"]
