"""What predicts the weak-to-strong gain: DRRho's reducible-loss variance against Charikar et al.'s misfit.

DRRho's generalization bound shrinks with the variance of l(w) - l(w_ref), so a smaller variance should go with
a larger gain; Charikar et al. (2024) bound the gain from below by the misfit (the learner's disagreement with
its reference), so a larger misfit should go with a larger gain. Across the configurations of a sweep (method,
its parameters and reference; seeds averaged) we measure each quantity's Spearman rank correlation with the
gain, with a bootstrap interval over configurations, and say plainly when it does not predict the gain here.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from harness.report import plots
from harness.report.configs import with_configs

# quantity -> (what it is, the sign of its rank correlation with the gain that its theory expects)
QUANTITIES = {"reducible_var": ("variance of l(w) - l(w_ref) (DRRho)", -1),
              "disagreement": ("misfit: disagreement with the reference (Charikar et al.)", +1),
              "misfit_ce": ("misfit: cross-entropy against the reference's predictions (Charikar et al.)", +1)}
MIN_CONFIGS = 4  # fewer configurations leave a rank correlation meaningless


def _mean_of(df: pd.DataFrame, prefix: str) -> pd.Series:
    """The row mean of the columns named `prefix:<task>` (NaN where a row has none)."""
    columns = [c for c in df.columns if str(c).startswith(prefix + ":")]
    return df[columns].mean(axis=1) if columns else pd.Series(np.nan, index=df.index)


def run_points(df: pd.DataFrame) -> pd.DataFrame:
    """Done steered runs with their configuration label, gain (average, points), classification gain (points, over
    the tasks with a misfit), disagreement (points) and misfit cross-entropy (nats), both averaged over tasks."""
    runs = with_configs(df)
    runs = runs[runs["status"].eq("done") & ~runs["is_reference"].eq(True)]
    if "gain" not in runs:
        return pd.DataFrame()
    runs = runs.dropna(subset=["gain"])
    tasks = [str(c).split(":", 1)[1] for c in runs.columns if str(c).startswith("disagree:")]
    gains = [f"gain:{t}" for t in tasks if f"gain:{t}" in runs]
    class_gain = runs[gains].mean(axis=1) if gains else pd.Series(np.nan, index=runs.index)
    return pd.DataFrame({"label": runs["label"], "reference": runs["reference"].astype(str), "gain": 100 * runs["gain"],
                         "class_gain": 100 * class_gain, "reducible_var": runs["reducible_var"],
                         "disagreement": 100 * _mean_of(runs, "disagree"), "misfit_ce": _mean_of(runs, "misfit_ce")})


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.spearmanr(x, y).statistic) if np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")


def predictors(df: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per quantity: Spearman's rho with the gain over configurations (seeds averaged), its 95% bootstrap interval
    (configurations resampled), the expected sign and a verdict; or why there is none."""
    points = run_points(df)
    if points.empty:
        return {"skipped": "no run with a reference"}
    configs = points.groupby(["label", "reference"]).mean(numeric_only=True).reset_index()
    doc: dict[str, Any] = {"configurations": len(configs), "target": "gain (average score, points)", "rows": []}
    for column, (what, expected) in QUANTITIES.items():
        usable = configs.dropna(subset=[column, "gain"])
        row: dict[str, Any] = {"quantity": column, "what": what, "expected_sign": expected, "n": len(usable)}
        if len(usable) < MIN_CONFIGS:
            doc["rows"].append({**row, "rho": None, "ci": None,
                                "verdict": f"too few configurations ({len(usable)} < {MIN_CONFIGS})"})
            continue
        x, y = usable[column].to_numpy(float), usable["gain"].to_numpy(float)
        rho = _spearman(x, y)
        draws = np.random.default_rng(seed).integers(0, len(usable), size=(n_boot, len(usable)))
        boot = np.array([_spearman(x[i], y[i]) for i in draws])
        boot = boot[np.isfinite(boot)]
        ci = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))] if len(boot) else None
        doc["rows"].append({**row, "rho": rho, "ci": ci, "verdict": _verdict(ci, expected)})
    return doc


