"""Paper figures for a sweep: error vs compute with fitted laws (or, at one compute level, each configuration's
score with its interval), error vs samples seen per model size, per-task gains over a baseline, training curves, and
the weak-to-strong gain against the reducible-loss variance. Runs are coloured and named by method configuration
(harness.report.configs), e.g. 'drrho (tau=0.1)'; every figure shares one style and keeps its legend off the data."""
from __future__ import annotations

import functools
import math
import re
import textwrap
from pathlib import Path
from typing import Callable, Sequence

import matplotlib as mpl
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from scipy import stats

from harness.io import read_jsonl, save_with
from harness.report.configs import with_configs
from harness.report.fit import CI_LEVEL, MIN_BOOT_SHARE, PowerLaw, frontier_mask, points_from_results
from harness.store.rundir import RunDir

COMPUTE_AXES = {"c_paper": "C_paper", "c_total": "C_total"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
# Paul Tol's colour-blind-safe qualitative colours (CARTO's "Safe" set), dark ones first, neighbours far apart.
SAFE_COLOURS = ["#332288", "#CC6677", "#117733", "#DDCC77", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499",
                "#661100", "#6699CC", "#888888"]
STYLE = {"font.size": 9.0, "axes.titlesize": 10.0, "axes.labelsize": 9.0, "xtick.labelsize": 8.0,
         "ytick.labelsize": 8.0, "legend.fontsize": 8.0, "figure.titlesize": 11.0, "legend.frameon": False}
CHAR_WIDTH = 0.6  # a DejaVu Sans character's mean width in ems (a little over), to wrap titles
# DRRho paper (METHODS.md): ImageNet-1k zero-shot error against C_paper in GFLOPs, fitted on its compute frontier.
PAPER_FITS = {"OpenCLIP (DRRho paper)": (5.77, -0.116), "DRRho-CLIP (DRRho paper)": (7.15, -0.127)}
PAPER_TASK = "task:imagenet1k"
LINESTYLES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}
MATCH_KEYS = ["model", "samples_seen", "seed"]
MAX_COLUMNS = 4
RUN_HASH = re.compile(r"-[0-9a-f]{10}$")  # the tail harness.grid.spec.run_id puts on every run id


def task_columns(df: pd.DataFrame) -> list[str]:
    """The `task:<name>` score columns, in table order."""
    return [c for c in df.columns if str(c).startswith("task:")]


def method_colours(methods: list[str]) -> dict[str, tuple]:
    """One colour per method (or configuration label) over the sorted names, colour-blind safe up to twelve
    (SAFE_COLOURS; husl past that), so a method looks the same in every figure."""
    names = sorted(set(methods))
    palette = SAFE_COLOURS if len(names) <= len(SAFE_COLOURS) else "husl"
    return dict(zip(names, sns.color_palette(palette, len(names))))


def reference_labels(df: pd.DataFrame) -> dict[str, str]:
    """A readable name for each reference run id of the table: its stage and model, e.g. 'ref-m-30k-noisy (tiny-m)',
    when its row is in the table (with method and samples seen where the stage holds several references), else the
    id without its hash; an id whose name another reference shares keeps its full id."""
    ids = sorted(df["reference"].dropna().astype(str).unique()) if "reference" in df else []
    rows = df.drop_duplicates("run_id").set_index("run_id") if "run_id" in df else pd.DataFrame()
    per_stage = rows.loc[rows.index.isin(ids), "stage"].value_counts() if len(rows) else pd.Series(dtype=int)
    names = {}
    for ref in ids:
        if ref not in rows.index:
            names[ref] = RUN_HASH.sub("", ref)
            continue
        row = rows.loc[ref]
        detail = (f"{row['model']}" if per_stage[row["stage"]] == 1
                  else f"{row['method']} {row['model']}, {int(row['samples_seen']):,} samples")
        names[ref] = f"{row['stage']} ({detail})"
    counts = pd.Series(names).value_counts()
    return {ref: name if counts[name] == 1 else ref for ref, name in names.items()}


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


