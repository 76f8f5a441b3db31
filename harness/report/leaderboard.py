"""Write a sweep's report: leaderboard (CSV, Markdown, a self-contained HTML page), paired comparisons with
the baseline, scaling-law analysis (JSON: fits with bootstrap intervals, held-out checks, compute-saving
ratios, data efficiency) and plots (PNG and SVG)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.io import write_json, write_text, writing
from harness.report import compare, html, joint_plots, plots, tuning, w2s
from harness.report.configs import NONE, with_configs
from harness.report.fit import points_from_results
from harness.report.plots import COMPUTE_AXES, reference_labels, task_columns
from harness.report.scaling import FitOptions, analyse, data_savings, interval_text

COMPUTE_NOTE = (
    "Compute: C_paper = forward GFLOPs per image-text pair of the trained model x samples seen "
    "(FLOPs counted with torch FlopCounterMode). C_total adds, in the same forward-GFLOP units, the learner's "
    "scoring passes over super-batches, the reference's forward passes, the reference's scoring pass over the "
    "pool and an equal share of a reference-feature cache."
)
GAIN_NOTE = (
    "gain: the run's average score minus its reference's on the same tasks (weak-to-strong gain, points). "
    "reducible var: variance of the per-pair loss difference l(w) - l(w_ref) on 1,024 held-out pairs "
    "(test images, the pool's caption noise), computed at each model's own logit scale; DRRho's generalization "
    "bound shrinks with this variance. disagreement: the weak-to-strong misfit (Charikar et al. 2024), the share of "
    "classification test images on which the run's and its reference's zero-shot classes differ, averaged over "
    "tasks; per task, with the cross-entropy form, in leaderboard.csv (disagree:<task>, misfit_ce:<task>)."
)
MADE_NOTE = ("From the runs' result.json (provenance): the software, the code (git commit, whether harness/ or "
             "methods/ differed from it, and the digest of their sources), the hardware and the dates the runs "
             "finished; a field the runs disagree on lists every value.")
TEXT_COLUMNS = ("stage", "method", "model", "reference")
SAVING_NOTE = "verdict: better when the whole 95% interval lies below 1, worse when wholly above"
PLOTS = {"c_paper": "scaling_law", "c_total": "scaling_law_c_total"}
PLOTS_DIR = "plots"
LEADING_COLUMNS = ["stage", "method", "model", "samples_seen", "seed", "gflops_per_pair", "c_paper", "c_total"]
TRAILING_COLUMNS = ["average", "reference_average", "gain", "reducible_var", "wall_time_s", "status", "error",
                    "reference", "run_id"]
PERCENT, POINTS = ".1f", "+.1f"  # HTML formats: scores in percent, gains in percentage points
RUN_FORMATS = {"GFLOPs/pair": ".4g", "C_paper (GFLOPs)": ".2e", "C_total (GFLOPs)": ".2e", "average (%)": PERCENT,
               "gain (pts)": POINTS, "reducible var": ".3g", "disagreement (%)": PERCENT,
               "wall time (s)": ".1f"}
COMPARISON_FORMATS = {"difference (pts)": "+.2f", "p": ".3g", "Holm p": ".3g"}


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """Every row and column, reference runs first, then by model, samples seen and average (best first);
    readable column order."""
    ordered = [c for c in LEADING_COLUMNS + task_columns(df) + TRAILING_COLUMNS if c in df.columns]
    columns = ordered + [c for c in df.columns if c not in ordered]
    rows = df.assign(_ref=df["is_reference"].eq(True)).sort_values(
        ["_ref", "model", "samples_seen", "average"], ascending=[False, True, True, False], na_position="last", kind="stable"
    )
    return rows[columns].reset_index(drop=True)


def _named(board: pd.DataFrame) -> pd.DataFrame:
    """The board with each run's method shown as its configuration's label (harness.report.configs)."""
    return with_configs(board).assign(method=lambda t: t["label"])


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _configuration(rows: pd.DataFrame) -> dict[str, pd.Series]:
    """The leading columns of every markdown table: method, model and samples seen."""
    return {"method": rows["method"].map(_cell), "model": rows["model"].map(_cell),
            "samples seen": rows["samples_seen"].map(lambda n: f"{int(n):,}")}


def _to_markdown(table: pd.DataFrame) -> str:
    """Pipe table: the name columns left-aligned, numbers right-aligned and printed as formatted."""
    align = ["left" if c in TEXT_COLUMNS else "right" for c in table.columns]
    return table.to_markdown(index=False, colalign=align, disable_numparse=True)


def _has(rows: pd.DataFrame, column: str) -> bool:
    return column in rows and rows[column].notna().any()


def _gain_points(gain: pd.Series) -> pd.Series:
    """A gain (a fraction) as signed percentage points, '-' where there is none."""
    return gain.map(lambda g: "-" if pd.isna(g) else f"{100 * g:+.1f}")


def _markdown_table(rows: pd.DataFrame, tasks: list[str], first: str | None = None) -> str:
    """Pipe table of runs; `first` names a column shown before the configuration (e.g. the stage)."""
    table = pd.DataFrame({
        **({first: rows[first].map(_cell)} if first else {}),
        **_configuration(rows),
        "seed": rows["seed"].astype(int),
        "GFLOPs/pair": rows["gflops_per_pair"].map(lambda g: f"{g:.4g}"),
        "C_paper (GFLOPs)": rows["c_paper"].map(lambda c: f"{c:.2e}"),
        "C_total (GFLOPs)": rows["c_total"].map(lambda c: f"{c:.2e}"),
    })
    done = rows["status"].eq("done")
    for column in tasks + ["average"]:
        name = column.removeprefix("task:") + " (%)"
        table[name] = [f"{100 * v:.1f}" if ok else "-" for v, ok in zip(rows[column], done)]
    table.loc[~done.to_numpy(), "average (%)"] = [
        _cell(f"failed: {reason}" if isinstance(reason, str) and reason else "failed") for reason in rows.loc[~done, "error"]
    ]
    if _has(rows, "gain"):
        table["gain (pts)"] = _gain_points(rows["gain"])
        table["reducible var"] = rows["reducible_var"].map(lambda v: "-" if pd.isna(v) else f"{v:.3g}")
    disagree = [c for c in rows.columns if str(c).startswith("disagree:")]
    if disagree and rows[disagree].notna().any(axis=None):  # the weak-to-strong misfit, as the share of test images whose predicted class differs
        table["disagreement (%)"] = rows[disagree].mean(axis=1, skipna=True).map(
            lambda v: "-" if pd.isna(v) else f"{100 * v:.1f}")
    table["wall time (s)"] = rows["wall_time_s"].map(lambda t: f"{t:.1f}")
    return _to_markdown(table)


def seed_means(df: pd.DataFrame) -> pd.DataFrame:
    """Done non-reference runs grouped over seeds (model, samples seen, method configuration, shown by its label
    in column method, and reference): the number of seeds, mean and sample standard deviation of the average,
    mean task scores, gain, compute and wall time; best mean first within each (model, samples seen)."""
    runs = _named(df)
    runs = runs[runs["status"].eq("done") & ~runs["is_reference"].eq(True)]
    runs = runs.assign(reference=runs["reference"].fillna(NONE) if "reference" in runs else NONE)
    # seeds repeat a configuration; a reference or a stage changes it
    keys = ["model", "samples_seen", "method", "reference", "stage"]
    grouped = runs.groupby(keys, sort=False)
    extra = [c for c in ("gain", "reducible_var", tuning.TUNING) if c in runs]
    table = grouped[task_columns(runs) + ["average", *extra, "c_paper", "c_total", "wall_time_s"]].mean()
    table.insert(0, "seeds", grouped["seed"].count())
    table.insert(1, "average_std", grouped["average"].std())
    table = table.reset_index()
    return table.sort_values(["model", "samples_seen", "average"], ascending=[True, True, False]).reset_index(drop=True)


def _stages_shown(means: pd.DataFrame) -> bool:
    """Whether the means need a stage column: a configuration repeated in two stages (e.g. tuned to its default)."""
    return means.duplicated(["model", "samples_seen", "method", "reference"]).any()


def _seed_means_markdown(means: pd.DataFrame, refs: dict[str, str]) -> str:
    several = means["reference"].nunique() > 1
    table = pd.DataFrame({
        **({"stage": means["stage"].map(_cell)} if _stages_shown(means) else {}),
        **_configuration(means), **({"reference": means["reference"].map(lambda r: _cell(refs.get(r, r)))}
                                    if several else {}),
        "seeds": means["seeds"].astype(int),
        "average (%)": [f"{100 * m:.1f} ± {100 * sd:.1f}" if n > 1 else f"{100 * m:.1f}"
                        for m, sd, n in zip(means["average"], means["average_std"], means["seeds"])],
    })
    for column in task_columns(means):
        table[column.removeprefix("task:") + " (%)"] = means[column].map(lambda v: f"{100 * v:.1f}")
    if _has(means, "gain"):
        table["gain (pts)"] = _gain_points(means["gain"])
    table["C_total / C_paper"] = (means["c_total"] / means["c_paper"]).map(lambda r: f"{r:.2f}")
    if _has(means, tuning.TUNING):
        table["tuning (GFLOPs)"] = means[tuning.TUNING].map(lambda v: "-" if pd.isna(v) else f"{v:.3g}")
    table["wall time (s)"] = means["wall_time_s"].map(lambda t: f"{t:.1f}")
    return _to_markdown(table)


def fits_frame(doc: dict[str, Any]) -> pd.DataFrame:
    """One row per fit of an analysis document (scaling.analyse): parameters, intervals, held-out error."""
    rows = []
    for fit in doc["fits"]:
        held = fit["holdout"]
        rows.append({"method": fit["method"], **({"model": fit["model"]} if fit["model"] else {}),
                     "form": fit["form"], "a": fit["a"], "a 95% CI": interval_text(fit["ci"].get("a"), ".4g").strip(),
                     "b": fit["b"], "b 95% CI": interval_text(fit["ci"].get("b"), ".4f").strip(), "c": fit["c"],
                     "points": fit["n_points"], "r2 (log)": fit["r2"],
                     "held-out error (%)": 100 * held["relative_error"][-1] if held else None})
    return pd.DataFrame(rows)


def savings_frame(doc: dict[str, Any]) -> pd.DataFrame:
    """One row per saving ratio of an analysis document: method, target error, ratio to the baseline, interval;
    a baseline column when the baseline method has several configurations."""
    several = len({r["baseline"] for r in doc["savings"]}) > 1
    return pd.DataFrame([{"method": r["method"], **({"model": r["model"]} if "model" in r else {}),
                          **({"baseline": r["baseline"]} if several else {}), "target error": r["target_error"],
                          "ratio" if several else "ratio to " + r["baseline"]: r["ratio"],
                          "95% CI": interval_text(r.get("ci"), ".3g").strip(), "extrapolated": r["extrapolated"],
                          "verdict": r["verdict"]}
                         for r in doc["savings"]])


def _analysis_markdown(analysis: dict[str, Any]) -> list[str]:
    """Markdown sections of the scaling analysis: fits per compute axis, saving ratios, data efficiency."""
    parts = []
    for column, label in COMPUTE_AXES.items():
        doc = analysis[column]
        parts.append(f"## Scaling fits against {label}")
        parts.append(f"{doc['form']} form on each method's {doc['points']} points; seeds averaged per configuration; "
                     f"95% intervals from {doc['n_boot']} bootstrap replicates; held-out error: prediction of the "
                     "largest compute from a fit without it.")
        fits = fits_frame(doc)
        if not fits.empty:
            parts.append(fits.to_markdown(index=False, floatfmt=".4g"))
        parts += [f"- {method}: no fit: {_cell(reason)}" for method, reason in doc["skipped"].items()]
        if doc["savings"]:
            parts += [f"Compute to reach a target error relative to {doc['baseline']} "
                      f"(< 1 saves compute; {SAVING_NOTE}):",
                      savings_frame(doc).to_markdown(index=False, floatfmt=".4g")]
    data = analysis["data_efficiency"]
    if data["savings"]:
        parts += ["## Data efficiency", "Samples seen to reach a target error relative to the baseline on the same "
                  f"model (error against samples seen fitted per method and model size; {SAVING_NOTE}):",
                  savings_frame(data).to_markdown(index=False, floatfmt=".4g")]
    return parts


def leaderboard_markdown(df: pd.DataFrame, title: str, analysis: dict[str, Any] | None = None) -> str:
    """Markdown leaderboard: title, compute note, a reference-model table, means over seeds (when a
    configuration has several), every sweep run, then, when given, the paired comparisons with the baseline
    and the scaling analysis."""
    board = leaderboard(df)
    tasks = task_columns(board)
    is_ref = board["is_reference"].eq(True)
    named = _named(board)
    parts = [f"# {title}", *(_verdict_markdown(analysis) if analysis else []), COMPUTE_NOTE]
    if _has(board, "gain"):
        parts.append(GAIN_NOTE)
    if is_ref.any():
        refs = named[is_ref]
        parts += ["## Reference models", _markdown_table(refs, tasks, "stage" if len(refs) > 1 else None)]
    means = seed_means(board)
    if (means["seeds"] > 1).any():
        parts += ["## Mean over seeds", "average: mean ± sample standard deviation over seeds.",
                  _seed_means_markdown(means, reference_labels(board))]
    parts += ["## Runs", _markdown_table(named[~is_ref], tasks) if (~is_ref).any() else "No runs."]
    if analysis:
        parts += [f"## Comparisons with {analysis['comparisons']['baseline']}",
                  *compare.comparisons_markdown(analysis["comparisons"]), *_analysis_markdown(analysis)]
        if "weak_to_strong" in analysis:
            parts += w2s.predictors_markdown(analysis["weak_to_strong"])
        if "tuning" in analysis:
            parts += tuning.markdown(analysis["tuning"])
        if analysis.get("provenance"):
            parts += ["## How these were made", MADE_NOTE, made_frame(analysis["provenance"]).to_markdown(index=False)]
    return "\n\n".join(parts) + "\n"


def made_frame(made: dict[str, Any]) -> pd.DataFrame:
    """The provenance summary as a two-column table (what, value), several values joined by commas."""
    return pd.DataFrame({"what": list(made), "value": [
        ", ".join(map(str, v)) if isinstance(v, list) else str(v) for v in made.values()]})


def _verdict_markdown(analysis: dict[str, Any]) -> list[str]:
    """The report's opening: for each method against the baseline, the compute ratio at equal C_paper and at
    equal C_total for the middle target error, with its 95% interval and verdict; or why there is none."""
    lines = []
    for column, name in (("c_paper", "C_paper"), ("c_total", "C_total")):
        savings = analysis.get(column, {}).get("savings", [])
        for method in dict.fromkeys(row["method"] for row in savings):
            rows = [row for row in savings if row["method"] == method]
            row = rows[len(rows) // 2]
            interval = "no interval" if row.get("ci") is None else f"95% CI [{row['ci'][0]:.2f}, {row['ci'][1]:.2f}]"
            lines.append(f"- **{method} vs {row['baseline']} at equal {name}: {row['verdict']}.** To reach error "
                         f"{row['target_error']:.3f}, {method} needs {row['ratio']:.2f}x {row['baseline']}'s compute "
                         f"({interval}; below 1 saves compute).")
    if not lines:
        return []
    return ["## Verdict", "From the scaling fits (error against compute on each configuration's frontier, seeds "
            "averaged, bootstrap over seeds); per-configuration paired comparisons are under Comparisons.",
            "\n".join(lines)]


def scaling_analysis(df: pd.DataFrame, opts: FitOptions = FitOptions()) -> tuple[dict[str, Any], dict[str, list]]:
    """The scaling.json document (paired comparisons with the baseline, fits on C_paper and C_total, data
    efficiency) and the fits per compute axis."""
    doc: dict[str, Any] = {"unit": "GFLOPs"}
    fits = {}
    for column in COMPUTE_AXES:
        doc[column], fits[column] = analyse(points_from_results(df, column), dataclasses.replace(opts, compute_col=column))
    doc["data_efficiency"] = data_savings(df, opts)
    doc["comparisons"] = compare.compare(df, opts.baseline)
    if _has(df, "gain"):
        doc["weak_to_strong"] = w2s.predictors(df)
    return doc, fits


def _percent(columns: list[str], rows: pd.DataFrame, name: str = "{} (%)") -> dict[str, pd.Series]:
    """Score columns (fractions) in percent, named like the markdown's, e.g. 'digits (%)'."""
    return {name.format(str(c).split(":", 1)[-1]): 100 * rows[c] for c in columns}


