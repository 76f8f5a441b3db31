"""Choose drrho's tau for the demo on a validation split, never on the test tasks.

    python -m benchmarks.demo_design [--grid grids/demo.yaml] [--stage S] [--model M] [--samples N]
                                     [--taus 0.01 0.03 0.1 0.3 1.0] [--seeds 0 1 2]
                                     [--work /tmp/demo_tau] [--out results/demo_design] [--score-only]

results/demo_design/tau_selection.md came from `python -m benchmarks.demo_design --samples 40960` (tiny16-s).

1. Train. A grid is written from the demo grid (its data, tasks, training defaults, executor and reference
   stage) with one stage: clip and drrho at each candidate tau, on one model and budget of a demo stage
   (the largest budget of the stage's first model unless --model / --samples say otherwise), steered by
   the demo's reference as the demo steers it. `clipsteer run` trains it into --work.
2. Score. Every trained model (its model.pt, loaded through open_clip's factory) is scored zero-shot, through
   harness.eval's clip_benchmark metrics and the test tasks' own prompts, on two validation tasks built from
   training-split images that are not in the pool:
   - val_fashion_mnist: 5,000 Fashion-MNIST training images that are not in the pool (compared image by image
     with the pool's own images, so an exact duplicate of a pool image is left out too);
   - val_shapes_retrieval: generated training shapes drawn after the pool's `shapes_count` (held out), in 5
     disjoint sets of one shape per (shape, colour, size): 60 images and 120 captions each, built as the
     shapes_retrieval test task is; the score is the mean over the 5 sets.
   The digits source has no validation images: the pool takes all 1,437 training digits. The validation
   average is the mean of the two tasks.
3. Choose. tau = the candidate with the highest mean validation average over seeds. The table also shows the
   test average, for the record only; it plays no part in the choice.

Writes tau_selection.md and tau_selection.json under --out.

    python -m benchmarks.demo_design --check results/demo [--out results/demo_design]

checks a finished demo sweep instead: the mean over seeds of every (method, model, samples seen), which of them
lie on each method's compute frontier (harness.report.fit.frontier_mask on error = 1 - average vs C_paper), and
whether each frontier spans two model sizes with the smaller model at the smaller budgets. Writes
frontier_check.md and frontier_check.json under --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

VAL_FASHION = "val_fashion_mnist"
VAL_SHAPES = "val_shapes_retrieval"
VAL_SHAPES_SETS = 5  # disjoint 60-image retrieval sets (one set is as noisy as the 60-image test task)
VAL_SET_TASKS = tuple(f"{VAL_SHAPES}_{j}" for j in range(VAL_SHAPES_SETS))
VAL_TASKS = (VAL_FASHION, VAL_SHAPES)
VAL_FASHION_COUNT = 5000
VAL_SHAPES_EXTRA = 2000  # generated training shapes drawn after the pool's; ample to hold all 60 combinations
STAGE = "tau"
DEFAULT_TAUS = (0.01, 0.03, 0.1, 0.3, 1.0)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_design", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, default=Path("grids/demo.yaml"),
                        help="the demo grid (default %(default)s)")
    parser.add_argument("--stage", help="the demo stage whose model, budget, lr and reference the candidates copy "
                        "(default: the last stage with drrho)")
    parser.add_argument("--model", help="model of the candidates (default: the stage's first)")
    parser.add_argument("--samples", type=int, help="samples seen of the candidates (default: the stage's largest)")
    parser.add_argument("--taus", type=float, nargs="+", default=list(DEFAULT_TAUS), help="candidate taus")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("/tmp/demo_tau"), help="results folder of the candidates")
    parser.add_argument("--out", type=Path, default=Path("results/demo_design"), help="where the table goes")
    parser.add_argument("--score-only", action="store_true", help="score the runs already in --work, train nothing")
    parser.add_argument("--check", type=Path, metavar="RESULTS", help="check the frontier of a finished demo sweep")
    return parser.parse_args(argv)


def candidate_grid(args: argparse.Namespace) -> dict[str, Any]:
    """The demo grid cut down to its reference stage and one stage of tau candidates (plus clip)."""
    raw = yaml.safe_load(args.grid.read_text(encoding="utf-8"))
    stages = raw["stages"]
    steered = [s for s in stages if any((m if isinstance(m, str) else m["name"]) == "drrho" for m in s["methods"])]
    stage = next((s for s in stages if s["name"] == args.stage), None) if args.stage else (steered or [None])[-1]
    if stage is None or stage.get("reference") is None:
        raise SystemExit(f"{args.grid}: no stage {args.stage or 'with drrho'} that has a reference")
    ref = stage["reference"]
    ref_stage = ref if isinstance(ref, str) else ref.get("stage")
    model = args.model or stage["models"][0]
    samples = args.samples or max(stage["samples_seen"])
    cand = {"name": STAGE, "reference": ref, "methods": ["clip", *({"name": "drrho", "tau": t} for t in args.taus)],
            "models": [model], "samples_seen": [samples], "seeds": list(args.seeds)}
    if stage.get("train"):
        cand["train"] = stage["train"]
    keep = [s for s in stages if s["name"] == ref_stage]
    return {**{k: v for k, v in raw.items() if k != "stages"}, "name": f"{raw.get('name', 'demo')}_tau",
            "description": "drrho tau candidates for the demo, scored on validation images",
            "stages": [*keep, cand]}


def train_candidates(args: argparse.Namespace) -> None:
    args.work.mkdir(parents=True, exist_ok=True)
    grid = args.work / "tau.yaml"
    grid.write_text(yaml.safe_dump(candidate_grid(args), sort_keys=False), encoding="utf-8")
    code = subprocess.call([sys.executable, "-m", "harness", "run", str(grid), "--results", str(args.work)])
    if code != 0:
        raise SystemExit(f"clipsteer run {grid} exited with {code}")


def _build_pool(cfg: Any) -> Any:
    try:
        from harness.data.build import build_pool
    except ImportError:  # before the pool's builder had its own module
        from harness.data.pool import build_pool
    return build_pool(cfg)


def register_validation(data: dict[str, Any]) -> None:
    """Register the two validation tasks for the pool `data` (a grid's data mapping) with harness.eval."""
    from harness.data.pool import PoolConfig, as_image_tensor
    from harness.data.sources import (
        SHAPE_CLASSES,
        SHAPE_COLOURS,
        SHAPE_SIZES,
        fashion_mnist,
        shapes,
    )
    from harness.eval.evaluate import (
        IMAGE_SIZE,
        TASKS,
        ClassificationData,
        RetrievalData,
        register,
    )

    cfg = PoolConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    if VAL_FASHION in TASKS:
        return

    @register(VAL_FASHION, "classification", TASKS["fashion_mnist"].templates)
    def _val_fashion() -> ClassificationData:
        train, pool = fashion_mnist()[0], _build_pool(cfg)
        in_pool = {bytes(x) for x in pool.images[pool.source == pool.source_names.index("fashion_mnist")].numpy()}
        images = as_image_tensor(train.images, IMAGE_SIZE)  # as the pool stores them
        held_out = np.array([i for i, x in enumerate(images.numpy()) if bytes(x) not in in_pool])
        rows = np.sort(np.random.default_rng(12345).choice(held_out, VAL_FASHION_COUNT, replace=False))
        return ClassificationData(images[rows], torch.from_numpy(train.labels[rows].copy()), train.classnames)

    def shapes_set(j: int) -> RetrievalData:
        longer = shapes(train_count=cfg.shapes_count + VAL_SHAPES_EXTRA)[0]
        assert np.array_equal(longer.images[:cfg.shapes_count], shapes(train_count=cfg.shapes_count)[0].images)
        templates, seen = TASKS["shapes_retrieval"].templates, {}
        for i in range(cfg.shapes_count, len(longer)):  # held out: after the pool's shapes
            key = (int(longer.labels[i]), int(longer.attributes["colour"][i]), int(longer.attributes["size"][i]))
            seen.setdefault(key, []).append(i)
        keys = sorted(seen)
        assert len(keys) == len(SHAPE_CLASSES) * len(SHAPE_COLOURS) * len(SHAPE_SIZES)
        rows = [seen[k][j] for k in keys]  # the j-th held-out look of every combination
        captions = tuple(tuple(t.format(size=SHAPE_SIZES[z], colour=list(SHAPE_COLOURS)[c], shape=SHAPE_CLASSES[s])
                               for t in templates) for s, c, z in keys)
        return RetrievalData(as_image_tensor(longer.images[rows], IMAGE_SIZE), captions)

    for j, name in enumerate(VAL_SET_TASKS):
        register(name, "retrieval", TASKS["shapes_retrieval"].templates)(lambda j=j: shapes_set(j))


def score_runs(work: Path) -> list[dict[str, Any]]:
    """Validation scores of every finished non-reference run under `work`, with its test average."""
    from harness.eval.evaluate import evaluate
    from harness.models import build_model
    from harness.run.train import FINAL_MODEL

    torch.set_num_threads(1)
    rows = []
    for result_file in sorted(work.glob("runs/*/result.json")):
        rdir = result_file.parent
        spec = json.loads((rdir / "spec.json").read_text())
        if spec.get("stage") != STAGE:
            continue
        register_validation(spec["data"])
        built = build_model(spec["model"], pretrained=str(rdir / FINAL_MODEL))
        val = evaluate(built, [VAL_FASHION, *VAL_SET_TASKS])["tasks"]
        scores = {VAL_FASHION: 100 * val[VAL_FASHION]["main_metric"],
                  VAL_SHAPES: 100 * statistics.mean(val[t]["main_metric"] for t in VAL_SET_TASKS)}
        test = json.loads(result_file.read_text())["eval"]
        rows.append({"run_id": spec["run_id"], "method": spec["method"]["name"],
                     "tau": spec["method"]["params"].get("tau", 0.01 if spec["method"]["name"] == "drrho" else None),
                     "model": spec["model"], "samples_seen": spec["samples_seen"], "seed": spec["seed"],
                     **scores, "val_average": statistics.mean(scores.values()), "test_average": 100 * test["average"]})
    return rows


def _mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def summarise(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float | None]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["tau"], r["model"], r["samples_seen"]), []).append(r)
    table = []
    for (method, tau, model, samples), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        table.append({"method": method, "tau": tau, "model": model, "samples_seen": samples, "seeds": len(runs),
                      **{t: statistics.mean(r[t] for r in runs) for t in VAL_TASKS},
                      "val_average": statistics.mean(r["val_average"] for r in runs),
                      "val_average_text": _mean_sd([r["val_average"] for r in runs]),
                      "test_average_text": _mean_sd([r["test_average"] for r in runs])})
    drrho = [t for t in table if t["method"] == "drrho"]
    return table, (max(drrho, key=lambda t: t["val_average"])["tau"] if drrho else None)