def _styled(build: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build a figure in the report's one style (seaborn whitegrid, STYLE's font sizes), whatever the caller's
    rcParams: artists take their fonts when they are made."""
    @functools.wraps(build)
    def styled(*args, **kwargs) -> Figure:
        with sns.axes_style("whitegrid"), mpl.rc_context(STYLE):
            return build(*args, **kwargs)
    return styled


def _wrap(text: str, width_in: float, size_pt: float) -> str:
    """`text` wrapped, each line kept to the given width in inches at the given font size."""
    chars = max(20, int(width_in * 72 / (CHAR_WIDTH * size_pt)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _figure(panels: int, title: str, panel_size: tuple[float, float] = (4.0, 3.4), **subplots) -> tuple[Figure, list[Axes]]:
    """A constrained-layout Agg figure, panels in rows of at most MAX_COLUMNS (spares removed), its title wrapped
    to the figure's width."""
    columns = min(panels, MAX_COLUMNS)
    rows = math.ceil(panels / columns)
    width = max(panel_size[0] * columns, 5.0)
    fig = Figure(figsize=(width, panel_size[1] * rows + 0.6), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, columns, squeeze=False, **subplots).flat)
    for spare in axes[panels:]:
        spare.remove()
    fig.suptitle(_wrap(title, width, STYLE["figure.titlesize"]))
    return fig, axes[:panels]


def _subtitle(ax: Axes, text: str) -> None:
    """An axes title wrapped to the axes' width as the layout leaves it (call once the tick labels are set)."""
    fig = ax.figure
    fig.get_layout_engine().execute(fig)
    ax.set_title(_wrap(text, ax.get_position().width * fig.get_figwidth(), STYLE["axes.titlesize"]))


