"""Power-law scaling fits E = a * C^b of zero-shot error E against compute C, per method.

The fit is ordinary least squares in log space (log E = log a + b log C), so every
point weighs the same in relative terms and r2 is measured in log space too.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

MIN_POINTS = 3  # two parameters + 1, so a fit of exact data is not trivially perfect


class FitError(ValueError):
    """The points given cannot support a trustworthy power-law fit."""


@dataclass(frozen=True)
class PowerLaw:
    """A fitted E = a * C^b over the compute range [compute_min, compute_max]."""

    method: str
    a: float
    b: float
    n_points: int
    compute_min: float
    compute_max: float
    r2: float
    compute_col: str = "c_paper"

    def predict(self, compute: ArrayLike) -> np.ndarray:
        """Predicted error a * C^b at each compute value."""
        return self.a * np.asarray(compute, dtype=float) ** self.b

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of every field."""
        return asdict(self)


def _check_points(compute: np.ndarray, error: np.ndarray) -> None:
    if compute.ndim != 1 or compute.shape != error.shape:
        raise FitError(f"compute and error must be 1-D and the same length, got shapes {compute.shape} and {error.shape}")
    for name, values in (("compute", compute), ("error", error)):
        bad = ~np.isfinite(values)
        if bad.any():
            raise FitError(f"{int(bad.sum())} non-finite {name} value(s) (NaN or inf), e.g. {values[bad][:3].tolist()}")
        bad = values <= 0
        if bad.any():
            raise FitError(f"{int(bad.sum())} non-positive {name} value(s), e.g. {values[bad][:3].tolist()}; a power law needs {name} > 0")
    if len(compute) < MIN_POINTS:
        raise FitError(f"need at least {MIN_POINTS} points to fit E = a * C^b (2 parameters + 1), got {len(compute)}")
    if np.unique(compute).size == 1:
        raise FitError(f"all {len(compute)} points at one compute value ({compute[0]:g}); the exponent is undetermined")


def fit_power_law(compute: ArrayLike, error: ArrayLike) -> tuple[float, float, float]:
    """Fit E = a * C^b by least squares in log space; return (a, b, r2 in log space).

    Raises FitError for fewer than 3 points, non-finite or non-positive values, or a single compute value.
    """
    c = np.asarray(compute, dtype=float)
    e = np.asarray(error, dtype=float)
    _check_points(c, e)
    x, y = np.log(c), np.log(e)
    line = stats.linregress(x, y)
    residual = y - (line.intercept + line.slope * x)
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / total if total > 0 else 1.0
    return float(np.exp(line.intercept)), float(line.slope), float(r2)


POINT_SELECTIONS = ("frontier", "all")


def frontier_mask(compute: ArrayLike, error: ArrayLike) -> np.ndarray:
    """True for the points on the compute frontier: lower error than every point of smaller or equal compute.

    This is the point selection of the OpenCLIP and DRRho scaling-law fits: a run that a cheaper
    run already beats (e.g. an under-trained large model) says nothing about the best error at that compute.
    """
    c, e = np.asarray(compute, dtype=float), np.asarray(error, dtype=float)
    keep = np.zeros(len(c), dtype=bool)
    best = np.inf
    for i in np.lexsort((e, c)):
        if e[i] < best:
            keep[i], best = True, e[i]
    return keep


def fit_methods(df: pd.DataFrame, compute_col: str = "c_paper",
                points: str = "frontier") -> tuple[list[PowerLaw], dict[str, str]]:
    """Fit error = 1 - average against `compute_col` for each method, on done non-reference runs.

    `points` is "frontier" (each method's compute frontier, see frontier_mask) or "all".
    Returns (fits sorted by method, {method: reason} for each method whose points could not be fitted).
    """
    if points not in POINT_SELECTIONS:
        raise ValueError(f"points must be one of {', '.join(POINT_SELECTIONS)}, got {points!r}")
    missing = {"method", "status", "is_reference", "average", compute_col} - set(df.columns)
    if missing:
        raise KeyError(f"results table lacks column(s) {sorted(missing)}")
    rows = df[(df["status"] == "done") & ~df["is_reference"].eq(True)]
    fits: list[PowerLaw] = []
    skipped: dict[str, str] = {}
    for method, group in rows.groupby("method", sort=True):
        compute = group[compute_col].to_numpy(dtype=float)
        error = 1.0 - group["average"].to_numpy(dtype=float)
        if points == "frontier" and np.isfinite(compute).all() and np.isfinite(error).all():
            keep = frontier_mask(compute, error)
            compute, error, group = compute[keep], error[keep], group[keep]
        try:
            a, b, r2 = fit_power_law(compute, error)
        except FitError as exc:
            skipped[str(method)] = str(exc)
            continue
        fits.append(PowerLaw(str(method), a, b, len(group), float(compute.min()), float(compute.max()), r2, compute_col))
    return fits, skipped