def write(out: Path, rows: list[dict[str, Any]], table: list[dict[str, Any]], chosen: float | None,
          work: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    intro = (f"Runs: `{work}` (written by `python -m benchmarks.demo_design`). Validation: {VAL_FASHION_COUNT:,} "
             f"Fashion-MNIST training images outside the pool (classification) and {VAL_SHAPES_SETS} sets of 60 "
             "held-out generated training shapes (retrieval within each set, as the shapes_retrieval test task; mean "
             "of the sets); the digits source has no images outside the pool. Scores in %, mean ± sample std over "
             "seeds. The test average is shown for the record only; tau is chosen on the validation average.")
    header = ("| method | tau | model | samples seen | seeds | val fashion_mnist | val shapes_retrieval "
              "| val average | test average |")
    lines = ["# drrho's tau for the demo, chosen on validation images", "", intro, "", header,
             "|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['method']} | {t['tau'] if t['tau'] is not None else '-'} | {t['model']} | "
                     f"{t['samples_seen']:,} | {t['seeds']} | {t[VAL_FASHION]:.1f} | {t[VAL_SHAPES]:.1f} | "
                     f"{t['val_average_text']} | {t['test_average_text']} |")
    lines += ["", f"Chosen tau: **{chosen}** (highest mean validation average among the drrho candidates)."]
    (out / "tau_selection.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "tau_selection.json").write_text(json.dumps({"chosen_tau": chosen, "summary": table, "runs": rows},
                                                       indent=1) + "\n", encoding="utf-8")
    print("\n".join(lines))


