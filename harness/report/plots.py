"""Paper figures for a sweep: error vs compute with fitted laws, error vs samples seen per model size, per-task
gains over a baseline, training curves, and the weak-to-strong gain against the reducible-loss variance. Runs are
coloured and named by method configuration (harness.report.configs), e.g. 'drrho (tau=0.1)'."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.io import read_jsonl, save_with
from harness.report.configs import with_configs
from harness.report.fit import PowerLaw

COMPUTE_AXES = {"c_paper": "C_paper", "c_total": "C_total"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
# DRRho paper (METHODS.md): ImageNet-1k zero-shot error against C_paper in GFLOPs, fitted on its compute frontier.
PAPER_FITS = {"OpenCLIP (DRRho paper)": (5.77, -0.116), "DRRho-CLIP (DRRho paper)": (7.15, -0.127)}
PAPER_TASK = "task:imagenet1k"
LINESTYLES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}
MATCH_KEYS = ["model", "samples_seen", "seed"]
MAX_COLUMNS = 4


def task_columns(df: pd.DataFrame) -> list[str]:
    """The `task:<name>` score columns, in table order."""
    return [c for c in df.columns if str(c).startswith("task:")]


def method_colours(methods: list[str]) -> dict[str, tuple]:
    """One colour per method (or configuration label) over the sorted names (tab10, husl past ten), so a method
    looks the same in every figure."""
    names = sorted(set(methods))
    return dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))))


def _sweep_colours(df: pd.DataFrame) -> dict[str, tuple]:
    """Colours over every non-reference configuration of the table, plotted or not, so figures of one sweep agree."""
    return method_colours(_labels(df))


def _labels(df: pd.DataFrame) -> list[str]:
    """The labels of the table's non-reference configurations, sorted."""
    runs = with_configs(df)
    return sorted(runs.loc[~runs["is_reference"].eq(True), "label"].dropna().astype(str).unique())


def _done_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Done non-reference runs, with their configuration's label (labels drawn over the whole table)."""
    runs = with_configs(df)
    return runs[runs["status"].eq("done") & ~runs["is_reference"].eq(True)]


def _models_by_size(runs: pd.DataFrame) -> list[str]:
    """Model names from the cheapest forward pass to the dearest (name breaks ties)."""
    gflops = runs.groupby("model")["gflops_per_pair"].mean()
    return sorted(gflops.index, key=lambda m: (gflops[m], m))


def _figure(panels: int, title: str, panel_size: tuple[float, float] = (4.0, 3.4), **subplots) -> tuple[Figure, list[Axes]]:
    """A constrained-layout Agg figure in whitegrid style, panels in rows of at most MAX_COLUMNS (spares removed)."""
    columns = min(panels, MAX_COLUMNS)
    rows = math.ceil(panels / columns)
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows + 0.6), dpi=150, layout="constrained")
        FigureCanvasAgg(fig)
        axes = list(fig.subplots(rows, columns, squeeze=False, **subplots).flat)
    for spare in axes[panels:]:
        spare.remove()
    fig.suptitle(title)
    return fig, axes[:panels]


def _log_formatters(ax: Axes) -> None:
    """Plain tick labels on a log error axis (minor ones too when it spans less than a decade)."""
    plain = mticker.FuncFormatter(lambda v, _: f"{v:.2g}")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if high < 10 * low else mticker.NullFormatter())


def _fit_label(method: str, fit: PowerLaw | None) -> str:
    if fit is None:
        return f"{method}: no fit"
    floor = f" + {fit.c:.3g}" if fit.form == "saturating" else ""
    ci = fit.ci.get("b")
    band = f", b in [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"{method}: $E = {fit.a:.3g} \\cdot C^{{{fit.b:.3f}}}${floor}{band}"


