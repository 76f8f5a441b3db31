"""Training data: raw sources, training captions, the pool's config (poolconfig) and the in-memory image-text pool
(pool, built by build); nothing is imported here, so reading a PoolConfig loads no torch."""
