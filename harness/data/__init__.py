"""Training data: raw sources, training captions and the in-memory image-text pool."""
from harness.data.build import build_pool
from harness.data.pool import ImageTextPool, PoolConfig

__all__ = ["ImageTextPool", "PoolConfig", "build_pool"]
