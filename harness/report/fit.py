"""Scaling-law fits of zero-shot error E against compute C (or samples seen), one per method configuration
(its name, parameters and reference features: harness.report.configs).

Two forms: the pure power law E = a * C^b, fitted by least squares in log space (every point
weighs the same in relative terms), and the saturating E = a * C^b + c, fitted by a robust
Huber loss on log residuals from several starting points. Parameters are bounded (a > 0,
-3 <= b < 0, 0 <= c < min E): a fit that lands on a bound is refused, not reported.

Runs of one configuration (same model and samples seen) that differ only in seed are averaged
into one point. Uncertainty comes from a bootstrap over runs: seeds are resampled within each
configuration when configurations have several, otherwise the points themselves are resampled;
point selection (the compute frontier) and the fit are redone on every replicate.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import optimize

from harness.report.configs import with_configs

FORMS = {"power": 2, "saturating": 3}  # form -> number of parameters
POINT_SELECTIONS = ("frontier", "all")
B_BOUNDS = (-3.0, 0.0)
HUBER_DELTA = 0.05  # log-residual scale where the saturating fit's loss turns from squared to linear
CI_LEVEL = 0.95
MIN_BOOT_SHARE = 0.5  # fewer usable bootstrap replicates than this share: no interval is reported
DEFAULT_BOOT = 1000


class FitError(ValueError):
    """The points given cannot support a trustworthy fit."""


def min_points(form: str) -> int:
    """Points a form needs: its parameters + 1, so a fit of exact data is not trivially perfect."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    return FORMS[form] + 1


