"""Training methods behind one interface (methods.base.Method) and their registry.

Adding a method: one file in this package and one line in REGISTRY.
"""
from __future__ import annotations

from methods.base import Features, LossOutput, Method, Progress, needs_reference
from methods.clip import Clip
from methods.drrho import DRRho
from methods.drrho_kd import DRRhoKD
from methods.fastclip import FastCLIP
from methods.fastclip_kd import FastCLIPKD
from methods.filter import Filter
from methods.jest import Jest, JestTopK
from methods.kd import KD
from methods.random_subset import RandomSubset
from methods.rho_topk import RhoTopK

REGISTRY: dict[str, type[Method]] = {
    Clip.name: Clip,
    DRRho.name: DRRho,
    FastCLIP.name: FastCLIP,
    KD.name: KD,
    FastCLIPKD.name: FastCLIPKD,
    DRRhoKD.name: DRRhoKD,
    Jest.name: Jest,
    JestTopK.name: JestTopK,
    RandomSubset.name: RandomSubset,
    RhoTopK.name: RhoTopK,
    Filter.name: Filter,
}


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`; ValueError listing the registered names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None


__all__ = ["Features", "LossOutput", "Method", "Progress", "REGISTRY", "get_method", "needs_reference"]
