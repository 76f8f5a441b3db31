"""Learning-rate schedules of the training loop: warmup + cosine (the default) and warmup-stable-decay.

wsd ("warmup-stable-decay", Hägele et al. 2024): linear warmup over `warmup_steps`, the constant
peak lr, then a 1-sqrt decay to 0 over the last `cooldown` fraction of the run's steps. Before its
cooldown starts a wsd run's lr does not depend on the run's length, so runs that differ only in
budget share that phase (harness.launch.ladder trains it once).
"""
from __future__ import annotations

import math
from typing import Protocol

from harness.errors import did_you_mean

SCHEDULES = ("cosine", "wsd")
DEFAULT_SCHEDULE = "cosine"
DEFAULT_COOLDOWN = 0.2


class Settings(Protocol):
    """The TrainConfig fields a schedule reads."""

    lr: float
    warmup_steps: int
    schedule: str
    cooldown: float


def check_schedule(schedule: str, cooldown: float) -> None:
    """Refuse an unknown schedule, a cooldown outside (0, 1], and a cooldown set for a schedule that has none."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}"
                         f"{did_you_mean(schedule, SCHEDULES)}")
    if not 0.0 < cooldown <= 1.0:
        raise ValueError(f"cooldown must be in (0, 1] (the share of the run's steps that decays), got {cooldown!r}")
    if schedule != "wsd" and cooldown != DEFAULT_COOLDOWN:
        raise ValueError(f"cooldown applies to schedule 'wsd' only (the schedule is {schedule!r}); leave it out")


def cooldown_start(total: int, cooldown: float) -> int:
    """The first step of a wsd run's decay: the last round(cooldown x total) of its `total` steps decay."""
    return total - round(cooldown * total)


def lr_at(step: int, total: int, cfg: Settings) -> float:
    """The lr of 0-based step `step` of a run of `total` steps.

    cosine: linear warmup to cfg.lr over warmup_steps, then cosine decay to 0 at `total`.
    wsd: cfg.lr times the smaller of the warmup ramp (step + 1) / warmup_steps and the decay factor
    1 - sqrt((step - s) / (total - s)) from the cooldown start s on (1 before it), so 0 at `total`.
    """
    warm = cfg.lr * (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else cfg.lr
    if cfg.schedule == "wsd":
        start = cooldown_start(total, cfg.cooldown)
        return min(warm, cfg.lr * (1.0 - math.sqrt((step - start) / (total - start)))) if step >= start else warm
    if step < cfg.warmup_steps:
        return warm
    span = max(total - cfg.warmup_steps, 1)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * (step - cfg.warmup_steps) / span))