def _runs_table(title: str, rows: pd.DataFrame, tasks: list[str], refs: dict[str, str], note: str = "") -> html.Table:
    """Runs as the markdown shows them (scores in percent, gains in points, a failed run's reason in its status),
    per-task scores and run details folded."""
    scores = _percent(tasks, rows)
    task_gains = _percent([c for c in rows.columns if str(c).startswith("gain:")], rows, "gain {} (pts)")
    errors = rows["error"] if "error" in rows else pd.Series(None, index=rows.index)
    columns = {"stage": rows["stage"], "method": rows["method"], "model": rows["model"],
               "samples seen": rows["samples_seen"], "seed": rows["seed"], "GFLOPs/pair": rows["gflops_per_pair"],
               "C_paper (GFLOPs)": rows["c_paper"], "C_total (GFLOPs)": rows["c_total"], **scores,
               "average (%)": 100 * rows["average"]}
    if _has(rows, "gain"):
        columns.update({"gain (pts)": 100 * rows["gain"], "reducible var": rows["reducible_var"]})
    columns.update({"wall time (s)": rows["wall_time_s"],
                    "status": [f"{s}: {e}" if s != "done" and isinstance(e, str) and e else s
                               for s, e in zip(rows["status"], errors)]})
    if _has(rows, "reference"):
        columns["reference"] = rows["reference"].map(lambda r: refs.get(r, r)).fillna(NONE)
    frame = pd.DataFrame({**columns, **task_gains, "run id": rows["run_id"]})
    formats = {**RUN_FORMATS, **dict.fromkeys(scores, PERCENT), **dict.fromkeys(task_gains, POINTS)}
    folded = [*scores, "GFLOPs/pair", "reducible var", *task_gains, "run id"]
    return html.Table(title, frame, note, formats=formats, folded=folded,
                      fold_label="per-task scores and run details")


