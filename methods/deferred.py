"""torch for methods/, imported on first use: the grid validator reads every method's defaults and checks
(`Method.check`) without loading torch, while the training loop, which has torch loaded, sees no difference."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class Deferred:
    """Stands for the module `name` and imports it at the first attribute read."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


torch = Deferred("torch")
F = Deferred("torch.nn.functional")