def _legend(fig: Figure, handles: list) -> None:
    """A legend under the panels, outside the data, in as many columns as the figure's width holds (labels
    measured by the renderer); the figure grows by the legend's rows."""
    if not handles:
        return
    renderer, size = fig.canvas.get_renderer(), STYLE["legend.fontsize"]
    font = FontProperties(size=size)
    longest = max(renderer.get_text_width_height_descent(str(h.get_label()), font, ismath="$" in str(h.get_label()))[0]
                  for h in handles) / fig.dpi
    column_in = longest + 5.0 * size / 72  # the handle, its padding and the column spacing: about 5 ems
    columns = max(1, min(len(handles), int(0.95 * fig.get_figwidth() // column_in)))
    fig.set_figheight(fig.get_figheight() + 0.2 * math.ceil(len(handles) / columns))
    fig.legend(handles=handles, loc="outside lower center", ncols=columns)


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


def _amount(value: float) -> str:
    """A compute amount to read at a glance: whole numbers with thousands separators from 100, else 3 digits."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _band(fit: PowerLaw, compute: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The 95% bootstrap band of a fitted law over `compute`, capped at error 1; None without usable replicates."""
    if not _has_band(fit):
        return None
    curves = fit.boot[:, 0:1] * compute[None, :] ** fit.boot[:, 1:2] + fit.boot[:, 2:3]
    tail = 100 * (1 - CI_LEVEL) / 2
    low, high = np.percentile(curves, [tail, 100 - tail], axis=0)
    return low, np.minimum(high, 1.0)


def _has_band(fit: PowerLaw) -> bool:
    """Whether enough bootstrap replicates were fitted for an interval (harness.report.fit.MIN_BOOT_SHARE)."""
    return bool(fit.ci) and fit.boot is not None


def _band_note(fits: list[PowerLaw]) -> str:
    """Why fits have no bootstrap band, for the subtitle ('' when every fit has one)."""
    missing = [fit for fit in fits if not _has_band(fit)]
    unrun = [fit.method for fit in missing if fit.n_boot + fit.n_boot_failed == 0]
    few = [f"{fit.method} ({fit.n_boot} of {fit.n_boot + fit.n_boot_failed})" for fit in missing
           if fit.n_boot + fit.n_boot_failed]
    return "; ".join([*([f"no band for {', '.join(unrun)}: no bootstrap run"] if unrun else []),
                      *([f"no band for {', '.join(few)}: too few bootstrap refits succeeded "
                         f"(a band needs {MIN_BOOT_SHARE:.0%})"] if few else [])])


def _fitted_runs(df: pd.DataFrame, fits: list[PowerLaw], compute_col: str) -> pd.Index:
    """Row labels of the runs a fit used: every run of a configuration (seeds averaged) that its method's fit
    selected, the compute frontier unless the fit took all points."""
    table = points_from_results(df, compute_col)
    selection = {fit.method: fit.points for fit in fits}
    fitted = []
    for method, runs in table[table["method"].isin(list(selection))].groupby("method"):
        means = runs.groupby("config")[["compute", "error"]].mean()
        keep = (np.ones(len(means), bool) if selection[method] == "all"
                else frontier_mask(means["compute"], means["error"]))
        fitted.append(runs.index[runs["config"].isin(means.index[keep])])
    return pd.Index(np.concatenate(fitted)) if fitted else pd.Index([])


def _error_limits(values: list[np.ndarray]) -> tuple[float, float]:
    """Log-axis limits around the positive values given (points and bands), padded 5%, never above error 1
    unless a value is."""
    finite = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in values])
    low, high = float(finite.min()), float(finite.max())
    pad = (high / low) ** 0.05 if high > low else 1.05
    return low / pad, high * pad if high > 1.0 else min(high * pad, 1.0)


@_styled
def scaling_figure(df: pd.DataFrame, fits: list[PowerLaw], title: str, compute_col: str = "c_paper") -> Figure:
    """Log-log error against compute: a point per run (filled where its method's fit used it, hollow otherwise),
    per method configuration its fitted law (fits named by label, as harness.report.fit gives them) over the
    fitted range with a 95% bootstrap band, the subtitle saying why a band is missing; the DRRho paper's published
    laws dashed when the score is ImageNet-1k alone on C_paper. One compute level: `score_figure` instead."""
    points = _done_runs(df)
    points = points.assign(error=1.0 - points["average"]).dropna(subset=[compute_col, "error"])
    if points.empty:
        return _message(f"{title}: error vs compute", "no done runs")
    if points["c_paper"].nunique() == 1:
        return score_figure(df, title, compute_col)
    methods = _labels(df)
    models = _models_by_size(points)
    colours = _sweep_colours(df)
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(models)}
    by_method = {fit.method: fit for fit in fits}
    fig, (ax,) = _figure(1, f"{title}: error vs compute", (7.5, 5.0))
    fitted = points.index.isin(_fitted_runs(df, fits, compute_col))
    for (label, model, used), group in points.groupby([points["label"], points["model"], fitted]):
        colour = colours[label]
        ax.scatter(group[compute_col], group["error"], marker=markers[model], s=45, linewidths=1.3, zorder=3,
                   facecolors=colour if used else "white", edgecolors=colour)
    extents = [points["error"].to_numpy(float)]
    for fit in fits:
        c = np.geomspace(fit.compute_min, fit.compute_max, 50)
        ax.plot(c, fit.predict(c), color=colours[fit.method], linewidth=1.5)
        extents.append(fit.predict(c))
        band = _band(fit, c)
        if band is not None:
            ax.fill_between(c, *band, color=colours[fit.method], alpha=0.2, linewidth=0)
            extents += list(band)
    handles = [Line2D([], [], color=colours[m], label=_fit_label(m, by_method.get(m))) for m in methods]
    handles += [Line2D([], [], color="0.3", marker=markers[m], linestyle="none", label=m) for m in models]
    kinds = (("0.3", "filled: fitted", fitted.any()),
             ("white", "hollow: not fitted (off the frontier or no fit)", not fitted.all()))
    handles += [Line2D([], [], color="0.3", marker="o", markerfacecolor=face, linestyle="none", label=label)
                for face, label, shown in kinds if shown]
    if compute_col == "c_paper" and task_columns(df) == [PAPER_TASK]:
        c = np.geomspace(points[compute_col].min(), points[compute_col].max(), 50)
        for (name, (a, b)), shade in zip(PAPER_FITS.items(), ("0.1", "0.45")):
            ax.plot(c, a * c**b, color=shade, linestyle="--", linewidth=1.2)
            handles.append(Line2D([], [], color=shade, linestyle="--", label=f"{name}: $E = {a} \\cdot C^{{{b}}}$"))
    missing = _band_note(fits)
    ax.set(xscale="log", yscale="log", xlabel=f"compute {COMPUTE_AXES.get(compute_col, compute_col)} (GFLOPs)",
           ylabel="zero-shot error (1 - average)", ylim=_error_limits(extents))
    ax.grid(True, which="both", alpha=0.3)
    _log_formatters(ax)
    _subtitle(ax, "lines: laws fitted on each method's compute frontier; bands: 95% bootstrap"
              + (f"; {missing}" if missing else ""))
    _legend(fig, handles)
    return fig


