"""python -m benchmarks [--quick] [--only NAME[,NAME]] [--out DIR]: run the benchmark groups, write the results."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import harness  # noqa: F401  (installs the torchvision guard before any group imports open_clip)

GROUPS = ("overhead", "steering", "loading", "evaluation", "machinery", "scaling", "cli")  # modules of this package
DEFAULT_OUT = Path("results") / "benchmarks"


def parse(argv: list[str]) -> argparse.Namespace:
    """Command-line options; --only is checked against GROUPS."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run of a minute or two")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups: {', '.join(GROUPS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    args.only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in args.only if g not in GROUPS]
    if unknown or not args.only:
        parser.error(f"unknown or no group(s) {unknown or args.only}; choose from {', '.join(GROUPS)}")
    return args


def main(argv: list[str]) -> int:
    """Run the chosen groups in order (one thread for torch), print the ratios, write JSON and Markdown."""
    args = parse(argv)
    import torch

    from benchmarks import output
    from benchmarks.timing import Settings, machine
    settings = Settings.make(args.quick)
    info = machine(settings.threads)
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    groups = {}
    for name in args.only:
        began = time.perf_counter()
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        groups[name] = importlib.import_module(f"benchmarks.{name}").run(settings, args.out)
        print(f"[benchmarks] {name} done in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
        for r in groups[name].ratios:
            verdict = "" if r.passed is None else ("  pass" if r.passed else "  FAIL")
            print(f"  {r.median:8.3f}  [{min(r.values):.3f}, {max(r.values):.3f}]  {r.name}"
                  f"{'  goal ' + str(r.goal) + verdict if r.goal else ''}", file=sys.stderr, flush=True)
    command = "python -m benchmarks" + " ".join([""] + argv)
    doc = output.document(info, {**vars(settings), "groups": args.only}, command, groups, time.perf_counter() - start)
    output.write(args.out, doc)
    print(f"[benchmarks] wrote {args.out / 'benchmarks.json'} and {args.out / 'benchmarks.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
