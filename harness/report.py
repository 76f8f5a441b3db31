"""Write a sweep's report: leaderboard (CSV and Markdown), scaling-law fits (JSON) and a log-log plot."""
from __future__ import annotations

from pathlib import Path

import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.fit import PowerLaw, fit_methods
from harness.io import save_with, write_json, write_text

COMPUTE_NOTE = (
    "Compute: C_paper = forward GFLOPs per image-text pair of the trained model x samples seen "
    "(FLOPs counted with torch FlopCounterMode). C_total adds, in the same forward-GFLOP units, the learner's "
    "scoring passes over super-batches, the reference's forward passes, the reference's scoring pass over the "
    "pool and an equal share of a reference-feature cache."
)
COMPUTE_AXES = {"c_paper": "C_paper", "c_total": "C_total"}
PLOTS = {"c_paper": "scaling_law.png", "c_total": "scaling_law_c_total.png"}
LEADING_COLUMNS = ["stage", "method", "model", "samples_seen", "seed", "gflops_per_pair", "c_paper", "c_total"]
TRAILING_COLUMNS = ["average", "wall_time_s", "status", "error", "reference", "run_id"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]


def task_columns(df: pd.DataFrame) -> list[str]:
    """The `task:<name>` score columns, in table order."""
    return [c for c in df.columns if str(c).startswith("task:")]


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """Every row, reference runs first, then by model, samples seen and average (best first); readable column order."""
    ordered = [c for c in LEADING_COLUMNS + task_columns(df) + TRAILING_COLUMNS if c in df.columns]
    columns = ordered + [c for c in df.columns if c not in ordered]
    rows = df.assign(_ref=df["is_reference"].eq(True)).sort_values(
        ["_ref", "model", "samples_seen", "average"], ascending=[False, True, True, False], na_position="last", kind="stable"
    )
    return rows[columns].reset_index(drop=True)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _configuration(rows: pd.DataFrame) -> dict[str, pd.Series]:
    """The leading columns of every markdown table: method, model and samples seen."""
    return {"method": rows["method"].map(_cell), "model": rows["model"].map(_cell),
            "samples seen": rows["samples_seen"].map(lambda n: f"{int(n):,}")}


def _to_markdown(table: pd.DataFrame) -> str:
    """Pipe table: the two name columns left-aligned, numbers right-aligned and printed as formatted."""
    align = ["left", "left"] + ["right"] * (len(table.columns) - 2)
    return table.to_markdown(index=False, colalign=align, disable_numparse=True)


