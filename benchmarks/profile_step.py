"""cProfile of harness.run.train() steps: `python -m benchmarks.profile_step [METHOD] [--reference cached|online]
[--steps N] [--top N]` prints the top entries by cumulative time (tiny-s, demo settings, one thread)."""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys

import torch

from benchmarks.fixtures import demo_pool, demo_train, harness_train, references
from methods import get_method


def main(argv: list[str]) -> int:
    """Profile one harness.run.train() call of `steps` steps and print the top cumulative entries."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__)
    parser.add_argument("method", nargs="?", default="clip")
    parser.add_argument("--reference", choices=("cached", "online"), default=None,
                        help="feature source for a method that needs one (default: cached)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pool, cfg = demo_pool(), demo_train()
    needs = get_method(args.method).reference is not None
    source = getattr(references(pool), args.reference or "cached") if needs or args.reference else None
    harness_train(args.method, pool, 3, 0, cfg, reference=source)  # warm-up call, not profiled
    profile = cProfile.Profile()
    profile.enable()
    harness_train(args.method, pool, args.steps, 0, cfg, reference=source)
    profile.disable()
    stats = pstats.Stats(profile, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
