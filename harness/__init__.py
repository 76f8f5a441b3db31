"""clipsteer: train CLIP models with a reference model, sweep them, fit scaling laws."""
from __future__ import annotations

import importlib.abc
import sys

__version__ = "0.1.0"


class _TorchvisionGuard(importlib.abc.MetaPathFinder):
    """Runs harness.compat's guard just before torchvision is first imported (open_clip and clip_benchmark
    import it), so that importing harness itself loads no torch: `clipsteer --help` answers at once."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "torchvision":
            sys.meta_path.remove(self)
            from harness import compat  # noqa: F401  (installs the guard on import)
        return None


if not any(isinstance(f, _TorchvisionGuard) for f in sys.meta_path) and "torchvision" not in sys.modules:
    sys.meta_path.insert(0, _TorchvisionGuard())