def _means_table(means: pd.DataFrame, refs: dict[str, str]) -> html.Table:
    """Means over seeds as the markdown shows them, the standard deviation in its own column to sort by."""
    scores = _percent(task_columns(means), means)
    columns = {**({"stage": means["stage"]} if _stages_shown(means) else {}), "method": means["method"],
               "model": means["model"], "samples seen": means["samples_seen"]}
    if means["reference"].nunique() > 1:
        columns["reference"] = means["reference"].map(lambda r: refs.get(r, r))
    columns.update({"seeds": means["seeds"], "average (%)": 100 * means["average"],
                    "sd (pts)": 100 * means["average_std"], **scores})
    if _has(means, "gain"):
        columns["gain (pts)"] = 100 * means["gain"]
    columns["C_total / C_paper"] = means["c_total"] / means["c_paper"]
    if _has(means, tuning.TUNING):
        columns["tuning (GFLOPs)"] = means[tuning.TUNING]
    columns["wall time (s)"] = means["wall_time_s"]
    formats = {"average (%)": PERCENT, "sd (pts)": PERCENT, **dict.fromkeys(scores, PERCENT), "gain (pts)": POINTS,
               "C_total / C_paper": ".2f", "tuning (GFLOPs)": ".3g", "wall time (s)": ".1f"}
    note = "sd: sample standard deviation of the average over seeds, in percentage points."
    return html.Table("Mean over seeds", pd.DataFrame(columns), note, formats=formats, folded=list(scores),
                      fold_label="per-task scores")


