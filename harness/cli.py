"""`clipsteer` command line: parse, call one function, print. No logic of its own."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from harness import __version__
from harness.errors import ConfigError, did_you_mean

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `clipsteer` console script and `python -m harness`."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's own usage, and the flag meant
        _unrecognized(args.parser, extra)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"clipsteer: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _unrecognized(sub: argparse.ArgumentParser, extra: list[str]) -> None:
    """Exit 2 with `sub`'s usage, naming the arguments it does not take and the flag closest to the first."""
    flags = [o for action in sub._actions for o in action.option_strings]
    first = next((e.split("=", 1)[0] for e in extra if e.startswith("-")), None)
    hint = did_you_mean(first, flags) if first else ""
    sub.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipsteer",
        description="Train CLIP models with and without a reference model, sweep grids of runs, "
                    "and report leaderboards and scaling-law fits.")
    parser.add_argument("--version", action="version", version=f"clipsteer {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="launch the runs of a grid file that are not done yet, then write the report",
                         description="Validate GRID, expand it into runs, launch every run that is missing or failed "
                                     "(stage by stage, through submitit), then write the leaderboard, the scaling fit "
                                     "and the plot. Exit code 0: all runs done; 1: some failed; 2: bad input.")
    run.add_argument("grid", type=Path, help="grid file (YAML), e.g. grids/demo.yaml")
    run.add_argument("--results", type=Path, default=None, help="results directory (default: results/<grid file name>, refused when it holds another grid's runs)")
    run.add_argument("--dry-run", action="store_true",
                     help="validate and list the runs that would launch, the resources each asks for and an estimate "
                          "of their GPU-hours; write nothing")
    run.add_argument("--gpu-tflops", type=float, default=None, metavar="T",
                     help="with --dry-run: peak TFLOP/s of one GPU for the estimate (default: an H100's dense bf16)")
    run.add_argument("--mfu", type=float, default=None, metavar="F",
                     help="with --dry-run: the fraction of that peak training achieves, in (0, 1] (default 0.4)")
    run.add_argument("--executor", choices=["local", "debug"], default=None,
                     help="override the grid's executor: local (subprocesses) or debug (in this process); "
                          "Slurm is set in the grid file (executor: {kind: slurm, slurm: {...}})")
    run.add_argument("--max-parallel", type=int, default=None, help="override the grid's executor.max_parallel")
    run.add_argument("--no-wait", action="store_true",
                     help="Slurm only: submit the missing runs (a stage's jobs wait in the queue for the jobs of the "
                          "stage they read: afterok dependencies) and exit, leaving them queued; run again later to "
                          "collect them and write the report")
    run.set_defaults(func=_cmd_run, parser=run)

    cache = sub.add_parser("cache-ref", help="compute the reference-feature caches a grid's runs read",
                           description="Compute, once per (reference, pool), the reference model's image and text "
                                       "features of every pool sample, for the stages of GRID whose reference says "
                                       "'features: cached'. `clipsteer run` builds missing caches itself; this "
                                       "builds them ahead (their reference runs must be done). Exit code 0: built "
                                       "or already there; 1: some failed; 2: bad input.")
    cache.add_argument("grid", type=Path, help="grid file (YAML)")
    cache.add_argument("--results", type=Path, default=None, help="results directory (default: results/<grid file name>, refused when it holds another grid's runs)")
    cache.add_argument("--executor", choices=["local", "debug"], default=None,
                       help="override the grid's executor: local (subprocesses) or debug (in this process)")
    cache.set_defaults(func=_cmd_cache_ref, parser=cache)

    models = sub.add_parser("models", help="list model presets with parameters and forward GFLOPs per pair",
                            description="List every model preset: parameters (millions) and forward GFLOPs per "
                                        "image-text pair, counted with torch's FlopCounterMode.")
    models.set_defaults(func=_cmd_models, parser=models)

    report = sub.add_parser("report", help="rewrite the leaderboard, fits and plots of a results directory",
                            description="Rebuild leaderboard.csv/.md/.html, scaling.json (fits with bootstrap "
                                        "intervals, held-out checks, compute-saving ratios, data efficiency) and "
                                        "plots/ (PNG and SVG) from the runs stored in RESULTS (the directory "
                                        "`clipsteer run` wrote).")
    report.add_argument("results", type=Path, help="results directory of a grid, e.g. results/demo")
    report.add_argument("--all", action="store_true",
                        help="also show runs of specs the grid file no longer names (an edited grid), marked "
                             "'(earlier spec)'; they are left out by default")
    report.add_argument("--out", type=Path, default=None,
                        help="write the report into this directory instead of RESULTS (the runs are read from RESULTS)")
    report.set_defaults(func=_cmd_report, parser=report)

    shards = sub.add_parser("make-shards", help="write a grid's pool or an image folder as webdataset tar shards",
                            description="Write deterministic webdataset shards (<key>.png/.txt/.json per sample, a "
                                        "manifest.json with each shard's SHA-256 written last) from the pool a grid "
                                        "file describes (its top-level data, or one stage's) or from an image folder "
                                        "with a CSV/TSV captions file (columns filename,caption[,label]). Prints the "
                                        "brace spec naming the shards.")
    source = shards.add_mutually_exclusive_group(required=True)
    source.add_argument("--grid", type=Path, help="grid file whose data section describes the pool")
    source.add_argument("--folder", type=Path, help="image folder (with --captions)")
    shards.add_argument("--stage", default=None, help="with --grid: use this stage's data (default: the grid's)")
    shards.add_argument("--split", choices=["train", "test"], default="train", help="with --grid: source split")
    shards.add_argument("--captions", type=Path, help="with --folder: CSV or TSV file, columns filename,caption")
    shards.add_argument("--image-size", type=int, default=32, help="with --folder: square image size (default 32)")
    shards.add_argument("--out", type=Path, required=True, help="output directory of the shard set")
    shards.add_argument("--samples-per-shard", type=int, default=1000, help="samples per tar shard (default 1000)")
    shards.add_argument("--image-format", choices=["png", "npy"], default="png",
                        help="how images are stored: png (default; any image tool reads it) or npy (uint8 arrays: "
                             "about 2.5x the bytes at 32 px, a tenth of the decoding time)")
    shards.set_defaults(func=_cmd_make_shards, parser=shards)

    status = sub.add_parser("status", help="show where every run of a grid stands",
                            description="List every run of GRID (and the feature caches it reads) with its state: "
                                        "done, running (on which host and process), interrupted (the process died; "
                                        "the next `clipsteer run` resumes it from its last checkpoint), failed (with "
                                        "the error's last line), stale (older result format), conflict or missing; "
                                        "with how often it was started and requeued. Also counts the runs stored "
                                        "for earlier versions of the grid file. Writes nothing.")
    status.add_argument("grid", type=Path, help="grid file (YAML)")
    status.add_argument("--results", type=Path, default=None, help="results directory (default: results/<grid file name>, refused when it holds another grid's runs)")
    status.set_defaults(func=_cmd_status, parser=status)

    fit = sub.add_parser(
        "fit", help="fit scaling laws with bootstrap intervals, held-out checks and compute-saving ratios",
        description="Fit error = a * C^b (or a * C^b + c) per method, on the runs of a results directory or on a "
                    "plain CSV of published numbers (columns method,compute,error). Prints each fit with bootstrap "
                    "intervals, the prediction error on the held-out largest compute, and the compute each method "
                    "needs relative to the baseline at target errors. Exit code 0: every method fitted; 1: some "
                    "refused (too few points, non-positive values, one compute, a fit on a bound); 2: bad input.")
    fit_source = fit.add_mutually_exclusive_group(required=True)
    fit_source.add_argument("results", type=Path, nargs="?", help="results directory of a grid, e.g. results/demo")
    fit_source.add_argument("--csv", type=Path, help="CSV with columns method,compute,error (one row per run); "
                            "with --form joint, method,gflops_per_pair,samples,error")
    fit.add_argument("--compute", choices=["c_paper", "c_total", "samples_seen"], default="c_paper",
                     help="compute axis of a results directory (default c_paper, the paper's convention)")
    fit.add_argument("--form", choices=["power", "saturating", "joint"], default="power",
                     help="power: E = a*C^b, least squares in log space; saturating: E = a*C^b + c, Huber loss; "
                          "joint: E = e0 + a/F^alpha + b/D^beta over forward GFLOPs per pair F and samples seen D, "
                          "Huber loss, with the compute-optimal F*(C) and D*(C)")
    fit.add_argument("--task", default=None, help="joint form: fit 1 - this task's score instead of 1 - average")
    fit.add_argument("--huber-delta", type=float, default=1e-3, metavar="D",
                     help="joint form: log-residual scale where the Huber loss turns linear (default 1e-3)")
    fit.add_argument("--points", choices=["frontier", "all"], default="frontier",
                     help="fit each method's compute frontier (default) or all its points")
    fit.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap replicates (0: none)")
    fit.add_argument("--holdout", type=int, default=1, metavar="K",
                     help="hold out the K largest computes and report the prediction error (0: none)")
    fit.add_argument("--baseline", default="clip", help="method the saving ratios are relative to (default clip)")
    fit.add_argument("--target", type=float, nargs="+", default=(), metavar="E",
                     help="target errors for the saving ratios (default: three inside both fits' ranges)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    fit.add_argument("--json", action="store_true", help="print the analysis as JSON")
    fit.set_defaults(func=_cmd_fit, parser=fit)

    compare = sub.add_parser(
        "compare", help="paired comparisons of every method configuration against a baseline, with verdicts",
        description="Compare every method configuration (its parameters, model, samples seen and reference) of a "
                    "results directory with the baseline, per task and on the average score, runs paired by seed: "
                    "mean difference in percentage points, 95% Student-t interval, number of seeds, p-value of "
                    "the paired t-test, Holm's step-down correction across all comparisons shown, and a verdict "
                    "(better, worse, no significant difference) at Holm p <= 0.05; one seed gives no verdict. "
                    "Exit code 0: comparisons made; 1: no configuration could be paired with the baseline; "
                    "2: bad input.")
    compare.add_argument("results", type=Path, help="results directory of a grid, e.g. results/demo")
    compare.add_argument("--baseline", default="clip", help="method every other one is compared with (default clip)")
    compare.add_argument("--json", action="store_true", help="print the comparisons as JSON")
    compare.set_defaults(func=_cmd_compare, parser=compare)
    return parser


def _grid_and_executor(args: argparse.Namespace):
    """The grid file's config and its executor with the command line's overrides applied."""
    from harness.grid.config import load_grid

    grid = load_grid(args.grid)
    executor = grid.executor
    if args.executor:
        executor = dataclasses.replace(executor, kind=args.executor, slurm=None)
    if getattr(args, "max_parallel", None) is not None:
        if args.max_parallel < 1:
            raise ConfigError("--max-parallel", "", f"must be >= 1, got {args.max_parallel}")
        executor = dataclasses.replace(executor, max_parallel=args.max_parallel)
    return grid, executor


def _cmd_run(args: argparse.Namespace) -> int:
    grid, executor = _grid_and_executor(args)  # before the sweep's heavy imports: a bad grid is refused at once
    from harness.grid.results import results_dir

    results = results_dir(grid, args.results)
    if args.dry_run:
        from harness.launch.estimate import throughput
        from harness.launch.plan import plan

        for line in plan(grid, results, executor, throughput(args.gpu_tflops, args.mfu)):
            print(line)
        return 0
    from harness import sweep  # launching: submitit, torch

    if args.no_wait and executor.slurm is None:
        raise ConfigError(str(args.grid), "executor.kind", f"--no-wait leaves runs in the Slurm queue; the executor "
                          f"is {executor.kind!r}, whose jobs need this process")
    outcome = sweep.run(grid, results, executor, wait=not args.no_wait)
    for run_id, job in outcome.launch.queued.items():
        print(f"queued {run_id}: Slurm job {job}")
    for line in outcome.launch.waiting:  # a tuning stage that failed or is still queued
        print(f"not launched: {line} (not done yet, or failed: `clipsteer status {args.grid}`)")
    for path in outcome.report_paths.values():
        print(f"wrote {path}")
    return 1 if outcome.launch.failed or (outcome.launch.waiting and not args.no_wait) else 0


def _cmd_cache_ref(args: argparse.Namespace) -> int:
    grid, executor = _grid_and_executor(args)
    from harness import sweep
    from harness.grid.results import results_dir

    outcome = sweep.cache_references(grid, results_dir(grid, args.results), executor)
    for run_id, reason in outcome.failed.items():
        print(f"failed: {run_id}: {reason}", file=sys.stderr)
    return 1 if outcome.failed else 0


def _cmd_models(args: argparse.Namespace) -> int:
    from harness.presets import preset_names
    from harness.profiles import model_profile

    print(f"{'model':<12} {'params (M)':>11} {'GFLOPs/pair':>12} {'image':>9} {'text':>9}")
    for name in preset_names():
        p = model_profile(name)
        print(f"{name:<12} {p['mparams']:>11.2f} {p['gflops']:>12.4g} {p['image_gflops']:>9.4g} {p['text_gflops']:>9.4g}")
    print("GFLOPs: forward FLOPs per image-text pair (torch FlopCounterMode; text at full context length).")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    for flag, value, low in (("--bootstrap", args.bootstrap, 0), ("--holdout", args.holdout, 0)):
        if value < low:
            raise ConfigError(flag, "", f"must be >= {low}, got {value}")
    bad = [t for t in args.target if not 0 < t < 1]
    if bad:
        raise ConfigError("--target", "", f"target errors are fractions in (0, 1), got {bad}")
    if args.form == "joint":
        return _fit_joint(args)
    if args.task is not None:
        raise ConfigError("--task", "", "only the joint form fits one task; the other forms fit 1 - average")
    import json

    from harness import sweep
    from harness.report import scaling
    from harness.report.fit import points_from_results

    if args.csv:
        points = scaling.read_points_csv(args.csv)
        compute = "compute"
    else:
        _, table = sweep.results_of(args.results)
        points, compute = points_from_results(table, args.compute), args.compute
    opts = scaling.FitOptions(compute_col=compute, form=args.form, points=args.points, n_boot=args.bootstrap,
                              holdout=args.holdout, seed=args.seed, baseline=args.baseline, targets=tuple(args.target))
    doc, _ = scaling.analyse(points, opts)
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n" if args.json else scaling.format_text(doc))
    return 1 if doc["skipped"] else 0


def _fit_joint(args: argparse.Namespace) -> int:
    """`clipsteer fit --form joint`: E(F, D) per method configuration and the compute-optimal allocation."""
    import json

    from harness.report import joint

    if not args.huber_delta > 0:
        raise ConfigError("--huber-delta", "", f"must be > 0, got {args.huber_delta}")
    if args.csv:
        points, error = joint.read_joint_csv(args.csv), f"error column of {args.csv}"
    else:
        from harness import sweep  # torch and open_clip: only for a results directory

        points = joint.joint_points(sweep.results_of(args.results)[1], args.task)
        error = "1 - average" if args.task is None else f"1 - {args.task}"
    opts = joint.JointOptions(huber_delta=args.huber_delta, n_boot=args.bootstrap, holdout=args.holdout,
                              seed=args.seed, baseline=args.baseline)
    doc, _ = joint.analyse_joint(points, opts, error)
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n" if args.json else joint.format_joint_text(doc))
    return 1 if doc["skipped"] or not doc["fits"] else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import json

    from harness import sweep
    from harness.report import compare

    _, table = sweep.results_of(args.results)
    compare.check_baseline(table, args.baseline, str(args.results))
    doc = compare.compare(table, args.baseline)
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n" if args.json else compare.format_text(doc))
    return 0 if doc["rows"] else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from harness import sweep

    for path in sweep.report(args.results, include_earlier=args.all, out=args.out).values():
        print(f"wrote {path}")
    return 0


def _cmd_make_shards(args: argparse.Namespace) -> int:
    from harness.data import shards
    from harness.data.build import build_pool

    if args.samples_per_shard < 1:
        raise ConfigError("--samples-per-shard", "", f"must be >= 1, got {args.samples_per_shard}")
    if args.folder is not None:
        if args.captions is None:
            raise ConfigError("--captions", "", "required with --folder")
        for flag, path in (("--folder", args.folder), ("--captions", args.captions)):
            if not path.exists():
                raise ConfigError(flag, "", f"no such file or directory: {path}")
        stats = shards.ReadStats()
        shards.write_folder_shards(args.folder, args.captions, args.out, args.samples_per_shard,
                                   image_size=args.image_size, stats=stats, image_format=args.image_format)
        print(stats)
    else:
        from harness.grid.config import load_grid, pool_config

        grid = load_grid(args.grid)
        stages = {s.name: s for s in grid.stages}
        if args.stage is not None and args.stage not in stages:
            raise ConfigError(str(args.grid), "--stage", f"no stage {args.stage!r}; stages: {', '.join(stages)}")
        data = {**grid.data, **(stages[args.stage].data if args.stage else {})}
        shards.write_shards(build_pool(pool_config(data), split=args.split), args.out, args.samples_per_shard,
                            image_format=args.image_format)
    print(shards.shard_spec(args.out))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from harness.grid.config import load_grid

    grid = load_grid(args.grid)
    from harness.grid.results import results_dir
    from harness.launch.status import format_rows, grid_status, summary

    results = results_dir(grid, args.results)
    rows, earlier, waiting = grid_status(grid, results)
    print(f"grid {grid.name} ({results}): {summary(rows)}")
    print(format_rows(rows))
    for line in waiting:
        print(f"not expanded yet: {line}")
    if earlier:
        print(f"{len(earlier)} run(s) of earlier versions of this grid are kept in {results / 'runs'} and left out "
              f"of the leaderboard; `clipsteer report {results} --all` shows them")
    return 0