@_styled
def score_figure(df: pd.DataFrame, title: str, compute_col: str = "c_paper") -> Figure:
    """A grid at one compute level: a row per configuration (label, plus model and reference where they vary)
    with each seed's average score (hollow dots), their mean (a filled diamond) and its 95% Student-t interval
    over seeds (none with one seed), best mean on top; each row names its mean `compute_col` when that is C_total."""
    runs = _done_runs(df).dropna(subset=["average"])
    if runs.empty:
        return _message(f"{title}: score per configuration", "no done runs")
    refs = reference_labels(df)
    runs = runs.assign(score=100 * runs["average"],
                       ref=runs["reference"].map(lambda r: refs.get(str(r), "no reference")) if "reference" in runs
                       else "no reference")
    several_refs = len(set(runs["ref"]) - {"no reference"}) > 1
    keys = ["label"] + (["model"] if runs["model"].nunique() > 1 else []) + (["ref"] if several_refs else [])
    colours = _sweep_colours(df)
    rows = []
    for key, group in runs.groupby(keys):
        key = key if isinstance(key, tuple) else (key,)
        scores = group["score"].to_numpy(float)
        n, mean = len(scores), float(scores.mean())
        half = float(stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1) * scores.std(ddof=1) / math.sqrt(n)) if n > 1 else None
        name = " | ".join(str(k) for k in key)
        if compute_col != "c_paper":
            name += f" ({COMPUTE_AXES.get(compute_col, compute_col)} {_amount(group[compute_col].mean())} GFLOPs)"
        rows.append((mean, name, key[0], scores, half))
    rows.sort(key=lambda r: -r[0])
    level = runs["c_paper"].iloc[0]
    heading = f"{title}: score per configuration at one compute level (C_paper = {_amount(level)} GFLOPs)"
    fig, (ax,) = _figure(1, heading, (7.5, 1.0 + 0.32 * len(rows)))
    for y, (mean, _, label, scores, half) in enumerate(rows):
        colour = colours[label]
        jitter = np.linspace(-0.12, 0.12, len(scores)) if len(scores) > 1 else np.zeros(1)
        ax.scatter(scores, y + jitter, s=22, facecolors="white", edgecolors=colour, linewidths=1.1, zorder=2)
        if half is not None:
            ax.hlines(y, mean - half, mean + half, color=colour, linewidth=2.2, zorder=1)
        ax.scatter([mean], [y], marker="D", s=40, color=colour, edgecolors="0.15", linewidths=0.6, zorder=3)
    ends = [v for mean, _, _, scores, half in rows for v in (*scores, mean - (half or 0), mean + (half or 0))]
    pad = 0.04 * (max(ends) - min(ends)) + 0.5
    ax.set_yticks(range(len(rows)), [r[1] for r in rows])
    ax.set(xlabel="average zero-shot score (%)", ylim=(len(rows) - 0.5, -0.5),
           xlim=(max(min(ends) - pad, 0.0), min(max(ends) + pad, 100.0)))
    _subtitle(ax, "hollow dots: seeds; diamond: mean; bar: 95% t interval over seeds (none with one seed)")
    return fig


@_styled
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
    names = reference_labels(df)
    refs = sorted(runs["reference"].astype(str).unique())
    markers = {r: MARKERS[i % len(MARKERS)] for i, r in enumerate(refs)}
    fig, (ax,) = _figure(1, f"{title}: weak-to-strong gain vs reducible-loss variance", (7.5, 5.0))
    for row in runs.itertuples():
        ax.scatter(row.reducible_var, 100 * row.gain, color=colours[row.label], marker=markers[str(row.reference)],
                   s=45, edgecolor="0.2", linewidth=0.4)
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set(xlabel="variance of l(w) - l(w_ref) on the held-out pairs", ylabel="gain over the reference (points)")
    handles = [Line2D([], [], color=colours[m], marker="o", linestyle="none", label=m)
               for m in sorted(runs["label"].unique())]
    handles += [Line2D([], [], color="0.3", marker=markers[r], linestyle="none", label=f"reference {names.get(r, r)}")
                for r in refs]
    _legend(fig, handles)
    return fig