def _comparisons_table(doc: dict[str, Any], refs: dict[str, str]) -> html.Table:
    """The paired comparisons with readable references and, as in the markdown, the interval in one column."""
    frame = compare.comparisons_frame(doc)
    if "reference" in frame:
        frame["reference"] = frame["reference"].map(lambda r: refs.get(r, r))
    if not frame.empty:
        interval = [f"[{low:+.2f}, {high:+.2f}]" if np.isfinite(low) else "zero variance" if n > 1 else NONE
                    for low, high, n in zip(frame["95% CI low"], frame["95% CI high"], frame["seeds"])]
        at = frame.columns.get_loc("95% CI low")
        frame = frame.drop(columns=["95% CI low", "95% CI high"])
        frame.insert(at, "95% CI (pts)", interval)
    return html.Table(f"Comparisons with {doc['baseline']}", frame, "\n\n".join(compare.notes(doc)),
                      formats=COMPARISON_FORMATS)


def html_page(df: pd.DataFrame, title: str, analysis: dict[str, Any], images: list[Path]) -> str:
    """The report as one page: the headline tables first (means over seeds when a configuration has several, the
    comparisons with the baseline), then the reference models, every run, fits and saving ratios as sortable
    tables with the markdown's column names, and every PNG plot embedded."""
    board = leaderboard(df)
    is_ref = board["is_reference"].eq(True)
    named = _named(board)
    tasks = task_columns(board)
    refs = reference_labels(board)
    tables = []
    means = seed_means(board)
    if (means["seeds"] > 1).any():
        tables.append(_means_table(means, refs))
    tables += [_comparisons_table(analysis["comparisons"], refs),
               _runs_table("Reference models", named[is_ref], tasks, refs),
               _runs_table("Runs", named[~is_ref], tasks, refs, GAIN_NOTE if _has(board, "gain") else "")]
    for column, label in COMPUTE_AXES.items():
        tables.append(html.Table(f"Scaling fits against {label}", fits_frame(analysis[column])))
        if analysis[column]["savings"]:
            tables.append(html.Table(f"Compute-saving ratios ({label})", savings_frame(analysis[column])))
    if analysis["data_efficiency"]["savings"]:
        tables.append(html.Table("Data efficiency", savings_frame(analysis["data_efficiency"])))
    if analysis.get("weak_to_strong", {}).get("rows"):
        tables.append(html.Table("What predicts the weak-to-strong gain", w2s.predictors_frame(analysis["weak_to_strong"]),
                                 w2s.predictors_markdown(analysis["weak_to_strong"])[1]))
    if "tuning" in analysis:
        tables.append(html.Table("Tuning", tuning.frame(analysis["tuning"]), f"{tuning.RULE}\n\n{tuning.NOISE_NOTE}",
                                 formats={"validation (%)": ".2f", "sd (pts)": ".2f", "se (pts)": ".2f",
                                          "lead (pts)": "+.2f", "C_total (GFLOPs)": ".3g"}))
    if analysis.get("provenance"):
        tables.append(html.Table("How these were made", made_frame(analysis["provenance"]), MADE_NOTE))
    pictures = [html.Image(p.stem.replace("_", " "), p.read_bytes(), "image/png") for p in images]
    return html.render_html(title, COMPUTE_NOTE, tables, pictures)


