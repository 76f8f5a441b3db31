"""The evaluation registry: one `Task` interface, one name -> task registry and named task sets.

Embedded tasks (`harness.eval.embedded`) and on-disk ones (`harness.eval.tasksets`) register here when
`harness.eval` is imported; the grid validator and the evaluator both resolve names through `resolve`.
Registering and resolving load no torch (the grid validator, `status` and `--dry-run` use them): how a model
scores on a task is in `harness.eval.scoring`, imported when a task is first scored.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Iterable, Sequence

from harness.errors import did_you_mean

if TYPE_CHECKING:
    import torch

    from harness.models import BuiltModel

SUITE_VERSION = "clipsteer-eval-1"  # bump when a task's data or prompts change


class Task(ABC):
    """An evaluation task: its name, the key of its main metric, the data it needs and how a model scores on it."""

    name: str
    metric: str

    def check_data(self) -> None:
        """Raise MissingData when the task's data cannot be read; a task that carries its own data needs nothing."""

    @abstractmethod
    def score(self, built: BuiltModel, device: str, amp: bool, batch_size: int) -> tuple[dict, list[str]]:
        """The task's metrics (including `self.metric`) for `built` on `device`, and the templates it used."""

    def class_logits(self, built: BuiltModel, device: str, amp: bool, batch_size: int) -> torch.Tensor | None:
        """Zero-shot class logits [N images, C classes] of `built` at its own logit scale (own_scale); None
        for a task that is not a zero-shot classification."""
        return None


class MissingData(ValueError):
    """A task whose data is not on disk (or no evaluation root is set); names the task and the path."""

    def __init__(self, task: str, message: str) -> None:
        self.task = task
        super().__init__(message)


class UnknownTask(ValueError):
    """A name that is neither a task nor a task set, or no name at all; `index` is its place in the names given."""

    def __init__(self, index: int | None, message: str) -> None:
        self.index = index
        super().__init__(message)


TASKS: dict[str, Task] = {}
SETS: dict[str, tuple[str, ...]] = {}


def register(task: Task) -> Task:
    """Add `task` to the registry under its name; a name already taken by a task or a set is refused."""
    if task.name in TASKS or task.name in SETS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def register_set(name: str, tasks: Sequence[str]) -> None:
    """Add the task set `name`: a fixed tuple of registered task names, evaluated in that order."""
    if name in TASKS or name in SETS:
        raise ValueError(f"task set {name!r} is already registered")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"task set {name!r} must list registered tasks; unknown: {unknown or 'no tasks given'}")
    SETS[name] = tuple(tasks)


def available() -> str:
    """The names a user may give, for error messages: tasks in no set by name, then the sets and their sizes."""
    in_sets = {t for tasks in SETS.values() for t in tasks}
    loose = sorted(t for t in TASKS if t not in in_sets)
    sets = ", ".join(f"{s} ({len(tasks)} tasks)" for s, tasks in SETS.items())
    return f"{', '.join(loose)}; task sets: {sets} or one of their tasks by its name"


def resolve(names: Sequence[str]) -> list[str]:
    """Task names with each set name replaced by its tasks, a task named twice kept once (first place);
    UnknownTask (with a did-you-mean) for no names or a name that is neither a task nor a set."""
    if not names:
        raise UnknownTask(None, f"at least one task is required; available: {available()}")
    for i, name in enumerate(names):
        if name not in TASKS and name not in SETS:
            raise UnknownTask(i, f"unknown task {name!r}{did_you_mean(name, [*TASKS, *SETS])}; "
                                 f"available: {available()}")
    return list(dict.fromkeys(t for name in names for t in SETS.get(name, (name,))))


def check_data(names: Iterable[str]) -> None:
    """Raise MissingData for the first of the named tasks whose data is missing, counting the others."""
    problems = []
    for name in names:
        try:
            TASKS[name].check_data()
        except MissingData as e:
            problems.append(e)
    if problems:
        first, rest = problems[0], [p.task for p in problems[1:]]
        more = f"; {len(rest)} more task(s) miss theirs too: {', '.join(rest)}" if rest else ""
        raise MissingData(first.task, f"{first}{more}")
