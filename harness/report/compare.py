"""Paired comparisons of each method configuration against a baseline, seed by seed: the mean difference
in percentage points with a Student-t interval, a p-value, Holm's step-down correction across every
comparison shown, and a verdict. `clipsteer compare` and the report both go through `compare`."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from harness.errors import ConfigError, did_you_mean
from harness.report.configs import FEATURES, NONE, with_configs
from harness.report.fit import CI_LEVEL
from harness.report.plots import task_columns

ALPHA = 0.05  # verdicts at Holm-adjusted p <= ALPHA
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no significant difference"
ONE_SEED = "1 seed: no verdict possible"
ZERO_SPREAD = 1e-9  # points: per-seed differences whose standard deviation is below this are identical
CONFIG = ["stage", "method", "params", "features", "label", "model", "samples_seen", "reference"]  # what a seed repeats
PAIR_ON = ["model", "samples_seen", "seed"]
# A run with no baseline run at its samples seen (e.g. a `budget: {c_total: X}` stage's selector, trained on fewer
# samples) pairs with the baseline run of its model and seed whose own C_total (less a shared cache's share) is
# within this fraction of its own: a comparison at equal C_total. A budget resolves to whole batches, so the
# C_totals of a stage differ by up to half a step.
C_TOTAL_TOLERANCE = 0.03
SAMPLES, C_TOTAL = "samples seen", "C_total"  # what a pair is matched on
BASE = "_base"  # suffix of the baseline's columns in a table of pairs


def paired_test(differences: ArrayLike) -> dict[str, Any]:
    """Two-sided paired test of per-seed differences (method - baseline): the number of pairs, their mean, a
    Student-t interval and p-value. One pair: none of these (no verdict). Identical differences (zero
    variance): the t statistic is undefined, so no interval, and the exact sign-flip test's p-value, 2 / 2^n
    (only flipping all signs together matches the observed |mean|), or 1 when every difference is 0."""
    d = np.asarray(differences, dtype=float)
    if d.ndim != 1 or len(d) == 0 or not np.isfinite(d).all():
        raise ValueError(f"need a 1-D array of finite differences, got {d.tolist()}")
    n = len(d)
    if n == 1:
        return {"seeds": 1, "mean_difference": None, "ci": None, "p_value": None, "test": None}
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd < ZERO_SPREAD:
        exact_zero = abs(mean) < ZERO_SPREAD
        return {"seeds": n, "mean_difference": 0.0 if exact_zero else mean, "ci": None,
                "p_value": 1.0 if exact_zero else 2.0 ** (1 - n), "test": "sign-flip"}
    se = sd / np.sqrt(n)
    half = float(stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1) * se)
    return {"seeds": n, "mean_difference": mean, "ci": [mean - half, mean + half],
            "p_value": float(2 * stats.t.sf(abs(mean) / se, n - 1)), "test": "t"}


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest of m (i from 1) times
    m - i + 1, made non-decreasing in that order and capped at 1."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    return adjusted


def verdict(mean: float | None, p_holm: float | None) -> str:
    """'better' or 'worse' (the sign of the mean difference) when the Holm-adjusted p is at most ALPHA,
    else 'no significant difference'; without a p-value (one seed), no verdict."""
    if p_holm is None:
        return ONE_SEED
    if p_holm > ALPHA:
        return NO_DIFFERENCE
    return BETTER if mean > 0 else WORSE


def _runs(df: pd.DataFrame) -> pd.DataFrame:
    """Done non-reference runs with the configuration columns (harness.report.configs.with_configs) and
    reference (NONE for none)."""
    if df.empty:
        return pd.DataFrame(columns=[*CONFIG, "seed", "average"])
    runs = with_configs(df)
    runs = runs[runs["status"].eq("done") & ~runs["is_reference"].eq(True)]
    return runs.assign(reference=runs["reference"].fillna(NONE) if "reference" in runs else NONE)


def methods_of(df: pd.DataFrame) -> list[str]:
    """The methods of a results table's done non-reference runs, sorted."""
    return sorted(_runs(df)["method"].unique())


def check_baseline(df: pd.DataFrame, baseline: str, source: str) -> None:
    """Raise ConfigError naming `source` and the methods there unless `baseline` has done runs in `df`."""
    methods = methods_of(df)
    if baseline not in methods:
        raise ConfigError("--baseline", "", f"no done run of method {baseline!r} in {source}; methods there: "
                          f"{', '.join(methods) or 'none'}{did_you_mean(baseline, methods)}")


