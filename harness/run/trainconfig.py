"""A run's optimisation settings (TrainConfig): plain data with its checks, free of torch so that the grid
validator reads it without loading torch (harness.run.train trains with it)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from harness.run.schedule import DEFAULT_COOLDOWN, DEFAULT_SCHEDULE, check_schedule
from harness.store.identity import IN_ID_UNLESS_DEFAULT, NOT_IN_ID, in_id_as

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one run (the samples-seen budget lives in the run spec); the metadata marks
    the fields that stay out of the run id (harness.store.identity)."""

    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 10
    beta1: float = 0.9
    beta2: float = 0.98
    adam_eps: float = 1e-6
    augment: bool = True
    checkpoint_every: int = field(default=0, metadata=NOT_IN_ID)
    checkpoint_minutes: float = field(default=10.0, metadata=NOT_IN_ID)
    log_every: int = field(default=10, metadata=NOT_IN_ID)
    # "auto": cuda when available, else cpu (resolved when the run starts, recorded in result.json); a speed
    # option out of the id, hashed as "cpu", the device of every run stored before it could change
    device: str = field(default="auto", metadata=in_id_as("cpu"))
    # "auto": bf16 autocast on cuda, fp32 on cpu; or "fp32" / "bf16" everywhere
    precision: str = field(default="auto", metadata=IN_ID_UNLESS_DEFAULT)
    compile: bool = field(default=False, metadata=NOT_IN_ID)  # torch.compile the model (same math; faster on GPUs)
    # channels-last memory format for the image tower (same math)
    channels_last: bool = field(default=False, metadata=NOT_IN_ID)
    # recompute activations in backward: less memory, same math
    grad_checkpointing: bool = field(default=False, metadata=NOT_IN_ID)
    # "cosine" (warmup + cosine) or "wsd" (warmup-stable-decay)
    schedule: str = field(default=DEFAULT_SCHEDULE, metadata=IN_ID_UNLESS_DEFAULT)
    # wsd: the share of the steps that decays to 0
    cooldown: float = field(default=DEFAULT_COOLDOWN, metadata=IN_ID_UNLESS_DEFAULT)

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), {"int": int, "float": float, "bool": bool, "str": str}[f.type]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))  # lr: 1 and lr: 1.0 are the same run
            elif type(value) is not kind:
                raise ValueError(f"{f.name} must be {kind.__name__}, got {value!r}")
            elif kind is float and not math.isfinite(value):
                raise ValueError(f"{f.name} must be finite, got {value!r}")
        positive = ("batch_size", "lr", "log_every", "adam_eps")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "warmup_steps", "checkpoint_every", "checkpoint_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (contrastive losses need negatives)")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("beta1 and beta2 must be in [0, 1)")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_schedule(self.schedule, self.cooldown)
