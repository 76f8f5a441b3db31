"""Figures of the joint law E(F, D) (harness.report.joint): IsoFLOP curves, the compute-optimal F*(C) and D*(C)
with bootstrap bands, and observed against predicted error. `joint_report` gives the report the joint analysis and
its figures when the grid supports a joint fit (some configuration with 2+ model sizes of 2+ budgets each)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.report.fit import CI_LEVEL
from harness.report.joint import (
    JointLaw,
    JointOptions,
    analyse_joint,
    configurations,
    eligible,
    joint_points,
    optimal_allocation,
)
from harness.report.plots import _figure, _legend, _log_formatters, _styled, method_colours

ISO_LEVELS = 4  # compute levels per IsoFLOP panel, log-spaced over the configuration's C range
CURVE_POINTS = 200
F_MARGIN = 4.0  # IsoFLOP curves run from F_min / F_MARGIN to F_max * F_MARGIN
ISO_CMAP = "viridis"
REPORT_BOOT = 200  # bootstrap replicates for the report's bands: a joint refit costs ~100x a power-law refit
F_LABEL, D_LABEL, C_LABEL = "F: forward GFLOPs per pair", "D: samples seen", "C = F·D (C_paper, forward GFLOPs)"


def _observed(points: pd.DataFrame, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F, D and seed-mean error per configuration of one method's points."""
    configs = configurations(points[points["method"] == method])
    return configs.flops, configs.samples, configs.means


@_styled
def isoflop_figure(laws: list[JointLaw], points: pd.DataFrame, title: str) -> Figure:
    """Per configuration, error against F at fixed C = F·D: fitted curves at ISO_LEVELS compute levels with their
    optimum F* starred, and the observed configurations, all coloured by C on one log scale."""
    compute = (points["flops"] * points["samples"]).to_numpy(float)
    norm, cmap = LogNorm(compute.min(), compute.max()), colormaps[ISO_CMAP]
    fig, axes = _figure(len(laws), f"{title}: IsoFLOP curves of the joint law")
    for ax, law in zip(axes, laws):
        flops = np.geomspace(law.flops_range[0] / F_MARGIN, law.flops_range[1] * F_MARGIN, CURVE_POINTS)
        for c in np.geomspace(*law.compute_range, ISO_LEVELS):
            ax.plot(flops, law.predict(flops, c / flops), color=cmap(norm(c)), linewidth=1.4)
            f_opt, _, e_opt = law.optimum(c)
            ax.scatter(f_opt, e_opt, marker="*", s=90, color=cmap(norm(c)), edgecolors="black", linewidths=0.6,
                       zorder=4)
        f, d, e = _observed(points, law.method)
        ax.scatter(f, e, c=f * d, cmap=cmap, norm=norm, s=36, edgecolors="black", linewidths=0.6, zorder=3)
        ax.set(xscale="log", yscale="log", xlabel=F_LABEL, ylabel="error", title=law.method,
               ylim=(min(e.min(), law.optimum(law.compute_range[1])[2].item()) / 1.1, e.max() * 1.4))
        ax.grid(True, which="both", alpha=0.3)
        _log_formatters(ax)
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes, label=C_LABEL)
    _legend(fig, [Line2D([], [], color="0.3", label="fitted E at fixed C"),
                  Line2D([], [], color="0.3", marker="*", linestyle="none", label="optimum F*(C)"),
                  Line2D([], [], color="0.3", marker="o", linestyle="none", label="observed (seed mean)")])
    return fig


def _band(law: JointLaw, compute: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Bootstrap band of F* (index 0) or D* (index 1) over `compute`; None without an interval."""
    if not law.ci:
        return None
    values = optimal_allocation(law.boot, compute)[index]
    tail = 100 * (1 - CI_LEVEL) / 2
    low, high = np.percentile(values, [tail, 100 - tail], axis=0)
    return low, high


@_styled
def allocation_figure(laws: list[JointLaw], title: str) -> Figure:
    """Compute-optimal F*(C) and D*(C) per configuration over its fitted C range, with 95% bootstrap bands, and
    the F and D of its runs at their C for scale."""
    fig, (f_ax, d_ax) = _figure(2, f"{title}: compute-optimal model size and data")
    colours = method_colours([law.method for law in laws])
    handles = []
    for law in laws:
        compute = np.geomspace(*law.compute_range, CURVE_POINTS)
        f_opt, d_opt, _ = law.optimum(compute)
        exps = law.to_dict()["exponents"]
        colour = colours[law.method]
        for ax, index, values in ((f_ax, 0, f_opt), (d_ax, 1, d_opt)):
            ax.plot(compute, values, color=colour, linewidth=1.5)
            band = _band(law, compute, index)
            if band is not None:
                ax.fill_between(compute, *band, color=colour, alpha=0.2, linewidth=0)
        label = f"{law.method}: F* ∝ C^{exps['F']:.2f}, D* ∝ C^{exps['D']:.2f}" + ("" if law.ci else " (no band)")
        handles.append(Line2D([], [], color=colour, label=label))
    for ax, label in ((f_ax, f"optimal {F_LABEL}"), (d_ax, f"optimal {D_LABEL}")):
        ax.set(xscale="log", yscale="log", xlabel=C_LABEL, ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    band = Line2D([], [], color="0.3", alpha=0.3, linewidth=6, label=f"{CI_LEVEL:.0%} bootstrap band")
    _legend(fig, handles + [band])
    return fig


@_styled
def parity_figure(laws: list[JointLaw], points: pd.DataFrame, title: str) -> Figure:
    """Observed seed-mean error of each configuration against the joint law's prediction, with the diagonal."""
    fig, (ax,) = _figure(1, f"{title}: joint law, observed vs predicted", (5.0, 4.6))
    colours = method_colours([law.method for law in laws])
    values = []
    for law in laws:
        f, d, e = _observed(points, law.method)
        predicted = law.predict(f, d)
        ax.scatter(predicted, e, color=colours[law.method], s=36, edgecolors="black", linewidths=0.5, zorder=3)
        values += [predicted, e]
    low, high = float(np.min(np.concatenate(values))) / 1.05, float(np.max(np.concatenate(values))) * 1.05
    ax.plot([low, high], [low, high], color="0.4", linestyle="--", linewidth=1.0)
    ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high), xlabel="predicted error E(F, D)",
           ylabel="observed error (seed mean)")
    ax.grid(True, which="both", alpha=0.3)
    _log_formatters(ax)
    _legend(fig, [Line2D([], [], color=colours[law.method], marker="o", linestyle="none", label=law.method)
                  for law in laws] + [Line2D([], [], color="0.4", linestyle="--", label="observed = predicted")])
    return fig


def joint_figures(laws: list[JointLaw], points: pd.DataFrame, title: str) -> dict[str, Figure]:
    """The three joint-law figures by name (none without a fitted law)."""
    if not laws:
        return {}
    return {"joint_isoflop": isoflop_figure(laws, points, title), "joint_allocation": allocation_figure(laws, title),
            "joint_parity": parity_figure(laws, points, title)}


def joint_report(df: pd.DataFrame, title: str, opts: JointOptions = JointOptions(n_boot=REPORT_BOOT)
                 ) -> tuple[dict[str, Any] | None, dict[str, Figure]]:
    """The joint analysis of a results table (JSON-ready) and its figures; (None, {}) when no configuration has
    2+ model sizes with 2+ budgets each."""
    points = joint_points(df)
    if not eligible(points):
        return None, {}
    doc, laws = analyse_joint(points, opts)
    return doc, joint_figures(laws, points, title)