@dataclass(frozen=True)
class PowerLaw:
    """A fitted E = a * C^b + c (c = 0 for the pure form) over [compute_min, compute_max], with
    bootstrap intervals (`ci`: parameter -> [low, high]) and a held-out check when there is one."""

    method: str
    a: float
    b: float
    n_points: int
    compute_min: float
    compute_max: float
    r2: float
    compute_col: str = "c_paper"
    form: str = "power"
    c: float = 0.0
    points: str = "frontier"
    model: str | None = None
    ci: dict[str, list[float]] = field(default_factory=dict)
    n_boot: int = 0
    n_boot_failed: int = 0
    holdout: dict[str, Any] | None = None
    boot: np.ndarray | None = field(default=None, repr=False, compare=False)  # [n_boot, 3] rows of (a, b, c)

    def predict(self, compute: ArrayLike) -> np.ndarray:
        """Predicted error a * C^b + c at each compute value."""
        return self.a * np.asarray(compute, dtype=float) ** self.b + self.c

    def compute_at(self, error: float) -> float:
        """Compute at which the law reaches `error` (inf when error <= c: never)."""
        return _inverse(np.array([[self.a, self.b, self.c]]), error)[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field except the bootstrap samples."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "boot"}


def _inverse(params: np.ndarray, error: float) -> np.ndarray:
    """Compute reaching `error` for each (a, b, c) row; inf where error <= c."""
    a, b, c = params[:, 0], params[:, 1], params[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = ((error - c) / a) ** (1.0 / b)
    return np.where(error > c, out, np.inf)


def _check_values(compute: np.ndarray, error: np.ndarray) -> None:
    if compute.ndim != 1 or compute.shape != error.shape:
        raise FitError(f"compute and error must be 1-D and the same length, got shapes {compute.shape} and {error.shape}")
    for name, values in (("compute", compute), ("error", error)):
        bad = ~np.isfinite(values)
        if bad.any():
            raise FitError(f"{int(bad.sum())} non-finite {name} value(s) (NaN or inf), e.g. {values[bad][:3].tolist()}")
        bad = values <= 0
        if bad.any():
            raise FitError(f"{int(bad.sum())} non-positive {name} value(s), e.g. {values[bad][:3].tolist()}; a power law needs {name} > 0")


def _check_points(compute: np.ndarray, error: np.ndarray, form: str) -> None:
    _check_values(compute, error)
    need = min_points(form)
    if len(compute) < need:
        raise FitError(f"need at least {need} points to fit the {form} form ({FORMS[form]} parameters + 1), got {len(compute)}")
    if np.unique(compute).size == 1:
        raise FitError(f"all {len(compute)} points at one compute value ({compute[0]:g}); the exponent is undetermined")


def _log_r2(error: np.ndarray, predicted: np.ndarray) -> float:
    y, residual = np.log(error), np.log(error) - np.log(predicted)
    total = ((y - y.mean()) ** 2).sum()
    return float(1.0 - (residual**2).sum() / total) if total > 0 else 1.0


def _check_bounds(b: float, c: float, error: np.ndarray) -> None:
    """Refuse a fit on a parameter bound: it describes the bound, not the data."""
    if not B_BOUNDS[0] + 1e-6 < b < B_BOUNDS[1] - 1e-6:
        raise FitError(f"fitted exponent b = {b:.4g} is outside ({B_BOUNDS[0]:g}, {B_BOUNDS[1]:g}): "
                       "error does not fall with compute as a power law over these points")
    if c > error.min() * (1 - 1e-3):
        raise FitError(f"fitted floor c = {c:.4g} reaches the smallest error {error.min():.4g}: the points are flat, "
                       "the saturating form is not identified")


def fit_power_law(compute: ArrayLike, error: ArrayLike) -> tuple[float, float, float]:
    """Fit E = a * C^b by least squares in log space; return (a, b, r2 in log space).

    Raises FitError for fewer than 3 points, non-finite or non-positive values, a single compute
    value, or an exponent outside (-3, 0).
    """
    c, e = np.asarray(compute, dtype=float), np.asarray(error, dtype=float)
    _check_points(c, e, "power")
    x, y = np.log(c), np.log(e)
    dx = x - x.mean()
    b = float(dx @ (y - y.mean()) / (dx @ dx))
    a = float(np.exp(y.mean() - b * x.mean()))
    _check_bounds(b, 0.0, e)
    return a, b, _log_r2(e, a * c**b)


def _saturating_solve(c: np.ndarray, e: np.ndarray, starts: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Best (a, b, c) over `starts` of the Huber loss on log(a C^b + c) - log E, parameters bounded."""
    x = np.log(c)
    x0 = x.mean()  # centre log C so log a and b are not strongly correlated
    ceiling = e.min() * (1 - 1e-9)

    def residual(p: np.ndarray) -> np.ndarray:
        return np.log(np.exp(p[0] + p[1] * (x - x0)) + p[2]) - np.log(e)

    best = None
    for log_a, b, floor in starts:
        start = np.clip([log_a + b * x0, b, floor], [-50, B_BOUNDS[0], 0], [50, B_BOUNDS[1], ceiling])
        sol = optimize.least_squares(residual, start, bounds=([-50, B_BOUNDS[0], 0], [50, B_BOUNDS[1], ceiling]),
                                     loss="huber", f_scale=HUBER_DELTA, method="trf")
        if best is None or sol.cost < best.cost:
            best = sol
    log_a_c, b, floor = best.x
    return float(np.exp(log_a_c - b * x0)), float(b), float(floor)


def _saturating_starts(c: np.ndarray, e: np.ndarray) -> list[tuple[float, float, float]]:
    """A grid of starts (log a, b, c): floors from 0 to 90% of the smallest error, several exponents;
    log a puts the curve through the geometric-mean point."""
    x, y = np.log(c).mean(), np.exp(np.log(e).mean())
    starts = []
    for share in (0.0, 0.5, 0.9):
        floor = share * e.min()
        for b in (-0.05, -0.2, -0.5):
            starts.append((float(np.log(max(y - floor, 1e-12)) - b * x), b, floor))
    return starts


def fit_saturating(compute: ArrayLike, error: ArrayLike) -> tuple[float, float, float, float]:
    """Fit E = a * C^b + c by a Huber loss on log residuals from several starts; return (a, b, c, r2 in log space).

    Raises FitError for fewer than 4 points, bad values, or a fit on a bound of b or c.
    """
    c, e = np.asarray(compute, dtype=float), np.asarray(error, dtype=float)
    _check_points(c, e, "saturating")
    a, b, floor = _saturating_solve(c, e, _saturating_starts(c, e))
    _check_bounds(b, floor, e)
    return a, b, floor, _log_r2(e, a * c**b + floor)


def fit_curve(compute: ArrayLike, error: ArrayLike, form: str = "power") -> tuple[float, float, float, float]:
    """Fit `form` ("power" or "saturating"); return (a, b, c, r2), c = 0 for the pure form."""
    min_points(form)
    if form == "power":
        a, b, r2 = fit_power_law(compute, error)
        return a, b, 0.0, r2
    return fit_saturating(compute, error)


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


@dataclass(frozen=True)
class _Configs:
    """Fit points before selection: one compute per configuration and the errors of its seeds."""

    compute: np.ndarray
    seeds: list[np.ndarray]
    means: np.ndarray  # per configuration, the mean over its seeds


def _check_selection(points: str) -> None:
    if points not in POINT_SELECTIONS:
        raise ValueError(f"points must be one of {', '.join(POINT_SELECTIONS)}, got {points!r}")


def _select(compute: np.ndarray, error: np.ndarray, points: str) -> np.ndarray:
    if points == "all" or not (np.isfinite(compute).all() and np.isfinite(error).all()):
        return np.ones(len(compute), dtype=bool)
    return frontier_mask(compute, error)


def _estimate(compute: np.ndarray, error: np.ndarray, points: str, form: str,
              start: tuple[float, float, float] | None = None) -> tuple[float, float, float]:
    """Select points and fit: the estimator the bootstrap repeats (warm-started for the saturating form)."""
    keep = _select(compute, error, points)
    c, e = compute[keep], error[keep]
    if np.unique(c).size < min_points(form):
        raise FitError("too few distinct points")
    if form == "power" or start is None:
        a, b, floor, _ = fit_curve(c, e, form)
        return a, b, floor
    a, b, floor = _saturating_solve(c, e, [(float(np.log(start[0])), start[1], min(start[2], 0.9 * e.min()))])
    _check_bounds(b, floor, e)
    return a, b, floor


def _bootstrap(configs: _Configs, points: str, form: str, n_boot: int, seed: int,
               start: tuple[float, float, float]) -> tuple[np.ndarray, int]:
    """(a, b, c) of each usable replicate and the number of replicates that could not be fitted."""
    rng = np.random.default_rng(seed)
    per_seed = any(len(s) > 1 for s in configs.seeds)
    rows, failed = [], 0
    for _ in range(n_boot):
        if per_seed:
            compute = configs.compute
            error = np.array([rng.choice(s, size=len(s)).mean() for s in configs.seeds])
        else:
            pick = rng.integers(0, len(configs.compute), len(configs.compute))
            compute, error = configs.compute[pick], configs.means[pick]
        try:
            rows.append(_estimate(compute, error, points, form, start))
        except FitError:
            failed += 1
    return np.array(rows, dtype=float).reshape(-1, 3), failed


def _interval(values: np.ndarray) -> list[float]:
    tail = 100 * (1 - CI_LEVEL) / 2
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def _holdout(configs: _Configs, points: str, form: str, k: int) -> dict[str, Any] | None:
    """Fit without the k largest computes and predict them: relative error of the extrapolation."""
    order = np.unique(configs.compute)
    if k < 1 or len(order) <= k:
        return None
    cut = order[-k]
    inside = configs.compute < cut
    try:
        a, b, floor = _estimate(configs.compute[inside], configs.means[inside], points, form)
    except FitError:
        return None
    compute, observed = configs.compute[~inside], configs.means[~inside]
    predicted = a * compute**b + floor
    return {"n_held_out": int((~inside).sum()), "compute": compute.tolist(), "observed": observed.tolist(),
            "predicted": predicted.tolist(), "relative_error": ((predicted - observed) / observed).tolist(),
            "fit_on": int(inside.sum())}


def fit_points(compute: ArrayLike, error: ArrayLike, config: ArrayLike | None = None, *, method: str = "",
               form: str = "power", points: str = "frontier", n_boot: int = 0, holdout: int = 0, seed: int = 0,
               compute_col: str = "c_paper", model: str | None = None) -> PowerLaw:
    """Fit one method's runs: average seeds per configuration (`config` labels, default: one per compute),
    select points, fit `form`; optionally bootstrap `n_boot` replicates for intervals and hold out the
    `holdout` largest computes to check extrapolation. Raises FitError when the points cannot be trusted."""
    _check_selection(points)
    min_points(form)
    c, e = np.asarray(compute, dtype=float), np.asarray(error, dtype=float)
    _check_values(c, e)
    labels = pd.Series(c if config is None else np.asarray(config)).astype(str).to_numpy()
    frame = pd.DataFrame({"config": labels, "compute": c, "error": e})
    if frame.groupby("config")["compute"].nunique().gt(1).any():
        raise FitError("a configuration has runs at different compute values; configurations must share their compute")
    grouped = frame.groupby("config", sort=False, dropna=False)
    seeds = [g.to_numpy() for _, g in grouped["error"]]
    configs = _Configs(grouped["compute"].first().to_numpy(), seeds, np.array([s.mean() for s in seeds]))
    means = configs.means
    keep = _select(configs.compute, means, points)
    a, b, floor, r2 = fit_curve(configs.compute[keep], means[keep], form)
    boot, failed, ci = None, 0, {}
    if n_boot > 0:
        boot, failed = _bootstrap(configs, points, form, n_boot, seed, (a, b, floor))
        if len(boot) >= MIN_BOOT_SHARE * n_boot:
            ci = {name: _interval(boot[:, i]) for i, name in enumerate("abc") if name != "c" or form == "saturating"}
    kept = configs.compute[keep]
    return PowerLaw(method, a, b, int(keep.sum()), float(kept.min()), float(kept.max()), r2, compute_col, form,
                    floor, points, model, ci, 0 if boot is None else len(boot), failed,
                    _holdout(configs, points, form, holdout), boot)


def points_from_results(df: pd.DataFrame, compute_col: str = "c_paper") -> pd.DataFrame:
    """Done non-reference runs of a results table as fit points: method (the configuration's label, see
    harness.report.configs: one fit per configuration), model, config (model, samples seen and reference: what a
    seed repeats), compute, error."""
    missing = {"method", "status", "is_reference", "average", compute_col} - set(df.columns)
    if missing:
        raise KeyError(f"results table lacks column(s) {sorted(missing)}")
    rows = with_configs(df)
    rows = rows[(rows["status"] == "done") & ~rows["is_reference"].eq(True)]
    def column(name: str, default: pd.Series) -> pd.Series:
        return (rows[name] if name in rows else default).fillna("-").astype(str)  # NaN stays NaN in a str column

    model = column("model", pd.Series("", index=rows.index))
    # runs that differ only in seed are one configuration; another reference makes another configuration
    config = model + "@" + column("samples_seen", rows[compute_col]) + "@" + column("reference", pd.Series("", index=rows.index))
    return pd.DataFrame({"method": rows["label"].astype(str), "model": model, "config": config,
                         "compute": rows[compute_col].astype(float), "error": 1.0 - rows["average"].astype(float)})


def fit_table(table: pd.DataFrame, by: tuple[str, ...] = ("method",), compute_col: str = "c_paper",
              **options: Any) -> tuple[list[PowerLaw], dict[str, str]]:
    """fit_points on each group of `table` (columns: the `by` columns, compute, error, optional config).

    Returns (fits sorted by group, {group label: reason} for groups that could not be fitted).
    """
    fits: list[PowerLaw] = []
    skipped: dict[str, str] = {}
    for key, group in table.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        label = " ".join(str(k) for k in key)
        try:
            fits.append(fit_points(group["compute"], group["error"], group.get("config"), method=str(key[0]),
                                   model=str(key[1]) if len(key) > 1 else None, compute_col=compute_col, **options))
        except FitError as exc:
            skipped[label] = str(exc)
    return fits, skipped


def fit_methods(df: pd.DataFrame, compute_col: str = "c_paper", points: str = "frontier",
                **options: Any) -> tuple[list[PowerLaw], dict[str, str]]:
    """Fit error = 1 - average against `compute_col` for each method configuration of a results table (done,
    non-reference runs; seeds averaged per model, samples seen and reference). Options go to fit_points (form,
    n_boot, holdout, seed)."""
    _check_selection(points)
    return fit_table(points_from_results(df, compute_col), compute_col=compute_col, points=points, **options)


def data_efficiency(df: pd.DataFrame, **options: Any) -> tuple[list[PowerLaw], dict[str, str]]:
    """Fit error against samples seen per (method configuration, model) of a results table: how error falls
    with data at a fixed model size. Options go to fit_points."""
    pts = points_from_results(df, "samples_seen")
    return fit_table(pts, by=("method", "model"), compute_col="samples_seen", **options)


def saving_ratio(fit: PowerLaw, baseline: PowerLaw, target: float) -> dict[str, Any]:
    """Compute `fit` needs over compute `baseline` needs to reach error `target` (< 1: fit saves compute),
    with a bootstrap interval when both fits have intervals (replicates paired in order); flags targets outside both fitted ranges."""
    need, base = fit.compute_at(target), baseline.compute_at(target)
    out: dict[str, Any] = {"method": fit.method, "baseline": baseline.method, "target_error": target,
                           "compute": need, "baseline_compute": base, "ratio": need / base,
                           "extrapolated": not (fit.compute_min <= need <= fit.compute_max
                                                and baseline.compute_min <= base <= baseline.compute_max)}
    if fit.ci and baseline.ci:  # both bootstraps usable
        n = min(len(fit.boot), len(baseline.boot))
        ratios = _inverse(fit.boot[:n], target) / _inverse(baseline.boot[:n], target)
        usable = ratios[np.isfinite(ratios)]
        out["unreachable_share"] = float(1 - len(usable) / n)
        out["ci"] = _interval(usable) if len(usable) >= MIN_BOOT_SHARE * n else None
    return out


def default_targets(fit: PowerLaw, baseline: PowerLaw, count: int = 3) -> list[float]:
    """Target errors inside both fits' observed ranges: evenly spaced between the larger of their
    best predicted errors and the smaller of their worst, so the ratios interpolate."""
    low = max(fit.predict(fit.compute_max).item(), baseline.predict(baseline.compute_max).item())
    high = min(fit.predict(fit.compute_min).item(), baseline.predict(baseline.compute_min).item())
    if not low < high:
        return []
    return [float(t) for t in np.linspace(low, high, count + 2)[1:-1]]