def _percent(row: dict[str, Any]) -> str:
    return f"{100 * row['average']:.1f}" + (f" ± {100 * row['sd']:.1f}" if row["seeds"] > 1 else "")


def check_frontier(results: Path, out: Path) -> bool:
    """Seed means per (method, model, samples seen) of a finished sweep and its compute frontiers; True when
    every method's frontier holds two or more models, each larger model only at larger C_paper."""
    import pandas as pd

    from harness.profiles import model_profile
    from harness.report.fit import frontier_mask

    runs = pd.read_csv(results / "leaderboard.csv")
    runs = runs[(runs["status"] == "done") & ~runs["is_reference"].astype(bool)]
    rows, verdicts = [], {}
    for method, part in runs.groupby("method"):
        means = part.groupby(["model", "samples_seen"]).agg(
            c_paper=("c_paper", "first"), seeds=("seed", "nunique"), average=("average", "mean"),
            sd=("average", lambda a: a.std(ddof=1) if len(a) > 1 else float("nan")),
            wall=("wall_time_s", "mean")).reset_index().sort_values("c_paper")
        means["frontier"] = frontier_mask(means["c_paper"].to_numpy(), 1 - means["average"].to_numpy())
        on = means[means["frontier"]]
        sizes = [model_profile(m)["gflops"] for m in on["model"]]
        verdicts[method] = bool(on["model"].nunique() >= 2 and sizes == sorted(sizes))
        rows += [{"method": method, **r} for r in means.to_dict("records")]
    intro = ("Mean over seeds (± sample std) of the average zero-shot score; `*` marks the points on each method's "
             "compute frontier (error = 1 - average against C_paper).")
    lines = [f"# Compute frontier of `{results}`", "", intro, "",
             "| method | model | samples seen | C_paper (GFLOPs) | seeds | average (%) | frontier | wall time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['model']} | {r['samples_seen']:,} | {r['c_paper']:.0f} | {r['seeds']} | "
                     f"{_percent(r)} | {'*' if r['frontier'] else ''} | {r['wall']:.1f} |")
    lines += [""] + [f"- {m}: the frontier {'spans' if ok else 'does not span'} two model sizes in order of compute"
                     for m, ok in verdicts.items()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier_check.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "frontier_check.json").write_text(json.dumps({"results": str(results), "points": rows,
                                                         "spans_two_sizes": verdicts}, indent=1, default=float)
                                             + "\n", encoding="utf-8")
    print("\n".join(lines))
    return all(verdicts.values())


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.check:
        return 0 if check_frontier(args.check, args.out) else 1
    if not args.score_only:
        train_candidates(args)
    rows = score_runs(args.work)
    if not rows:
        raise SystemExit(f"no finished runs of stage {STAGE!r} under {args.work}")
    table, chosen = summarise(rows)
    write(args.out, rows, table, chosen, args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