def scaling_figure(df: pd.DataFrame, fits: list[PowerLaw], title: str, compute_col: str = "c_paper") -> Figure:
    """Log-log error against compute: a point per run, per method configuration its fitted law (fits named by
    label, as harness.report.fit gives them) over the fitted range with a 95% bootstrap band; the DRRho paper's
    published laws dashed when the score is ImageNet-1k alone on C_paper."""
    points = _done_runs(df)
    points = points.assign(error=1.0 - points["average"]).dropna(subset=[compute_col, "error"])
    methods = _labels(df)
    models = sorted(points["model"].unique())
    colours = _sweep_colours(df)
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(models)}
    by_method = {fit.method: fit for fit in fits}
    fig, (ax,) = _figure(1, f"{title}: error vs compute", (7.0, 5.0))
    if not points.empty:
        sns.scatterplot(data=points, x=compute_col, y="error", hue="label", style="model", palette=colours,
                        markers=markers, s=50, ax=ax, legend=False)
    for fit in fits:
        c = np.geomspace(fit.compute_min, fit.compute_max, 50)
        ax.plot(c, fit.predict(c), color=colours[fit.method], linewidth=1.5)
        if fit.ci and fit.boot is not None:
            curves = fit.boot[:, 0:1] * c[None, :] ** fit.boot[:, 1:2] + fit.boot[:, 2:3]
            low, high = np.percentile(curves, [2.5, 97.5], axis=0)
            ax.fill_between(c, low, high, color=colours[fit.method], alpha=0.15, linewidth=0)
    handles = [Line2D([], [], color=colours[m], label=_fit_label(m, by_method.get(m))) for m in methods]
    handles += [Line2D([], [], color="0.4", marker=markers[m], linestyle="none", label=m) for m in models]
    if compute_col == "c_paper" and task_columns(df) == [PAPER_TASK] and not points.empty:
        c = np.geomspace(points[compute_col].min(), points[compute_col].max(), 50)
        for (name, (a, b)), shade in zip(PAPER_FITS.items(), ("0.25", "0.55")):
            ax.plot(c, a * c**b, color=shade, linestyle="--", linewidth=1.2)
            handles.append(Line2D([], [], color=shade, linestyle="--", label=f"{name}: $E = {a} \\cdot C^{{{b}}}$"))
    ax.set(xscale="log", yscale="log", xlabel=f"compute {COMPUTE_AXES.get(compute_col, compute_col)} (GFLOPs)",
           ylabel="zero-shot error (1 - average)",
           title="lines: laws fitted on each method's compute frontier; bands: 95% bootstrap")
    ax.grid(True, which="both", alpha=0.3)
    _log_formatters(ax)
    if handles:
        ax.legend(handles=handles, fontsize="small", loc="best")
    return fig


def gain_figure(df: pd.DataFrame, title: str) -> Figure:
    """Weak-to-strong gain (run minus its reference, average score in points) against the variance of the
    held-out reducible loss l(w) - l(w_ref), a point per run coloured by configuration and shaped by reference:
    DRRho's generalization bound shrinks with that variance, whatever the reference's own accuracy."""
    runs = _done_runs(df)
    if "reducible_var" not in runs:
        return _message(f"{title}: weak-to-strong gain", "no run with a reference")
    runs = runs.dropna(subset=["reducible_var", "gain"])
    if runs.empty:
        return _message(f"{title}: weak-to-strong gain", "no run with a reference")
    colours = _sweep_colours(df)
    labels = sorted(runs["reference"].astype(str).unique())
    markers = {r: MARKERS[i % len(MARKERS)] for i, r in enumerate(labels)}
    fig, (ax,) = _figure(1, f"{title}: weak-to-strong gain vs reducible-loss variance", (7.0, 5.0))
    for row in runs.itertuples():
        ax.scatter(row.reducible_var, 100 * row.gain, color=colours[row.label], marker=markers[str(row.reference)],
                   s=45, edgecolor="0.2", linewidth=0.4)
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set(xlabel="variance of l(w) - l(w_ref) on the held-out pairs", ylabel="gain over the reference (points)")
    handles = [Line2D([], [], color=colours[m], marker="o", linestyle="none", label=m)
               for m in sorted(runs["label"].unique())]
    handles += [Line2D([], [], color="0.4", marker=markers[r], linestyle="none", label=f"ref {r}") for r in labels]
    ax.legend(handles=handles, fontsize="x-small", loc="best")
    return fig


