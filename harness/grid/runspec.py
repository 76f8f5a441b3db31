"""The units of a sweep as typed, frozen values: a run (`RunSpec`) and a reference-feature cache (`CacheUnit`).

Each has a JSON form, written to spec.json and specs.json and hashed into its id, and is rebuilt from it
(its keys also read as a mapping's); `identity` is the part of that JSON that determines the result, read
from the fields' metadata (harness.store.identity). Both pickle, as submitit needs for the job's arguments.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from harness.data.poolconfig import PoolConfig
from harness.grid.config import MethodConfig
from harness.run.reference import Reference
from harness.run.trainconfig import TrainConfig
from harness.store.identity import identity_of
from methods import get_method
from methods.base import identity_params


class _JsonView(Mapping):
    """Read access by key to a unit's JSON form (`spec["run_id"]`), for code that reads units as plain dicts."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


@dataclass(frozen=True, kw_only=True)
class RunSpec(_JsonView):
    """Everything that determines a run's result (harness.grid.spec makes them), and its id."""

    grid: str
    stage: str
    method: MethodConfig
    model: str
    samples_seen: int
    seed: int
    data: dict[str, Any]  # a PoolConfig's fields, or a shard set's spec, manifest digest and lazy flag
    train: TrainConfig
    eval_tasks: tuple[str, ...]
    eval_suite: str
    reference: Reference | None
    run_id: str
    # a tuning stage's run (harness.grid.tuning): the method parameters its stage tunes; it trains on the pool
    # less its validation pairs and is scored on those alone (eval_tasks is empty)
    tune: tuple[str, ...] = ()
    # method parameter -> the tuning stage that chose its value; out of the id (the value is in `method`)
    tuned: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> RunSpec:
        """The run of a spec's JSON form (to_json's inverse)."""
        return cls(grid=spec["grid"], stage=spec["stage"], method=MethodConfig(**spec["method"]), model=spec["model"],
                   samples_seen=spec["samples_seen"], seed=spec["seed"], data=spec["data"],
                   train=TrainConfig(**spec["train"]), eval_tasks=tuple(spec["eval_tasks"]),
                   eval_suite=spec["eval_suite"], run_id=spec["run_id"],
                   reference=None if spec["reference"] is None else Reference.from_json(spec["reference"]),
                   tune=tuple(spec.get("tune", ())), tuned=dict(spec.get("tuned", {})))

    def to_json(self) -> dict[str, Any]:
        """The spec as plain JSON-able data: what spec.json holds and the run id hashes (`tune` and `tuned` only
        when set, so the runs of grids without tuning keep their ids)."""
        return {"grid": self.grid, "stage": self.stage, "method": asdict(self.method), "model": self.model,
                "samples_seen": self.samples_seen, "seed": self.seed, "data": self.data, "train": asdict(self.train),
                "eval_tasks": list(self.eval_tasks), "eval_suite": self.eval_suite, "run_id": self.run_id,
                "reference": None if self.reference is None else self.reference.to_json(),
                **({"tune": list(self.tune)} if self.tune else {}), **({"tuned": self.tuned} if self.tuned else {})}


@dataclass(frozen=True, kw_only=True)
class CacheUnit(_JsonView):
    """A unit that computes reference `reference`'s features of every sample of pool `data` once, on `device`
    (harness.run.refcache names and builds them)."""

    KIND: ClassVar[str] = "refcache"
    run_id: str
    reference: Reference  # its features are cached, in this unit's directory
    data: dict[str, Any]
    device: str

    @classmethod
    def from_json(cls, unit: dict[str, Any]) -> CacheUnit:
        """The cache unit of its JSON form (to_json's inverse)."""
        return cls(run_id=unit["run_id"], data=unit["data"], device=unit["device"],
                   reference=Reference.from_json({**unit["reference"], "features": "cached"}))

    def to_json(self) -> dict[str, Any]:
        """The unit as plain JSON-able data: what its spec.json holds (the reference without how it is read)."""
        return {"kind": self.KIND, "run_id": self.run_id, "reference": self.reference.source(), "data": self.data,
                "device": self.device}


Unit = RunSpec | CacheUnit  # what a sweep launches: a run, or a reference-feature cache that runs read


def unit_from_json(unit: dict[str, Any]) -> Unit:
    """The run or cache unit that a spec.json holds."""
    return CacheUnit.from_json(unit) if unit.get("kind") == CacheUnit.KIND else RunSpec.from_json(unit)


def identity(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a unit's JSON that determines the result: all of it but its id and which stage tuned which
    parameter (the values are in its method's parameters), the fields of its
    training config, pool and reference that their metadata keeps out of the id (harness.store.identity)
    and the method parameters added since runs existed, at their defaults (methods.base.identity_params)."""
    ident = {k: v for k, v in spec.items() if k not in ("run_id", "tuned")}
    for key, cls in (("train", TrainConfig), ("data", PoolConfig)):
        if isinstance(ident.get(key), dict):
            ident[key] = identity_of(cls, ident[key])
    if isinstance(ident.get("reference"), dict):
        ident["reference"] = identity_of(Reference.kind_of(ident["reference"]), ident["reference"])
    if isinstance(ident.get("method"), dict):
        method = ident["method"]
        ident["method"] = {**method, "params": identity_params(get_method(method["name"]), method["params"])}
    return ident
