"""Reference models and their features.

A reference is an earlier run of the sweep (`RunReference`), a local checkpoint (`CheckpointReference`)
or an open_clip pretrained tag (`PretrainedReference`): each kind owns its label, its identity and
where its weights come from; all three load through open_clip's own code (`pretrained=` takes a tag
or a file), and the reference is frozen: eval mode, no gradients. In a spec's JSON the kind is named
by KIND ("run", "checkpoint", "pretrained").

Training asks a feature source (harness.run.features) for the reference's features of a batch or of the
whole pool: `OnlineReference` runs the reference model on the batch being trained (augmented as the learner
sees it); `CachedReference` looks them up by sample index in features computed once per pool
sample (harness.run.refcache), so a run using it does no reference forward pass at all. Without
augmentation both give the same features up to float rounding, hence the same trajectory.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from harness import io
from harness.store.identity import NOT_IN_ID, identity_of
from harness.store.rundir import RunDir

if TYPE_CHECKING:
    from harness.models import BuiltModel


class ReferenceNotReady(RuntimeError):
    """The reference run has not finished (or failed)."""


@dataclass(frozen=True, kw_only=True)
class Reference:
    """A run's reference model: its weights (one subclass per kind), its open_clip architecture `model`,
    how the run reads its features ('online': computed on the fly, 'cached': from a feature cache) and the
    cache's directory when the grid names one (where it lies is no part of the run's identity)."""

    KIND: ClassVar[str]
    model: str
    features: str = "online"
    cache: str | None = field(default=None, metadata=NOT_IN_ID)

    @staticmethod
    def kind_of(entry: dict[str, Any]) -> type[Reference]:
        """The class of a spec's 'reference' entry, by its 'kind'."""
        kinds = {cls.KIND: cls for cls in (RunReference, CheckpointReference, PretrainedReference)}
        if entry.get("kind") not in kinds:
            raise ValueError(f"unknown reference kind {entry.get('kind')!r}; known: {', '.join(kinds)}")
        return kinds[entry["kind"]]

    @staticmethod
    def from_json(entry: dict[str, Any]) -> Reference:
        """The reference of a spec's 'reference' entry (or of a cache unit's, which has no 'features')."""
        return Reference.kind_of(entry)(**{k: v for k, v in entry.items() if k != "kind"})

    def to_json(self) -> dict[str, Any]:
        """The spec's 'reference' entry: the kind and every field ('cache' only when named)."""
        entry = {"kind": self.KIND, **{f.name: getattr(self, f.name) for f in fields(self)}}
        if self.cache is None:
            del entry["cache"]
        return entry

    def source(self) -> dict[str, Any]:
        """The entry without how its features are read: what makes the reference model (a cache unit's 'reference')."""
        return {k: v for k, v in self.to_json().items() if k not in ("features", "cache")}

    def identity(self) -> dict[str, Any]:
        """What makes the reference's features what they are: its source less where a file lies."""
        return identity_of(type(self), self.source())

    def label(self) -> str:
        """How the leaderboard names the reference."""
        raise NotImplementedError

    def weights(self, results: Path) -> str:
        """What open_clip's `pretrained=` loads: a tag or a file (a reference run's under `results`)."""
        raise NotImplementedError

    def requires(self) -> set[str]:
        """Ids of the runs of the sweep that must be done before the reference can be loaded."""
        return set()

    def stored_scores(self, results: Path) -> dict[str, Any] | None:
        """The reference's own evaluation, where the sweep stored one (else None: evaluate it)."""
        return None

    def load(self, results: Path, device: str = "cpu") -> BuiltModel:
        """Build and freeze the reference model (a reference run's weights read from under `results`)."""
        from harness.models import build_model

        built = build_model(self.model, pretrained=self.weights(Path(results)), device=device)
        built.model.eval().requires_grad_(False)
        return built


@dataclass(frozen=True, kw_only=True)
class RunReference(Reference):
    """The single run of an earlier stage of the sweep (a grid's `reference: {stage: ...}`)."""

    KIND: ClassVar[str] = "run"
    run_id: str
    # a run of another grid, borrowed (`reference: {grid: G, stage: S}`): "G/<its run id>", stored in the results
    # directory of grid file G beside this sweep's (results/G/ for results/zoo/). Its spec is `run_id`'s but for
    # the grid's name, which changes nothing in training, so `run_id` is the id this grid would give the run:
    # borrowing renames no run that cites it.
    borrowed: str | None = field(default=None, metadata=NOT_IN_ID)

    def to_json(self) -> dict[str, Any]:
        entry = super().to_json()
        if self.borrowed is None:
            del entry["borrowed"]
        return entry

    def label(self) -> str:
        """The run id; a borrowed run's as it is stored: its grid's results directory/run id (demo/reference-...)."""
        return self.run_id if self.borrowed is None else self.borrowed

    def run_dir(self, results: Path) -> RunDir:
        """The reference run's directory: under `results`, or a borrowed run's in its grid's results directory
        beside `results`."""
        if self.borrowed is None:
            return RunDir.of(results, self.run_id)
        grid, run_id = self.borrowed.split("/", 1)
        return RunDir.of(Path(results).parent / grid, run_id)

    def weights(self, results: Path) -> str:
        rdir = self.run_dir(results)
        state = rdir.state()
        if state != "done":
            where = f" (borrowed from {rdir.path}: run that grid first)" if self.borrowed is not None else ""
            raise ReferenceNotReady(f"reference run {self.run_id} is {state}{where}")
        return str(rdir.final_model)

    def requires(self) -> set[str]:
        return set() if self.borrowed is not None else {self.run_id}

    def stored_scores(self, results: Path) -> dict[str, Any] | None:
        return io.read_json(self.run_dir(results).eval)


@dataclass(frozen=True, kw_only=True)
class CheckpointReference(Reference):
    """A local checkpoint, known by its SHA-256 (where it lies is no part of any identity)."""

    KIND: ClassVar[str] = "checkpoint"
    path: str = field(metadata=NOT_IN_ID)
    sha256: str

    def label(self) -> str:
        return f"{self.model}@{self.path}"

    def weights(self, results: Path) -> str:
        return self.path


@dataclass(frozen=True, kw_only=True)
class PretrainedReference(Reference):
    """An open_clip pretrained tag of `model`."""

    KIND: ClassVar[str] = "pretrained"
    tag: str

    def label(self) -> str:
        return f"{self.model}:{self.tag}"

    def weights(self, results: Path) -> str:
        return self.tag