@_styled
def _message(title: str, text: str) -> Figure:
    """A one-panel figure saying why there is nothing to plot."""
    fig, (ax,) = _figure(1, title, (6.0, 3.4))
    ax.text(0.5, 0.5, _wrap(text, 5.0, STYLE["font.size"]), ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


@_styled
def data_efficiency_figure(df: pd.DataFrame, title: str) -> Figure:
    """Zero-shot error vs samples seen (log-log), a panel per model size and a line per method configuration:
    mean over seeds with a sample-standard-deviation bar, so data efficiency compares within a model size."""
    runs = _done_runs(df).assign(error=lambda r: 1.0 - r["average"]).dropna(subset=["error", "samples_seen"])
    if runs.empty:
        return _message(f"{title}: error vs samples seen", "no done runs")
    if runs.groupby("model")["samples_seen"].nunique().max() < 2:
        return _message(f"{title}: error vs samples seen", "every model was trained at one samples-seen level: "
                        "no curve to draw (scaling_law shows each configuration's score)")
    colours = _sweep_colours(df)
    summary = runs.groupby(["model", "label", "samples_seen"])["error"].agg(["mean", "std"]).reset_index()
    models = _models_by_size(runs)
    fig, axes = _figure(len(models), f"{title}: error vs samples seen (mean ± sd over seeds)", sharey=True)
    for ax, model in zip(axes, models):
        for method, points in summary[summary["model"].eq(model)].groupby("label"):
            x, y, sd = (points[c].to_numpy(float) for c in ("samples_seen", "mean", "std"))
            ax.errorbar(x, y, yerr=np.nan_to_num(sd), color=colours[method],
                        marker="o", markersize=4, capsize=3, linewidth=1.5, label=method)
        gflops = runs.loc[runs["model"].eq(model), "gflops_per_pair"].mean()
        ax.set(xscale="log", yscale="log", xlabel="samples seen", title=f"{model} ({gflops:.3g} GFLOPs/pair)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes:  # after every panel is drawn: the shared limits are final
        _log_formatters(ax)
    axes[0].set_ylabel("zero-shot error (1 - average)")
    plotted = sorted(summary["label"].unique())
    _legend(fig, [Line2D([], [], color=colours[m], marker="o", label=m) for m in plotted])
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


@_styled
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


def _numbers(log: pd.DataFrame, key: str) -> np.ndarray:
    return pd.to_numeric(log[key], errors="coerce").to_numpy(float) if key in log else np.full(len(log), np.nan)


def _series(log: pd.DataFrame, key: str) -> np.ndarray:
    """[n, 2] points (samples seen, the key's value) where both are numbers. Key "temperature" is the tau a
    method's loss logs (drrho's fixed one, fastclip's learned one), else 1 / logit_scale (clip's InfoNCE).
    Plain numpy: a report reads the logs of every run, thousands in a big sweep."""
    if "samples_seen" not in log:
        return np.empty((0, 2))
    if key == "temperature":
        tau = _numbers(log, "tau")
        values = np.where(np.isfinite(tau), tau, 1.0 / _numbers(log, "logit_scale"))
    else:
        values = _numbers(log, key)
    points = np.column_stack([_numbers(log, "samples_seen"), values])
    return points[np.isfinite(points).all(axis=1)]


@_styled
def training_curves_figure(df: pd.DataFrame, results_dir: Path, title: str,
                           keys: Sequence[str] = ("loss", "temperature", "noisy_fraction")) -> Figure:
    """A panel per logged key against samples seen, a line per done run coloured by configuration and styled by
    model size, to see how the objective, the temperature the loss used and batch noise evolve."""
    runs = _done_runs(df)
    logs = {row.run_id: read_metrics(RunDir.of(results_dir, str(row.run_id)).metrics)
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
        name = "temperature (tau)" if key == "temperature" else key.replace("_", " ")
        ax.set(xlabel="samples seen", ylabel=name, title=key.replace("_", " "))
    shown = sorted({method[run] for key in present for run in curves[key]})
    _legend(fig, [Line2D([], [], color=colours[m], label=m) for m in shown])
    return fig


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write <stem>.png (to look at) and <stem>.svg (for the paper), each atomically; their paths."""
    stem = Path(stem)
    return [save_with(stem.with_name(f"{stem.name}.{fmt}"), lambda p, fmt=fmt: fig.savefig(p, format=fmt))
            for fmt in ("png", "svg")]