def _message(title: str, text: str) -> Figure:
    """A one-panel figure saying why there is nothing to plot."""
    fig, (ax,) = _figure(1, title)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def data_efficiency_figure(df: pd.DataFrame, title: str) -> Figure:
    """Zero-shot error vs samples seen (log-log), a panel per model size and a line per method configuration:
    mean over seeds with a sample-standard-deviation bar, so data efficiency compares within a model size."""
    runs = _done_runs(df).assign(error=lambda r: 1.0 - r["average"]).dropna(subset=["error", "samples_seen"])
    if runs.empty:
        return _message(f"{title}: error vs samples seen", "no done runs")
    colours = _sweep_colours(df)
    stats = runs.groupby(["model", "label", "samples_seen"])["error"].agg(["mean", "std"]).reset_index()
    models = _models_by_size(runs)
    fig, axes = _figure(len(models), f"{title}: error vs samples seen (mean ± sd over seeds)", sharey=True)
    for ax, model in zip(axes, models):
        for method, points in stats[stats["model"].eq(model)].groupby("label"):
            x, y, sd = (points[c].to_numpy(float) for c in ("samples_seen", "mean", "std"))
            ax.errorbar(x, y, yerr=np.nan_to_num(sd), color=colours[method],
                        marker="o", markersize=4, capsize=3, linewidth=1.5, label=method)
        gflops = runs.loc[runs["model"].eq(model), "gflops_per_pair"].mean()
        ax.set(xscale="log", yscale="log", xlabel="samples seen", title=f"{model} ({gflops:.3g} GFLOPs/pair)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes:  # after every panel is drawn: the shared limits are final
        _log_formatters(ax)
    axes[0].set_ylabel("zero-shot error (1 - average)")
    plotted = sorted(stats["label"].unique())
    axes[0].legend(handles=[Line2D([], [], color=colours[m], marker="o", label=m) for m in plotted], fontsize="small")
    return fig


def _task_deltas(df: pd.DataFrame, baseline: str = "clip") -> tuple[pd.DataFrame, pd.Series]:
    """Per method configuration (by label), mean over its runs matched with a baseline run (model, samples seen,
    seed; the baseline's configurations averaged) of the score minus the baseline's, in percentage points, per task
    and average; also the number matched."""
    runs = _done_runs(df)
    columns = task_columns(df) + ["average"]
    base = runs[runs["method"].eq(baseline)]
    if base.empty:
        found = sorted(runs["method"].unique())
        raise ValueError(f"baseline method {baseline!r} has no done runs; methods with done runs: {found}")
    base = base.groupby(MATCH_KEYS)[columns].mean().reset_index()
    matched = runs[~runs["method"].eq(baseline)].merge(base, on=MATCH_KEYS, suffixes=("", "@base"))
    if matched.empty:
        raise ValueError(f"no done run of another method matches a {baseline!r} run on (model, samples_seen, seed)")
    deltas = pd.DataFrame({c.removeprefix("task:"): 100 * (matched[c] - matched[c + "@base"]) for c in columns})
    grouped = deltas.groupby(matched["label"])
    return grouped.mean(), grouped.size()


def task_delta_heatmap(df: pd.DataFrame, title: str, baseline: str = "clip") -> Figure:
    """Heatmap of each method's per-task gain over the baseline (percentage points, centred at 0),
    so where a method helps or hurts reads at a glance."""
    deltas, counts = _task_deltas(df, baseline)
    deltas.index = [f"{m} (n={counts[m]})" for m in deltas.index]
    finite = np.abs(deltas.to_numpy()[np.isfinite(deltas.to_numpy())])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fig, (ax,) = _figure(1, f"{title}: score minus {baseline} (percentage points)",
                         (2.6 + 0.9 * deltas.shape[1], 1.4 + 0.45 * deltas.shape[0]))
    sns.heatmap(deltas, ax=ax, cmap="vlag", center=0.0, vmin=-limit, vmax=limit, annot=True, fmt=".1f",
                linewidths=0.5, cbar_kws={"label": f"method - {baseline} (pp)"})
    ax.set(xlabel="task", ylabel="method (n matched runs)")
    ax.tick_params(axis="x", labelrotation=30)
    ax.tick_params(axis="y", labelrotation=0)
    return fig


def read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics.jsonl as a table, skipping lines that do not parse (a killed writer leaves a partial last
    line); empty when the file is missing."""
    return pd.DataFrame.from_records(read_jsonl(path))


def _series(log: pd.DataFrame, key: str) -> np.ndarray:
    """[n, 2] points (samples seen, the key's value) where both are numbers; temperature for logit_scale.
    Plain numpy: a report reads the logs of every run, thousands in a big sweep."""
    if "samples_seen" not in log or key not in log:
        return np.empty((0, 2))
    points = np.column_stack([pd.to_numeric(log["samples_seen"], errors="coerce").to_numpy(float),
                              pd.to_numeric(log[key], errors="coerce").to_numpy(float)])
    points = points[np.isfinite(points).all(axis=1)]
    if key == "logit_scale":
        points[:, 1] = 1.0 / points[:, 1]
    return points


def training_curves_figure(df: pd.DataFrame, results_dir: Path, title: str,
                           keys: Sequence[str] = ("loss", "logit_scale", "noisy_fraction")) -> Figure:
    """A panel per logged key against samples seen, a line per done run coloured by configuration and styled by model
    size, to see how the objective, the temperature (1 / logit_scale) and batch noise evolve."""
    runs = _done_runs(df)
    logs = {row.run_id: read_metrics(Path(results_dir) / "runs" / str(row.run_id) / "metrics.jsonl")
            for row in runs.itertuples()}
    curves = {key: {run: points for run, log in logs.items() if len(points := _series(log, key))} for key in keys}
    present = [key for key in keys if curves[key]]
    if not present:
        return _message(f"{title}: training curves", "no training logs")
    colours = _sweep_colours(df)
    models = _models_by_size(runs)
    styles = dict(zip(models, list(LINESTYLES) * len(models)))
    method, model = runs.set_index("run_id")["label"], runs.set_index("run_id")["model"]
    key_text = ", ".join(f"{m} {LINESTYLES[styles[m]]}" for m in models)
    fig, axes = _figure(len(present), f"{title}: training curves\nline style by model: {key_text}")
    for ax, key in zip(axes, present):
        groups: dict[tuple[str, str], list[np.ndarray]] = {}
        for run, points in curves[key].items():
            groups.setdefault((method[run], model[run]), []).append(points)
        for (m, size), lines in groups.items():  # one collection per method and model: fast with thousands of runs
            ax.add_collection(LineCollection(lines, colors=colours[m], linestyles=styles[size], linewidths=1.2,
                                             alpha=0.85))
        ax.autoscale_view()
        name = "temperature" if key == "logit_scale" else key.replace("_", " ")
        ax.set(xlabel="samples seen", ylabel=name, title=name)
    shown = sorted({method[run] for key in present for run in curves[key]})
    axes[0].legend(handles=[Line2D([], [], color=colours[m], label=m) for m in shown], fontsize="small")
    return fig


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write <stem>.png (to look at) and <stem>.svg (for the paper), each atomically; their paths."""
    stem = Path(stem)
    return [save_with(stem.with_name(f"{stem.name}.{fmt}"), lambda p, fmt=fmt: fig.savefig(p, format=fmt))
            for fmt in ("png", "svg")]
