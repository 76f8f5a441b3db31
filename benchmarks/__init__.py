"""clipsteer's performance benchmarks: `python -m benchmarks [--quick] [--only NAME[,NAME]] [--out DIR]`.

One module per benchmark group (overhead, steering, loading, evaluation, machinery, scaling, cli), each with
a `run(settings, out) -> GroupResult`. Every A/B comparison is timed in one process, interleaved
(A, B, A, B, ... after a warm-up round), and reported as the median of its rounds with their spread,
because the machine is shared and noisy. This package imports nothing heavy, so a submitit job that
unpickles a function from it starts as cheaply as a real run's job.
"""