def _verdict(ci: list[float] | None, expected: int) -> str:
    if ci is None:
        return "no interval"
    if ci[0] > 0 or ci[1] < 0:
        sign = 1 if ci[0] > 0 else -1
        return "predicts the gain, in the direction its theory expects" if sign == expected else \
            "correlates with the gain against the direction its theory expects"
    return "does not predict the gain here (the interval includes 0)"


def predictors_frame(doc: dict[str, Any]) -> pd.DataFrame:
    """The predictors as a table for the report."""
    return pd.DataFrame([{"quantity": r["what"], "configurations": r["n"],
                          "Spearman rho": np.nan if r["rho"] is None else r["rho"],
                          "95% CI": "" if r["ci"] is None else f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]",
                          "expected": "+" if r["expected_sign"] > 0 else "-", "verdict": r["verdict"]}
                         for r in doc.get("rows", [])])


def predictors_markdown(doc: dict[str, Any]) -> list[str]:
    """The report's section on what predicts the gain."""
    head = "## What predicts the weak-to-strong gain"
    if "skipped" in doc:
        return [head, f"No analysis: {doc['skipped']}."]
    note = (f"Spearman's rank correlation with the gain over {doc['configurations']} configurations (method, its "
            "parameters and reference; seeds averaged), 95% bootstrap interval over configurations. Expected sign: "
            "DRRho's bound shrinks with the variance (-); the misfit bounds the gain from below (+).")
    return [head, note, predictors_frame(doc).to_markdown(index=False, floatfmt="+.2f")]


@plots._styled
def misfit_figure(df: pd.DataFrame, title: str) -> Figure:
    """Gain against misfit, a point per run (colour: configuration, marker: reference): the classification gain
    against the disagreement in points with the line gain = misfit, and the gain against the cross-entropy misfit."""
    points = run_points(df)
    if points.empty or points["disagreement"].isna().all():
        return plots._message(f"{title}: gain vs misfit", "no run with a reference and a classification task")
    colours, names = plots._sweep_colours(df), plots.reference_labels(df)
    refs = sorted(points["reference"].unique())
    markers = {r: plots.MARKERS[i % len(plots.MARKERS)] for i, r in enumerate(refs)}
    fig, (left, right) = plots._figure(2, f"{title}: weak-to-strong gain vs misfit (Charikar et al. 2024)", (4.6, 4.0))
    for row in points.itertuples():
        style = {"color": colours[row.label], "marker": markers[row.reference], "s": 45, "edgecolor": "0.2",
                 "linewidth": 0.4}
        left.scatter(row.disagreement, row.class_gain, **style)
        right.scatter(row.misfit_ce, row.gain, **style)
    low = min(0.0, points["disagreement"].min(), points["class_gain"].min())
    high = max(points["disagreement"].max(), points["class_gain"].max())
    left.plot([low, high], [low, high], color="0.4", linestyle="--", linewidth=0.9, label="gain = misfit")
    for ax in (left, right):
        ax.axhline(0.0, color="0.5", linewidth=0.8)
    left.set(xlabel="disagreement with the reference (points)", ylabel="gain on the classification tasks (points)")
    right.set(xlabel="cross-entropy against the reference's predictions (nats)", ylabel="gain, average score (points)")
    handles = [Line2D([], [], color="0.4", linestyle="--", label="gain = misfit")]
    handles += [Line2D([], [], color=colours[m], marker="o", linestyle="none", label=m)
                for m in sorted(points["label"].unique())]
    handles += [Line2D([], [], color="0.3", marker=markers[r], linestyle="none", label=f"reference {names.get(r, r)}")
                for r in refs]
    plots._legend(fig, handles)
    return fig
