"""Joint scaling law of zero-shot error over model size and data, E(F, D) = e0 + a / F^alpha + b / D^beta, fitted
per method configuration, and the compute-optimal allocation it implies (Hoffmann et al. 2022, approach 3).

F is the model's forward GFLOPs per image-text pair, D the samples seen, and C = F * D is C_paper: forward FLOPs
only, in GFLOPs. The fit minimises a Huber loss on log E(F, D) - log E with L-BFGS-B from a grid of starts; e0 lies
in [0, min E), alpha and beta in (0, 2), and a fit on a bound (other than e0 = 0) is refused. At fixed C the optimum
is F* = G * C^(beta/(alpha+beta)), D* = C / F*, with G = (alpha a / (beta b))^(1/(alpha+beta)). Seeds are averaged
per configuration and bootstrapped as in harness.report.fit.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import optimize
from threadpoolctl import ThreadpoolController

from harness.errors import ConfigError
from harness.report.configs import is_configuration_of
from harness.report.fit import CI_LEVEL, DEFAULT_BOOT, MIN_BOOT_SHARE, FitError, _interval, points_from_results
from harness.report.scaling import NO_VERDICT, interval_text, plain, read_numeric_csv

LAW = "E = e0 + a / F^alpha + b / D^beta"
PARAMS = ("e0", "a", "alpha", "b", "beta")
UNITS = {"F": "forward GFLOPs per image-text pair", "D": "samples seen",
         "C": "C_paper = F * D, forward GFLOPs (backward passes not counted)"}
HUBER_DELTA = 1e-3  # log-residual scale where the loss turns from squared to linear (Hoffmann et al. 2022)
EXPONENT_BOUNDS = (0.0, 2.0)
LOG_AMPLITUDE_BOUNDS = (-50.0, 50.0)  # log of each term at the centre of the points
BOUND_TOL = 1e-4
MIN_SIZES, MIN_BUDGETS, MIN_POINTS = 2, 2, len(PARAMS) + 1
CSV_COLUMNS = ("method", "gflops_per_pair", "samples", "error")
START_FLOORS = (0.0, 0.5, 0.9)  # starting e0 as shares of the smallest error
START_EXPONENTS = (0.1, 0.5, 1.0)
START_SPLITS = (0.5,)  # share of the reducible error the F term takes at the centre
BLAS = ThreadpoolController()  # five parameters: BLAS threads only contend (tenfold slower on a loaded machine)
MORE_DATA, LESS_DATA = "optimum shifts to smaller models and more data", "optimum shifts to larger models and less data"
SAME_SPLIT = "no significant difference"


@dataclass(frozen=True)
class JointOptions:
    """How to fit the joint law: Huber delta, bootstrap size, held-out configurations, seed, baseline, and the
    compute values of the allocation table (default: three log-spaced over the points' C range)."""

    huber_delta: float = HUBER_DELTA
    n_boot: int = DEFAULT_BOOT
    holdout: int = 1
    seed: int = 0
    baseline: str = "clip"
    computes: tuple[float, ...] = ()


def optimal_allocation(params: ArrayLike, compute: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F*, D*, E* minimising E at F * D = C for each (e0, a, alpha, b, beta) row and each C: arrays [rows, C]."""
    p = np.atleast_2d(np.asarray(params, dtype=float))
    e0, a, alpha, b, beta = (p[:, [i]] for i in range(5))
    c = np.atleast_1d(np.asarray(compute, dtype=float))[None, :]
    f_opt = (alpha * a / (beta * b)) ** (1.0 / (alpha + beta)) * c ** (beta / (alpha + beta))
    d_opt = c / f_opt
    return f_opt, d_opt, e0 + a / f_opt**alpha + b / d_opt**beta


def allocation_exponents(alpha: ArrayLike, beta: ArrayLike) -> dict[str, np.ndarray]:
    """F* ~ C^F, D* ~ C^D, and E* - e0 ~ C^-E along the optimum."""
    alpha, beta = np.asarray(alpha, dtype=float), np.asarray(beta, dtype=float)
    return {"F": beta / (alpha + beta), "D": alpha / (alpha + beta), "E": alpha * beta / (alpha + beta)}


@dataclass(frozen=True)
class JointLaw:
    """A fitted E(F, D) of one method configuration, with bootstrap intervals (`ci`: parameter -> [low, high]),
    the Huber objective at the optimum and a held-out check when there is one."""

    method: str
    e0: float
    a: float
    alpha: float
    b: float
    beta: float
    n_points: int
    n_sizes: int
    objective: float
    flops_range: tuple[float, float]
    samples_range: tuple[float, float]
    compute_range: tuple[float, float]
    huber_delta: float = HUBER_DELTA
    form: str = "joint"
    ci: dict[str, list[float]] = field(default_factory=dict)
    n_boot: int = 0
    n_boot_failed: int = 0
    holdout: dict[str, Any] | None = None
    boot: np.ndarray | None = field(default=None, repr=False, compare=False)  # [n_boot, 5] rows of PARAMS

    @property
    def params(self) -> np.ndarray:
        """(e0, a, alpha, b, beta)."""
        return np.array([getattr(self, name) for name in PARAMS])

    def predict(self, flops: ArrayLike, samples: ArrayLike) -> np.ndarray:
        """Predicted error at each (F, D)."""
        return _predict(self.params, np.asarray(flops, dtype=float), np.asarray(samples, dtype=float))

    def optimum(self, compute: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """F*, D* and E* at each compute C (GFLOPs)."""
        return tuple(x[0] for x in optimal_allocation(self.params, compute))

    def allocation(self, compute: float) -> dict[str, Any]:
        """F*, D*, E* and D*/F* at `compute`, with bootstrap intervals when the fit has them."""
        f_opt, d_opt, e_opt = (x.item() for x in self.optimum(compute))
        row: dict[str, Any] = {"compute": compute, "F": f_opt, "D": d_opt, "E": e_opt, "D_per_F": d_opt / f_opt}
        if self.ci:
            f_b, d_b, e_b = (x[:, 0] for x in optimal_allocation(self.boot, compute))
            row["ci"] = {"F": _interval(f_b), "D": _interval(d_b), "E": _interval(e_b), "D_per_F": _interval(d_b / f_b)}
        return row

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field except the bootstrap samples, with the allocation exponents."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "boot"}
        out["exponents"] = {k: float(v) for k, v in allocation_exponents(self.alpha, self.beta).items()}
        if self.ci:
            boot = allocation_exponents(self.boot[:, 2], self.boot[:, 4])
            out["exponents_ci"] = {k: _interval(v) for k, v in boot.items()}
        return out


def _predict(params: np.ndarray, flops: np.ndarray, samples: np.ndarray) -> np.ndarray:
    e0, a, alpha, b, beta = params
    return e0 + a / flops**alpha + b / samples**beta


def _huber(theta: np.ndarray, u: np.ndarray, v: np.ndarray, log_e: np.ndarray,
           delta: float) -> tuple[float, np.ndarray]:
    """Huber loss over delta (linear part of unit slope, so L-BFGS-B's tolerances suit any delta) and its gradient,
    for centred parameters (e0, log A, alpha, log B, beta): prediction e0 + A e^(-alpha u) + B e^(-beta v)."""
    e0, log_a, alpha, log_b, beta = theta
    f_term, d_term = np.exp(log_a - alpha * u), np.exp(log_b - beta * v)
    predicted = e0 + f_term + d_term
    r = np.log(predicted) - log_e
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r * r / delta, np.abs(r) - 0.5 * delta).sum()
    g = np.where(small, r / delta, np.sign(r)) / predicted
    grad = np.array([g.sum(), (g * f_term).sum(), -(g * f_term * u).sum(), (g * d_term).sum(), -(g * d_term * v).sum()])
    return float(loss), grad


def _bounds(min_error: float) -> tuple[np.ndarray, np.ndarray]:
    low = np.array([0.0, LOG_AMPLITUDE_BOUNDS[0], EXPONENT_BOUNDS[0], LOG_AMPLITUDE_BOUNDS[0], EXPONENT_BOUNDS[0]])
    high = np.array([min_error * (1 - 1e-9), LOG_AMPLITUDE_BOUNDS[1], EXPONENT_BOUNDS[1], LOG_AMPLITUDE_BOUNDS[1],
                     EXPONENT_BOUNDS[1]])
    return low, high


def _grid_starts(log_e: np.ndarray) -> list[np.ndarray]:
    """Centred starts: floors, exponent pairs and splits of the reducible error at the centre between the terms."""
    centre, floor = float(np.exp(log_e.mean())), float(np.exp(log_e.min()))
    starts = []
    for share, alpha, beta, split in itertools.product(START_FLOORS, START_EXPONENTS, START_EXPONENTS, START_SPLITS):
        rest = centre - share * floor
        starts.append(np.array([share * floor, np.log(split * rest), alpha, np.log((1 - split) * rest), beta]))
    return starts


def _check_bounds(theta: np.ndarray, low: np.ndarray, high: np.ndarray, min_error: float) -> None:
    """Refuse a fit on a bound (e0 = 0 excepted): it describes the bound, not the data."""
    if theta[0] > min_error * (1 - 1e-3):
        raise FitError(f"fitted floor e0 = {theta[0]:.4g} reaches the smallest error {min_error:.4g}: the points are "
                       "flat, the joint law is not identified")
    for i, name in ((1, "log a (centred)"), (2, "alpha"), (3, "log b (centred)"), (4, "beta")):
        if not low[i] + BOUND_TOL < theta[i] < high[i] - BOUND_TOL:
            raise FitError(f"fitted {name} = {theta[i]:.4g} is on its bound ({low[i]:g}, {high[i]:g}): "
                           "the points do not identify the joint law")


def check_design(flops: np.ndarray, samples: np.ndarray) -> None:
    """Raise FitError unless there are 2+ model sizes, 2+ of them with 2+ budgets each, and 6+ distinct points."""
    sizes = np.unique(flops)
    if sizes.size < MIN_SIZES:
        shown = ", ".join(f"{s:g}" for s in sizes) or "none"
        raise FitError(f"fewer than {MIN_SIZES} model sizes (distinct GFLOPs per pair: {shown}); alpha is undetermined")
    budgets = {float(s): int(np.unique(samples[flops == s]).size) for s in sizes}
    if sum(n >= MIN_BUDGETS for n in budgets.values()) < MIN_SIZES:
        shown = ", ".join(f"F={s:g}: {n}" for s, n in budgets.items())
        raise FitError(f"fewer than {MIN_SIZES} model sizes with {MIN_BUDGETS} or more budgets (samples seen) each "
                       f"({shown}); the data term is not told apart from the model term")
    distinct = len(set(zip(flops.tolist(), samples.tolist())))
    if distinct < MIN_POINTS:
        raise FitError(f"need at least {MIN_POINTS} distinct (F, D) points ({len(PARAMS)} parameters + 1), "
                       f"got {distinct}")


def fit_joint_law(flops: ArrayLike, samples: ArrayLike, error: ArrayLike, delta: float = HUBER_DELTA,
                  start: ArrayLike | None = None) -> tuple[np.ndarray, float]:
    """Fit (e0, a, alpha, b, beta) to points (one per configuration) from the start grid, or from `start` (natural
    parameters) alone; return them and the Huber objective (sum over points). Raises FitError for a refusal."""
    f, d, e = (np.asarray(x, dtype=float) for x in (flops, samples, error))
    if not f.shape == d.shape == e.shape or f.ndim != 1:
        raise FitError(f"F, D and error must be 1-D and the same length, got {f.shape}, {d.shape}, {e.shape}")
    for name, values in (("F (GFLOPs per pair)", f), ("D (samples seen)", d), ("error", e)):
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            raise FitError(f"{int(bad.sum())} non-finite or non-positive {name} value(s), "
                           f"e.g. {values[bad][:3].tolist()}")
    check_design(f, d)
    if not delta > 0:
        raise ValueError(f"the Huber delta must be > 0, got {delta}")
    x0, y0 = np.log(f).mean(), np.log(d).mean()  # centre log F and log D so amplitudes and exponents decorrelate
    u, v, log_e = np.log(f) - x0, np.log(d) - y0, np.log(e)
    low, high = _bounds(float(e.min()))
    if start is None:
        starts = _grid_starts(log_e)
    else:
        e0, a, alpha, b, beta = np.asarray(start, dtype=float)
        starts = [np.array([e0, np.log(a) - alpha * x0, alpha, np.log(b) - beta * y0, beta])]
    best = None
    with BLAS.limit(limits=1, user_api="blas"):
        for theta0 in starts:
            sol = optimize.minimize(_huber, np.clip(theta0, low, high), args=(u, v, log_e, delta), jac=True,
                                    method="L-BFGS-B", bounds=list(zip(low, high)),
                                    options={"ftol": 1e-12, "gtol": 1e-8, "maxiter": 5000})
            if np.isfinite(sol.fun) and (best is None or sol.fun < best.fun):
                best = sol
    if best is None:
        raise FitError("no start converged to a finite loss")
    _check_bounds(best.x, low, high, float(e.min()))
    e0, log_a, alpha, log_b, beta = best.x
    return np.array([e0, np.exp(log_a + alpha * x0), alpha, np.exp(log_b + beta * y0), beta]), float(best.fun * delta)


@dataclass(frozen=True)
class Configurations:
    """One method's points: F and D per configuration and the errors of its seeds."""

    flops: np.ndarray
    samples: np.ndarray
    seeds: list[np.ndarray]

    @property
    def means(self) -> np.ndarray:
        return np.array([s.mean() for s in self.seeds])


def configurations(points: pd.DataFrame) -> Configurations:
    """Average seeds per configuration (column config, else one per (F, D))."""
    label = points["config"] if "config" in points else \
        points["flops"].astype(str) + "@" + points["samples"].astype(str)
    frame = points.assign(config=label.astype(str))
    if frame.groupby("config")[["flops", "samples"]].nunique().gt(1).any(axis=None):
        raise FitError("a configuration has runs at different F or D; configurations must share them")
    grouped = frame.groupby("config", sort=True)
    seeds = [g.to_numpy(dtype=float) for _, g in grouped["error"]]
    return Configurations(grouped["flops"].first().to_numpy(float), grouped["samples"].first().to_numpy(float), seeds)


def _bootstrap(configs: Configurations, delta: float, n_boot: int, seed: int,
               start: np.ndarray) -> tuple[np.ndarray, int]:
    """Parameters of each fittable replicate (warm-started at `start`) and the number that could not be fitted:
    seeds resampled within configurations where some have several, else the configurations themselves."""
    rng = np.random.default_rng(seed)
    per_seed = any(len(s) > 1 for s in configs.seeds)
    rows, failed = [], 0
    for _ in range(n_boot):
        if per_seed:
            pick = np.arange(len(configs.seeds))
            error = np.array([rng.choice(s, size=len(s)).mean() for s in configs.seeds])
        else:
            pick = rng.integers(0, len(configs.seeds), len(configs.seeds))
            error = configs.means[pick]
        try:
            rows.append(fit_joint_law(configs.flops[pick], configs.samples[pick], error, delta, start)[0])
        except FitError:
            failed += 1
    return np.array(rows, dtype=float).reshape(-1, len(PARAMS)), failed


def _holdout(configs: Configurations, delta: float, k: int) -> dict[str, Any] | None:
    """Fit without the configurations at the k largest C = F * D and predict them (None when the rest is refused)."""
    compute = configs.flops * configs.samples
    order = np.unique(compute)
    if k < 1 or len(order) <= k:
        return None
    inside = compute < order[-k]
    try:
        params, _ = fit_joint_law(configs.flops[inside], configs.samples[inside], configs.means[inside], delta)
    except FitError:
        return None
    observed = configs.means[~inside]
    predicted = _predict(params, configs.flops[~inside], configs.samples[~inside])
    return {"n_held_out": int((~inside).sum()), "flops": configs.flops[~inside].tolist(),
            "samples": configs.samples[~inside].tolist(), "compute": compute[~inside].tolist(),
            "observed": observed.tolist(), "predicted": predicted.tolist(),
            "relative_error": ((predicted - observed) / observed).tolist(), "fit_on": int(inside.sum())}


def fit_joint(points: pd.DataFrame, method: str = "", delta: float = HUBER_DELTA, n_boot: int = 0, holdout: int = 0,
              seed: int = 0) -> JointLaw:
    """Fit one method's points (columns flops, samples, error, optional config): seeds averaged per configuration,
    optionally `n_boot` bootstrap replicates for intervals and the `holdout` largest computes held out."""
    configs = configurations(points)
    params, objective = fit_joint_law(configs.flops, configs.samples, configs.means, delta)
    boot, failed, ci = None, 0, {}
    if n_boot > 0:
        boot, failed = _bootstrap(configs, delta, n_boot, seed, params)
        if len(boot) >= MIN_BOOT_SHARE * n_boot:
            ci = {name: _interval(boot[:, i]) for i, name in enumerate(PARAMS)}
    compute = configs.flops * configs.samples
    return JointLaw(method, *map(float, params), len(configs.seeds), int(np.unique(configs.flops).size), objective,
                    (float(configs.flops.min()), float(configs.flops.max())),
                    (float(configs.samples.min()), float(configs.samples.max())),
                    (float(compute.min()), float(compute.max())), delta, "joint", ci,
                    0 if boot is None else len(boot), failed, _holdout(configs, delta, holdout), boot)


def fit_joint_table(points: pd.DataFrame, opts: JointOptions = JointOptions()) -> tuple[list[JointLaw], dict[str, str]]:
    """fit_joint per method of `points`; returns (laws sorted by method, {method: reason} for the refused)."""
    laws, skipped = [], {}
    for method, group in points.groupby("method", sort=True):
        try:
            laws.append(fit_joint(group, str(method), opts.huber_delta, opts.n_boot, opts.holdout, opts.seed))
        except FitError as exc:
            skipped[str(method)] = str(exc)
    return laws, skipped


def eligible(points: pd.DataFrame) -> bool:
    """Whether some method has 2+ model sizes with 2+ budgets each: the grid supports a joint fit."""
    for _, group in points.groupby("method"):
        budgets = group.groupby("flops")["samples"].nunique()
        if (budgets >= MIN_BUDGETS).sum() >= MIN_SIZES:
            return True
    return False


def joint_points(df: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    """Fit points of a results table (done, non-reference runs, one row per run): method (the configuration's label),
    config (what seeds repeat), flops (the run's gflops_per_pair, from its preset's profile), samples (samples seen)
    and error (1 - average, or 1 - the score of `task`)."""
    df = df.reset_index(drop=True)
    base = points_from_results(df, "samples_seen")
    runs = df.loc[base.index]
    score = runs["average"]
    if task is not None:
        tasks = sorted(str(c).removeprefix("task:") for c in df.columns if str(c).startswith("task:"))
        if f"task:{task}" not in df:
            raise ConfigError("--task", task, f"no such task in the results; tasks: {', '.join(tasks) or 'none'}")
        score = runs[f"task:{task}"]
    return pd.DataFrame({"method": base["method"], "config": base["config"],
                         "flops": runs["gflops_per_pair"].astype(float), "samples": base["compute"],
                         "error": 1.0 - score.astype(float)})


def read_joint_csv(path: Path) -> pd.DataFrame:
    """Fit points from a CSV with columns method, gflops_per_pair, samples, error (rows of one method at one F and D
    are seeds of one configuration). Raises ConfigError naming the file and the column."""
    frame = read_numeric_csv(path, CSV_COLUMNS, "joint-fit", allow_empty=False)
    method = frame["method"].astype(str)
    return pd.DataFrame({"method": method, "config": method + "@" + frame["gflops_per_pair"].astype(str) + "@"
                         + frame["samples"].astype(str), "flops": frame["gflops_per_pair"],
                         "samples": frame["samples"], "error": frame["error"]})


def shift_verdict(ci: list[float] | None) -> str:
    """Verdict on a ratio of D*/F* (method over baseline) from its interval: above 1, the optimum moves toward smaller
    models trained on more data."""
    if not ci:
        return NO_VERDICT
    return MORE_DATA if ci[0] > 1 else LESS_DATA if ci[1] < 1 else SAME_SPLIT


def _shifts(laws: list[JointLaw], baseline: str, computes: list[float]) -> list[dict[str, Any]]:
    """D*/F* of each configuration over each baseline configuration's at each C, with a paired bootstrap interval."""
    rows = []
    bases = [law for law in laws if is_configuration_of(law.method, baseline)]
    for law, base in itertools.product(laws, bases):
        if law is base:
            continue
        for c in computes:
            mine, theirs = law.allocation(c), base.allocation(c)
            row = {"method": law.method, "baseline": base.method, "compute": c,
                   "ratio": mine["D_per_F"] / theirs["D_per_F"], "ci": None}
            if law.ci and base.ci:
                n = min(len(law.boot), len(base.boot))
                ratio = [d[:n, 0] / f[:n, 0] for f, d, _ in (optimal_allocation(x.boot, c) for x in (law, base))]
                row["ci"] = _interval(ratio[0] / ratio[1])
            rows.append({**row, "verdict": shift_verdict(row["ci"])})
    return rows


def analyse_joint(points: pd.DataFrame, opts: JointOptions = JointOptions(),
                  error_label: str = "1 - average") -> tuple[dict[str, Any], list[JointLaw]]:
    """Fit every method configuration of `points` (columns method, flops, samples, error, optional config), tabulate
    the compute-optimal allocation and its shift against the baseline; returns the JSON-ready document and the laws."""
    laws, skipped = fit_joint_table(points, opts)
    compute = points["flops"] * points["samples"]
    computes = list(opts.computes) or (np.geomspace(compute.min(), compute.max(), 3).tolist() if len(points) else [])
    fits = [{**law.to_dict(), "allocation": [law.allocation(c) for c in computes]} for law in laws]
    doc = {"form": "joint", "law": LAW, "units": UNITS, "error": error_label, "huber_delta": opts.huber_delta,
           "n_boot": opts.n_boot, "ci_level": CI_LEVEL, "holdout": opts.holdout, "seed": opts.seed,
           "baseline": opts.baseline, "computes": computes, "fits": fits, "skipped": skipped,
           "shifts": _shifts(laws, opts.baseline, computes)}
    return plain(doc), laws


def format_joint_text(doc: dict[str, Any]) -> str:
    """The joint analysis as text: per fit its law with intervals, objective, held-out check and allocation."""
    level = f"{100 * doc['ci_level']:.0f}%"
    lines = [f"joint fits of error ({doc['error']}): {doc['law']}; F in GFLOPs per pair, D in samples seen, "
             f"C = F*D = C_paper in forward GFLOPs ({level} bootstrap intervals over {doc['n_boot']} replicates, "
             f"Huber delta {doc['huber_delta']:g})"]
    for law in doc["fits"]:
        ci = law["ci"]
        text = ", ".join(f"{name} = {law[name]:.4g}{interval_text(ci.get(name), '.4g')}" for name in PARAMS)
        lines.append(f"  {law['method']}: {text}")
        exps, exps_ci = law["exponents"], law.get("exponents_ci", {})
        lines.append(f"    {law['n_points']} points over {law['n_sizes']} sizes, "
                     f"Huber objective {law['objective']:.4g}; "
                     f"bootstrap {law['n_boot']} fitted / {law['n_boot_failed']} unfittable; optimum F* ~ "
                     f"C^{exps['F']:.3f}{interval_text(exps_ci.get('F'), '.3f')}, D* ~ C^{exps['D']:.3f}"
                     f"{interval_text(exps_ci.get('D'), '.3f')}, E* - e0 ~ C^-{exps['E']:.3f}")
        held = law["holdout"]
        if held:
            checks = ", ".join(f"F={f:.3g}, D={d:.3g}: observed {o:.4f}, predicted {p:.4f} ({100 * r:+.1f}%)"
                               for f, d, o, p, r in zip(held["flops"], held["samples"], held["observed"],
                                                        held["predicted"], held["relative_error"]))
            lines.append(f"    held out the {held['n_held_out']} configuration(s) of largest compute, fitted on "
                         f"{held['fit_on']}: {checks}")
        for row in law["allocation"]:
            row_ci = row.get("ci") or {}
            lines.append(f"    C={row['compute']:.3g}: F*={row['F']:.3g}{interval_text(row_ci.get('F'), '.3g')}, "
                         f"D*={row['D']:.3g}{interval_text(row_ci.get('D'), '.3g')}, "
                         f"E*={row['E']:.4f}{interval_text(row_ci.get('E'), '.4f')}")
    for method, reason in doc["skipped"].items():
        lines.append(f"  {method}: refused: {reason}")
    if doc["shifts"]:
        lines.append(f"optimal D*/F* relative to {doc['baseline']} (> 1: smaller models trained on more data):")
        for row in doc["shifts"]:
            ratio = "undefined" if row["ratio"] is None else f"{row['ratio']:.3g}x"
            lines.append(f"  {row['method']} (against {row['baseline']}) at C={row['compute']:.3g}: "
                         f"{ratio}{interval_text(row['ci'], '.3g')}: {row['verdict']}")
    return "\n".join(lines) + "\n"
