"""clipsteer: train CLIP models with a reference model, sweep them, fit scaling laws."""
from harness import compat as _compat  # noqa: F401  (must run before anything imports torchvision)

__version__ = "0.1.0"
