"""Scaling analysis of a set of runs: per-configuration fits with bootstrap intervals and a held-out check,
compute-saving ratios against a baseline, and data efficiency per model size, as one JSON-ready
document and as text. `clipsteer fit` and the report both go through `analyse`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import ConfigError
from harness.report.compare import BETTER, NO_DIFFERENCE, WORSE
from harness.report.configs import is_configuration_of
from harness.report.fit import (
    CI_LEVEL,
    DEFAULT_BOOT,
    PowerLaw,
    data_efficiency,
    default_targets,
    fit_table,
    saving_ratio,
)

CSV_COLUMNS = ("method", "compute", "error")
NO_VERDICT = "no interval: no verdict possible"


@dataclass(frozen=True)
class FitOptions:
    """How to fit: compute axis, form, point selection, bootstrap size, held-out points, baseline, targets."""

    compute_col: str = "c_paper"
    form: str = "power"
    points: str = "frontier"
    n_boot: int = DEFAULT_BOOT
    holdout: int = 1
    seed: int = 0
    baseline: str = "clip"
    targets: tuple[float, ...] = ()

    def fit_kwargs(self) -> dict[str, Any]:
        """The keyword arguments fit_points takes."""
        return {"form": self.form, "points": self.points, "n_boot": self.n_boot, "holdout": self.holdout,
                "seed": self.seed}


LEADERBOARD_MARKS = {"run_id", "status", "c_paper", "average"}  # columns every leaderboard.csv has


def read_numeric_csv(path: Path, columns: tuple[str, ...], kind: str, allow_empty: bool = True) -> pd.DataFrame:
    """A CSV with `columns`: 'method' named on every row, the others numbers (empty cells too when `allow_empty`).
    Raises ConfigError naming the file, the column and the row; `kind` names the CSV in the messages."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", f"cannot read as CSV: {exc}") from exc
    if LEADERBOARD_MARKS <= set(frame.columns):
        raise ConfigError(str(path), "", f"this is a leaderboard CSV written by `clipsteer report` (its 'error' column "
                          "holds failure messages, not errors): pass its results directory instead, e.g. "
                          f"`clipsteer fit {path.parent}`, or a {kind} CSV with columns {', '.join(columns)}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(str(path), ", ".join(missing), f"missing column(s); a {kind} CSV needs columns "
                          f"{', '.join(columns)}, found {', '.join(map(str, frame.columns))}")
    if frame.empty:
        raise ConfigError(str(path), "", "no rows")
    for column in columns:
        if column == "method":
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & (frame[column].notna() if allow_empty else True)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ConfigError(str(path), column, f"row {row + 2} holds {frame[column].iloc[row]!r}, not a number")
        frame[column] = values
    if frame["method"].isna().any():
        row = int(np.flatnonzero(frame["method"].isna())[0])
        raise ConfigError(str(path), "method", f"row {row + 2} has no method name")
    return frame


def read_points_csv(path: Path) -> pd.DataFrame:
    """Fit points from a plain CSV with columns method, compute, error (one row per run; rows of one method
    at one compute are seeds of one configuration). Raises ConfigError naming the file and the column."""
    frame = read_numeric_csv(path, CSV_COLUMNS, "points")
    method = frame["method"].astype(str)
    return pd.DataFrame({"method": method, "config": method + "@" + frame["compute"].astype(str),
                         "compute": frame["compute"], "error": frame["error"]})


def saving_verdict(ci: list[float] | None) -> str:
    """Verdict on a saving ratio (method's compute over the baseline's, < 1 saves) from its interval: 'better'
    when it lies wholly below 1, 'worse' when wholly above, else 'no significant difference'."""
    if not ci:
        return NO_VERDICT
    return BETTER if ci[1] < 1 else WORSE if ci[0] > 1 else NO_DIFFERENCE


def _savings(fits: list[PowerLaw], opts: FitOptions) -> list[dict[str, Any]]:
    """Ratio of each method configuration's compute to each baseline configuration's at the target errors
    (given, or three inside both ranges), each with its verdict."""
    bases = [f for f in fits if is_configuration_of(f.method, opts.baseline)]
    rows = []
    for fit in fits:
        if any(fit is base for base in bases):
            continue
        for base in bases:
            for target in opts.targets or default_targets(fit, base):
                row = saving_ratio(fit, base, target)
                rows.append({**row, "verdict": saving_verdict(row.get("ci"))})
    return rows