def _markdown_table(rows: pd.DataFrame, tasks: list[str]) -> str:
    table = pd.DataFrame({
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
    table["wall time (s)"] = rows["wall_time_s"].map(lambda t: f"{t:.1f}")
    return _to_markdown(table)


def seed_means(df: pd.DataFrame) -> pd.DataFrame:
    """Done non-reference runs grouped over seeds (method, model, samples seen): the number of seeds,
    mean and sample standard deviation of the average, mean task scores, compute and wall time;
    best mean first within each (model, samples seen)."""
    runs = df[df["status"].eq("done") & ~df["is_reference"].eq(True)]
    keys = ["model", "samples_seen", "method"]
    grouped = runs.groupby(keys, sort=False)
    table = grouped[task_columns(runs) + ["average", "c_paper", "c_total", "wall_time_s"]].mean()
    table.insert(0, "seeds", grouped["seed"].count())
    table.insert(1, "average_std", grouped["average"].std())
    table = table.reset_index()
    return table.sort_values(["model", "samples_seen", "average"], ascending=[True, True, False]).reset_index(drop=True)


def _seed_means_markdown(means: pd.DataFrame) -> str:
    table = pd.DataFrame({
        **_configuration(means), "seeds": means["seeds"].astype(int),
        "average (%)": [f"{100 * m:.1f} ± {100 * sd:.1f}" if n > 1 else f"{100 * m:.1f}"
                        for m, sd, n in zip(means["average"], means["average_std"], means["seeds"])],
    })
    for column in task_columns(means):
        table[column.removeprefix("task:") + " (%)"] = means[column].map(lambda v: f"{100 * v:.1f}")
    table["C_total / C_paper"] = (means["c_total"] / means["c_paper"]).map(lambda r: f"{r:.2f}")
    table["wall time (s)"] = means["wall_time_s"].map(lambda t: f"{t:.1f}")
    return _to_markdown(table)


def leaderboard_markdown(df: pd.DataFrame, title: str) -> str:
    """Markdown leaderboard: title, compute note, a reference-model table, means over seeds (when a
    configuration has several), then every sweep run."""
    board = leaderboard(df)
    tasks = task_columns(board)
    is_ref = board["is_reference"].eq(True)
    parts = [f"# {title}", COMPUTE_NOTE]
    if is_ref.any():
        parts += ["## Reference models", _markdown_table(board[is_ref], tasks)]
    means = seed_means(board)
    if (means["seeds"] > 1).any():
        parts += ["## Mean over seeds", "average: mean ± sample standard deviation over seeds.",
                  _seed_means_markdown(means)]
    parts += ["## Runs", _markdown_table(board[~is_ref], tasks) if (~is_ref).any() else "No runs."]
    return "\n\n".join(parts) + "\n"


def scaling_summary(fits: dict[str, tuple[list[PowerLaw], dict[str, str]]]) -> dict:
    """The scaling.json document: fits of error against each compute axis (column -> (fits, skipped))."""
    return {
        "unit": "GFLOPs",
        "form": "E = a * C^b",
        "points": "compute frontier of each method's done non-reference runs (lower error than every cheaper run)",
        **{column: {"fits": [fit.to_dict() for fit in found], "skipped": skipped}
           for column, (found, skipped) in fits.items()},
    }


def _fit_label(method: str, fit: PowerLaw | None) -> str:
    return f"{method}: $E = {fit.a:.3g} \\cdot C^{{{fit.b:.3f}}}$" if fit else f"{method}: no fit"


def scaling_figure(df: pd.DataFrame, fits: list[PowerLaw], title: str, compute_col: str = "c_paper") -> Figure:
    """Log-log plot of zero-shot error against compute: points per run, a line per method fitted on its frontier."""
    points = df[df["status"].eq("done") & ~df["is_reference"].eq(True)]
    points = points.assign(error=1.0 - points["average"]).dropna(subset=[compute_col, "error"])
    methods = sorted(df.loc[~df["is_reference"].eq(True), "method"].unique())
    models = sorted(points["model"].unique())
    colours = dict(zip(methods, sns.color_palette("tab10" if len(methods) <= 10 else "husl", len(methods))))
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(models)}
    by_method = {fit.method: fit for fit in fits}
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(7, 5), dpi=150, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    if not points.empty:
        sns.scatterplot(data=points, x=compute_col, y="error", hue="method", style="model", palette=colours,
                        markers=markers, s=50, ax=ax, legend=False)
    for fit in fits:
        c = np.geomspace(fit.compute_min, fit.compute_max, 50)
        ax.plot(c, fit.predict(c), color=colours[fit.method], linewidth=1.5)
    handles = [Line2D([], [], color=colours[m], label=_fit_label(m, by_method.get(m))) for m in methods]
    handles += [Line2D([], [], color="0.4", marker=markers[m], linestyle="none", label=m) for m in models]
    ax.set(xscale="log", yscale="log", xlabel=f"compute {COMPUTE_AXES[compute_col]} (GFLOPs)", ylabel="zero-shot error (1 - average)",
           title=f"{title}: error vs compute\nlines: power laws fitted on each method's compute frontier")
    ax.grid(True, which="both", alpha=0.3)
    plain = mticker.FuncFormatter(lambda v, _: f"{v:.2g}")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if high < 10 * low else mticker.NullFormatter())
    if handles:
        ax.legend(handles=handles, fontsize="small", loc="best")
    return fig


def write_report(df: pd.DataFrame, out_dir: Path, title: str) -> dict[str, Path]:
    """Write leaderboard.csv, leaderboard.md, scaling.json and the plots (error vs C_paper, as the paper
    plots it, and vs C_total) under out_dir, atomically.

    Returns their paths keyed "leaderboard_csv", "leaderboard_md", "scaling_json", "scaling_plot",
    "scaling_plot_c_total".
    """
    out_dir = Path(out_dir)
    fits = {column: fit_methods(df, compute_col=column) for column in COMPUTE_AXES}
    paths = {
        "leaderboard_csv": write_text(out_dir / "leaderboard.csv", leaderboard(df).to_csv(index=False)),
        "leaderboard_md": write_text(out_dir / "leaderboard.md", leaderboard_markdown(df, title)),
        "scaling_json": write_json(out_dir / "scaling.json", scaling_summary(fits)),
    }
    for column, (found, _) in fits.items():
        fig = scaling_figure(df, found, title, column)
        key = "scaling_plot" if column == "c_paper" else f"scaling_plot_{column}"
        paths[key] = save_with(out_dir / "plots" / PLOTS[column], lambda p, fig=fig: fig.savefig(p, format="png"))
    return paths
