"""The method interface: what the training loop may ask of a method, and nothing more.

A method sees the batch's features, the reference's features (if it declares it needs
them: of every batch, or of every pool sample once before training), the batch's stable
sample indices and the training progress. It never sees the
data loader, the optimizer or the disk; its own state (e.g. per-sample moving averages)
travels in checkpoints through `state_dict`/`load_state_dict`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # annotations only: methods load torch on first use (methods.deferred)
    import torch


@dataclass
class Features:
    """L2-normalised image and text features of one batch ([B, D] each) and the model's logit scale."""

    image: torch.Tensor
    text: torch.Tensor
    logit_scale: torch.Tensor | None = None


@dataclass
class Progress:
    """Where training is: optimizer step (0-based) and epochs of the pool seen so far (fractional)."""

    step: int
    epoch: float


@dataclass
class LossOutput:
    """The scalar to back-propagate and named numbers worth logging."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Method:
    """Base class: subclasses set `name`, `defaults` (every parameter, with its default) and `loss`.

    `reference` says which reference features the method needs: None (no reference model),
    "batch" (the features of every drawn batch, passed to `select` and `loss`) or "pool" (the
    features of every pool sample, computed once and passed to `select_pool`).
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    reference: ClassVar[str | None] = None
    # parameters added after runs existed: at their defaults they reproduce those runs (see `identity_params`)
    added_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: dict[str, Any], num_indices: int) -> None:
        """`params` override `defaults`, refused by `check` when wrong; `num_indices` bounds sample indices."""
        self.params = type(self).check(params)
        self.num_indices = num_indices

    @classmethod
    def for_accounting(cls, params: dict[str, Any]) -> Method:
        """The method with `params` but none of its per-sample state (its subclass's __init__ is not run): what
        compute accounting asks (`candidates`, `reference`), with no torch loaded, for the dry run's estimate."""
        method = cls.__new__(cls)
        Method.__init__(method, params, num_indices=0)
        return method

    @classmethod
    def check(cls, params: dict[str, Any]) -> dict[str, Any]:
        """`params` over `defaults`, checked (ValueError naming the parameter). It needs no torch, so the grid
        validator calls it before anything loads; a method with constraints extends it."""
        return resolve_params(cls, params)

    def loss(self, feats: Features, ref: Features | None, indices: torch.Tensor, progress: Progress) -> LossOutput:
        raise NotImplementedError

    def candidates(self, batch_size: int) -> int:
        """Candidates drawn per step (a super-batch) for a batch of `batch_size`; equal means no selection."""
        return batch_size

    def select(self, feats: Features, ref: Features | None, indices: torch.Tensor, progress: Progress,
               generator: torch.Generator, batch_size: int) -> torch.Tensor:
        """Positions (into the candidates) of the `batch_size` samples to train on. `feats` are the
        learner's features of the candidates, computed without gradient."""
        raise NotImplementedError(f"method {self.name!r} draws no super-batch, so it selects nothing")

    def select_pool(self, ref: Features | None, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """Positions of the pool samples to train on, chosen once before training (a static subset);
        None (the default) trains on the whole pool. `ref` holds the reference's features of every
        pool sample when `reference == "pool"`."""
        return None

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable tensors the method owns (e.g. a learnable temperature); optimised with the model, no decay,
        at the learning rate `parameters_lr` gives."""
        return []

    def parameters_lr(self, lr: float) -> float:
        """Learning rate of `parameters()` for the coming step, where the model's is `lr`: the model's, unless
        the method schedules its own (called before every step)."""
        return lr

    def after_step(self) -> None:
        """Called after every optimizer step (e.g. to project a temperature onto its bounds)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Method state to checkpoint (tensors only, including `parameters()`); stateless methods return {}."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned."""
        if state:
            raise ValueError(f"method {self.name!r} is stateless but got state keys {sorted(state)}")


def needs_reference(cls: type[Method]) -> bool:
    """True when the method cannot run without a reference model."""
    return cls.reference is not None


def identity_params(cls: type[Method], params: dict[str, Any]) -> dict[str, Any]:
    """`params` (resolved) without the `added_params` at their defaults: the part that names a run, so that
    adding a parameter leaves the ids of the runs made before it as they were."""
    return {k: v for k, v in params.items() if k not in cls.added_params or v != cls.defaults[k]}


def resolve_params(cls: type[Method], params: dict[str, Any]) -> dict[str, Any]:
    """Defaults of `cls` overridden by `params`; unknown names or wrong types raise ValueError."""
    unknown = sorted(set(params) - set(cls.defaults))
    if unknown:
        allowed = ", ".join(sorted(cls.defaults)) or "none"
        raise ValueError(f"method {cls.name!r} has no parameter {unknown[0]!r}; allowed: {allowed}")
    resolved = dict(cls.defaults)
    for key, value in params.items():
        default = cls.defaults[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ValueError(f"method {cls.name!r} parameter {key!r} must be {type(default).__name__}, "
                             f"got {value!r}")
        resolved[key] = value
    return resolved