def plain(obj: Any) -> Any:
    """`obj` with every non-finite float (an unreachable target's inf, a missing NaN) as None, for strict JSON."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def analyse(points: pd.DataFrame, opts: FitOptions) -> tuple[dict[str, Any], list[PowerLaw]]:
    """Fit every method configuration of `points` (columns method: a configuration's label, compute, error,
    optional config) and derive the compute-saving ratios; returns the JSON-ready document and the fits (with
    their bootstrap samples)."""
    fits, skipped = fit_table(points, compute_col=opts.compute_col, **opts.fit_kwargs())
    doc = {"compute": opts.compute_col, "form": opts.form, "points": opts.points, "n_boot": opts.n_boot,
           "ci_level": CI_LEVEL, "holdout": opts.holdout, "seed": opts.seed, "baseline": opts.baseline,
           "fits": [f.to_dict() for f in fits], "skipped": skipped, "savings": _savings(fits, opts)}
    return plain(doc), fits


def data_savings(df: pd.DataFrame, opts: FitOptions) -> dict[str, Any]:
    """Data efficiency per model size: error vs samples seen fitted per (method configuration, model), and the
    samples each configuration needs relative to the baseline's on the same model at targets inside both fits'
    ranges."""
    fits, skipped = data_efficiency(df, **opts.fit_kwargs())
    rows = []
    for model in sorted({f.model for f in fits}):
        same = [f for f in fits if f.model == model]
        rows += [{**row, "model": model} for row in _savings(same, opts)]
    return plain({"fits": [f.to_dict() for f in fits], "skipped": skipped, "savings": rows})


def interval_text(ci: list[float] | None, fmt: str) -> str:
    """' [low, high]' of an interval in `fmt`, or '' when there is none."""
    return f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else ""


def format_text(doc: dict[str, Any]) -> str:
    """The analysis as text: one block per fit (parameters with intervals, held-out check), refusals, savings."""
    level = f"{100 * doc['ci_level']:.0f}%"
    lines = [f"fits of error against {doc['compute']} ({doc['form']} form, {doc['points']} points; "
             f"{level} bootstrap intervals over {doc['n_boot']} replicates)"]
    for fit in doc["fits"]:
        ci = fit["ci"]
        law = f"E = {fit['a']:.4g}{interval_text(ci.get('a'), '.4g')} * C^{fit['b']:.4f}{interval_text(ci.get('b'), '.4f')}"
        if fit["form"] == "saturating":
            law += f" + {fit['c']:.4g}{interval_text(ci.get('c'), '.4g')}"
        lines.append(f"  {fit['method']}: {law}")
        lines.append(f"    {fit['n_points']} points, C in [{fit['compute_min']:.3g}, {fit['compute_max']:.3g}], "
                     f"r2 (log) {fit['r2']:.3f}, bootstrap {fit['n_boot']} fitted / {fit['n_boot_failed']} unfittable")
        if doc["n_boot"] and not ci:
            lines.append("    no interval: fewer than half the bootstrap replicates could be fitted")
        held = fit["holdout"]
        if held:
            checks = ", ".join(f"C={c:.3g}: observed {o:.4f}, predicted {p:.4f} ({100 * r:+.1f}%)" for c, o, p, r in
                               zip(held["compute"], held["observed"], held["predicted"], held["relative_error"]))
            lines.append(f"    held out the largest compute, fitted on {held['fit_on']} configurations: {checks}")
    for method, reason in doc["skipped"].items():
        lines.append(f"  {method}: refused: {reason}")
    if doc["savings"]:
        lines.append(f"compute to reach a target error, relative to {doc['baseline']} (< 1 saves compute; "
                     "verdict: better when the whole interval is below 1, worse when above):")
        for row in doc["savings"]:
            note = " (extrapolated)" if row["extrapolated"] else ""
            ratio = "never (below its floor)" if row["ratio"] is None else f"{row['ratio']:.3g}x"
            against = "" if row["baseline"] == doc["baseline"] else f" (against {row['baseline']})"
            lines.append(f"  {row['method']}{against} at E={row['target_error']:.4f}: {ratio}"
                         f"{interval_text(row.get('ci'), '.3g')}{note}: {row['verdict']}")
    return "\n".join(lines) + "\n"