def write_report(df: pd.DataFrame, out_dir: Path, title: str, runs_dir: Path | None = None,
                 made: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write leaderboard.csv/.md/.html, scaling.json and the plots (PNG and SVG) under out_dir, atomically
    (one writer at a time, which first removes the temporaries of a writer killed before: io.writing); `made`
    (harness.provenance.summarise) goes in every document as "How these were made".

    Plots: error vs C_paper (as the paper plots it) and vs C_total, data efficiency, per-task gain over clip
    (when clip runs match), the weak-to-strong gain (when runs have references) and training curves (read from
    `runs_dir`/runs/<id>/metrics.jsonl, when given). Returns the paths keyed by name.
    """
    out_dir = Path(out_dir)
    df, tuning_runs = tuning.split(df)  # scored on validation pairs: reported apart (harness.report.tuning)
    if len(tuning_runs):
        df = tuning.with_tuning_compute(df, tuning_runs)
    analysis, fits = scaling_analysis(df)
    if len(tuning_runs):
        analysis["tuning"] = tuning.summary(tuning_runs, runs_dir)
    if made:
        analysis["provenance"] = made
    figures = {PLOTS[column]: plots.scaling_figure(df, fits[column], title, column) for column in COMPUTE_AXES}
    figures["data_efficiency"] = plots.data_efficiency_figure(df, title)
    try:
        figures["task_gain_over_clip"] = plots.task_delta_heatmap(df, title)
    except ValueError:
        pass  # no clip runs to compare with: the heatmap has no rows
    if _has(df, "gain"):
        figures["weak_to_strong_gain"] = plots.gain_figure(df, title)
        figures["weak_to_strong_misfit"] = w2s.misfit_figure(df, title)
    if runs_dir is not None:
        figures["training_curves"] = plots.training_curves_figure(df, runs_dir, title)
    joint_doc, joint_figures = joint_plots.joint_report(df, title)
    if joint_doc is not None:  # 2+ model sizes with 2+ budgets each: E(F, D) and the compute-optimal allocation
        analysis["joint"] = joint_doc
        figures.update(joint_figures)
    paths: dict[str, Path] = {}
    with writing(out_dir, PLOTS_DIR):  # one report writer at a time; a killed one's temporaries go first
        for name, fig in figures.items():
            png, svg = plots.save_figure(fig, out_dir / PLOTS_DIR / name)
            paths[f"{name}_png"], paths[f"{name}_svg"] = png, svg
        pngs = [p for k, p in paths.items() if k.endswith("_png")]
        paths.update({
            "leaderboard_csv": write_text(out_dir / "leaderboard.csv", leaderboard(df).to_csv(index=False)),
            "leaderboard_md": write_text(out_dir / "leaderboard.md", leaderboard_markdown(df, title, analysis)),
            "leaderboard_html": write_text(out_dir / "leaderboard.html", html_page(df, title, analysis, pngs)),
            "scaling_json": write_json(out_dir / "scaling.json", analysis),
        })
    return paths