def _own_c_total(runs: pd.DataFrame) -> pd.Series:
    """A run's C_total without its share of a shared feature cache (paid once for the sweep)."""
    if "c_total" not in runs:
        return pd.Series(np.nan, index=runs.index)
    return runs["c_total"] - runs["cache_share"].fillna(0.0) if "cache_share" in runs else runs["c_total"]


def paired_runs(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Every (method run, baseline run) pair of a results table: same model, samples seen and seed, the
    baseline run without a reference or with the method run's; a method run with no such baseline run pairs with
    the baseline run of its model and seed at its own C_total (C_TOTAL_TOLERANCE), if any. The baseline's columns
    end in BASE; `paired_on` says which."""
    runs = _runs(df).assign(own_c_total=lambda r: _own_c_total(r))
    columns = [*CONFIG, "seed", "average", "own_c_total", *task_columns(runs)]
    is_base = runs["method"].eq(baseline)
    method, base = runs.loc[~is_base, columns], runs.loc[is_base, columns]

    def usable(pairs: pd.DataFrame) -> pd.DataFrame:
        base_ref = pairs["reference" + BASE]
        return pairs[base_ref.eq(NONE) | base_ref.eq(pairs["reference"])]

    exact = usable(method.merge(base, on=PAIR_ON, suffixes=("", BASE))).assign(paired_on=SAMPLES)
    done = set(exact[[*CONFIG, "seed"]].itertuples(index=False, name=None))
    unpaired = [key not in done for key in method[[*CONFIG, "seed"]].itertuples(index=False, name=None)]
    rest = method[np.array(unpaired, dtype=bool)]
    near = usable(rest.merge(base.drop(columns=["samples_seen"]), on=["model", "seed"], suffixes=("", BASE)))
    gap = (near["own_c_total" + BASE] / near["own_c_total"] - 1).abs()
    near = near[gap <= C_TOTAL_TOLERANCE].assign(paired_on=C_TOTAL)
    return pd.concat([exact, near], ignore_index=True)


def _config_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {"stage": config["stage"], "method": config["method"], "label": config["label"],
            "params": json.loads(config["params"]), "model": config["model"],
            "samples_seen": int(config["samples_seen"]),
            "reference": None if config["reference"] == NONE else config["reference"],
            FEATURES: None if config["features"] == NONE else config["features"]}


def compare(df: pd.DataFrame, baseline: str = "clip") -> dict[str, Any]:
    """Every method configuration of a results table against `baseline`, per task and on the average score:
    paired tests over seeds (`paired_test`), Holm-adjusted across all rows with a p-value, and verdicts.
    Configurations with no baseline run to pair with are listed under 'unmatched'. JSON-ready."""
    runs = _runs(df)
    metrics = ["average", *task_columns(runs)]
    pairs = paired_runs(df, baseline)
    keys = [*CONFIG, "stage" + BASE, "label" + BASE, "paired_on"]
    rows = []
    for key, group in pairs.groupby(keys, sort=True):
        config = dict(zip(keys, key))
        fields = {**_config_fields(config), "baseline_stage": config["stage" + BASE],
                  "baseline_label": config["label" + BASE], "paired_on": config["paired_on"]}
        for metric in metrics:
            both = group[[metric, metric + BASE]].dropna()
            if not both.empty:
                test = paired_test(100 * (both[metric] - both[metric + BASE]))
                rows.append({**fields, "metric": metric.removeprefix("task:"), **test})
    tested = [i for i, row in enumerate(rows) if row["p_value"] is not None]
    adjusted = dict(zip(tested, holm([rows[i]["p_value"] for i in tested]).tolist()))
    for i, row in enumerate(rows):
        row["p_holm"] = adjusted.get(i)
        row["verdict"] = verdict(row["mean_difference"], row["p_holm"])
    others = runs[~runs["method"].eq(baseline)]
    paired = set(pairs[CONFIG].itertuples(index=False, name=None))
    unmatched = [_config_fields(dict(zip(CONFIG, key)))
                 for key in others[CONFIG].drop_duplicates().itertuples(index=False, name=None) if key not in paired]
    return {"baseline": baseline, "unit": "percentage points, method - baseline", "ci_level": CI_LEVEL,
            "alpha": ALPHA, "correction": "holm", "family_size": len(tested), "rows": rows, "unmatched": unmatched}


def comparisons_frame(doc: dict[str, Any]) -> pd.DataFrame:
    """One row per comparison of a `compare` document, numbers as numbers (NaN where there is none); the stage
    and baseline columns only when they vary, the reference column only when a run has one."""
    rows = pd.DataFrame(doc["rows"])
    if rows.empty:
        return rows
    frame = pd.DataFrame({**({"stage": rows["stage"]} if rows["stage"].nunique() > 1 else {}), "method": rows["label"],
                          "model": rows["model"], "samples seen": rows["samples_seen"]})
    if rows["reference"].notna().any():
        frame["reference"] = rows["reference"].fillna(NONE)
    baseline = rows["baseline_label"] + " in " + rows["baseline_stage"]
    if baseline.nunique() > 1:
        frame["baseline"] = baseline
    if rows["paired_on"].eq(C_TOTAL).any():
        frame["paired at equal"] = rows["paired_on"]
    ci = rows["ci"].map(lambda c: c or [np.nan, np.nan])
    return frame.assign(**{"score": rows["metric"], "seeds": rows["seeds"],
                           "difference (pts)": rows["mean_difference"].astype(float),
                           "95% CI low": ci.str[0].astype(float), "95% CI high": ci.str[1].astype(float),
                           "p": rows["p_value"].astype(float), "Holm p": rows["p_holm"].astype(float),
                           "verdict": rows["verdict"]})


def notes(doc: dict[str, Any]) -> list[str]:
    """The paragraphs around the comparison table: how to read it (or why there is none), then one line per
    configuration left unpaired."""
    base = doc["baseline"]
    head = (f"Each method configuration against {base} on the same model, samples seen and reference, runs paired "
            f"by seed. difference: mean over seeds of method - {base}, in percentage points, with a "
            f"{100 * doc['ci_level']:.0f}% Student-t interval; p: two-sided paired t-test. Holm's step-down correction "
            f"across the {doc['family_size']} comparisons with a p-value; verdict at Holm p <= {doc['alpha']:g}. One "
            "seed: no verdict. Where every seed differs by the same amount (zero variance) the t-test is undefined: "
            "no interval, and p from the exact sign-flip test (2 / 2^seeds; 1 when the differences are all 0)."
            + (f" Rows paired at equal {C_TOTAL}: a run with no {base} run at its samples seen is paired with the "
               f"{base} run of its model and seed whose C_total (less a shared feature cache's share) is within "
               f"{100 * C_TOTAL_TOLERANCE:g}% of its own." if any(r["paired_on"] == C_TOTAL for r in doc["rows"]) else "")
            if doc["rows"] else
            f"No comparisons: no method configuration has a {base} run with the same model, samples seen and seed.")
    return [head, *(f"- {u['label']} on {u['model']} at {u['samples_seen']:,} samples (stage {u['stage']}): no {base} "
                    "run with the same model and seed at its samples seen or its C_total" for u in doc["unmatched"])]


def _number(value: float, fmt: str) -> str:
    return "-" if pd.isna(value) else format(value, fmt)


def _markdown_table(frame: pd.DataFrame) -> str:
    """The comparisons frame as a pipe table: numbers formatted, the interval in one column ('-' for one seed,
    'zero variance' where the t interval is undefined), p-values and verdict last."""
    one_seed = frame["seeds"].eq(1).to_numpy()
    zero = ~one_seed & frame["95% CI low"].isna().to_numpy()
    table = frame.drop(columns=["95% CI low", "95% CI high", "p", "Holm p", "verdict"]).assign(**{
        "samples seen": frame["samples seen"].map(lambda n: f"{n:,}"),
        "difference (pts)": frame["difference (pts)"].map(lambda v: _number(v, "+.2f")),
        "95% CI (pts)": [f"[{lo:+.2f}, {hi:+.2f}]" for lo, hi in zip(frame["95% CI low"], frame["95% CI high"])],
        "p": frame["p"].map(lambda v: _number(v, ".3g")), "Holm p": frame["Holm p"].map(lambda v: _number(v, ".3g")),
        "verdict": frame["verdict"]})
    table.loc[one_seed, "95% CI (pts)"] = "-"
    table.loc[zero, "95% CI (pts)"] = "zero variance"
    text = ("stage", "method", "model", "reference", "baseline", "paired at equal", "score", "verdict")
    return table.to_markdown(index=False, disable_numparse=True,
                             colalign=["left" if c in text else "right" for c in table.columns])


def comparisons_markdown(doc: dict[str, Any]) -> list[str]:
    """Markdown parts of a `compare` document: how to read it, the table, the configurations left unpaired."""
    head, *unmatched = notes(doc)
    return [head, *([_markdown_table(comparisons_frame(doc))] if doc["rows"] else []), *unmatched]


def format_text(doc: dict[str, Any]) -> str:
    """The comparison as text for the terminal: a heading, then the markdown parts."""
    return "\n\n".join([f"Paired comparisons against {doc['baseline']}", *comparisons_markdown(doc)]) + "\n"
