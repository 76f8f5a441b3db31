"""The report's tuning section: what each tuning stage tried, how each candidate scored on the validation pairs,
which value it chose and why (harness.grid.tuning's rule), and what the tuning cost, counted on the runs that use
the chosen values (column TUNING). Tuning runs are scored on validation pairs, not the test tasks, so they are
kept out of the leaderboard, the comparisons and the fits."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness import io
from harness.grid.tuning import best, config_key
from harness.report.configs import PARAMS
from harness.store.rundir import RunDir

TUNE, TUNED = "tune", "tuned"  # results-table columns (only for a sweep with tuning stages): harness.sweep._table
TUNING = "tuning_c_total"  # GFLOPs of C_total the tuning runs behind a run's chosen values spent
RULE = ("Each tuning stage trains every candidate value on the pool less its held-out validation pairs and scores "
        "it there alone (mean of image and text retrieval recall@1 among those pairs; never a test task). The "
        "chosen value has the highest mean validation score over the stage's seeds, per method and model (the "
        "first listed on a tie), and is handed to later stages' runs of that method that do not set it. tuning "
        "(GFLOPs): the C_total of every tuning run behind a run's chosen values, counted again on each run that uses "
        "them.")


def split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The results table without its tuning runs, and the tuning runs."""
    if TUNE not in df:
        return df, df.iloc[0:0]
    is_tuning = df[TUNE].notna()
    main = df[~is_tuning].reset_index(drop=True)
    scored_on_validation = [c for c in main if str(c).startswith("task:") and main[c].isna().all()]
    return main.drop(columns=scored_on_validation), df[is_tuning].reset_index(drop=True)


def _key(row: pd.Series, names: list[str]) -> str:
    return config_key(row["method"], json.loads(row[PARAMS]), names)


def with_tuning_compute(df: pd.DataFrame, tuning_runs: pd.DataFrame) -> pd.DataFrame:
    """`df` with column TUNING: for a run whose method takes tuned values, the C_total of the tuning runs of the
    same method configuration and model in the stages that chose them; NaN for a run that was not tuned."""
    spent = []
    for _, row in df.iterrows():
        tuned = json.loads(row[TUNED]) if isinstance(row.get(TUNED), str) else {}
        total = 0.0
        for stage in set(tuned.values()):
            names = [p for p, s in tuned.items() if s == stage]
            runs = tuning_runs[tuning_runs["stage"].eq(stage) & tuning_runs["method"].eq(row["method"])
                               & tuning_runs["model"].eq(row["model"])]
            total += sum(c for (_, r), c in zip(runs.iterrows(), runs["c_total"]) if _key(r, names) == _key(row, names))
        spent.append(total if tuned else float("nan"))
    return df.assign(**{TUNING: spent})


def sampling_se(eval_doc: dict[str, Any]) -> float:
    """The binomial standard error of a validation score (the mean of image recall over the distinct captions and
    text recall over the held-out images): how much the score of one run moves with the draw of validation pairs."""
    v = eval_doc["tasks"]["validation"]
    image, text = v["image_retrieval_recall@1"], v["text_retrieval_recall@1"]
    return 0.5 * math.sqrt(image * (1 - image) / v["captions"] + text * (1 - text) / v["pairs"])


def mark_lead(rows: list[dict[str, Any]]) -> None:
    """On the chosen candidate of a configuration: its lead over the next best and whether that lead is beyond
    sampling noise (more than 1.96 standard errors of the difference: the runs' sd over seeds, else the binomial
    se of single runs)."""
    ranked = sorted((r for r in rows if r["validation"] is not None), key=lambda r: -r["validation"])
    for r in rows:
        r["lead"], r["clear"] = None, None
    chosen = next((r for r in rows if r["chosen"]), None)
    if chosen is None or len(ranked) < 2:
        return
    other = next(r for r in ranked if r is not chosen)
    spread = [(r["validation_sd"] / math.sqrt(r["runs"])) if r["validation_sd"] is not None else r["se"]
              for r in (chosen, other)]
    chosen["lead"] = chosen["validation"] - other["validation"]
    if None not in spread:
        chosen["clear"] = bool(chosen["lead"] > 1.96 * math.hypot(*spread))


def summary(tuning_runs: pd.DataFrame, runs_dir: Path | None = None) -> dict[str, Any]:
    """JSON-ready: the rule, and per tuning stage, method configuration and model, every candidate's values, runs,
    validation score (mean and sample sd over runs; with `runs_dir`, a single run's binomial se), C_total, which
    was chosen, and its lead over the next best (harness.report.tuning.mark_lead)."""
    rows = []
    for (stage, tune, method, model), runs in tuning_runs.groupby(["stage", TUNE, "method", "model"], sort=False):
        names = tune.split(",")
        runs = runs.assign(_key=[_key(r, names) for _, r in runs.iterrows()],
                           _values=[json.dumps({p: json.loads(r[PARAMS])[p] for p in names}, sort_keys=True)
                                    for _, r in runs.iterrows()])
        for _, config in runs.groupby("_key", sort=False):
            done = config[config["status"].eq("done")]
            candidates = list(dict.fromkeys(config["_values"]))
            scores = [done.loc[done["_values"].eq(v), "average"].tolist() for v in candidates]
            chosen = best([json.loads(v) for v in candidates], scores) if all(scores) else None
            group = []
            for i, (values, s) in enumerate(zip(candidates, scores)):
                series = pd.Series(s, dtype=float)
                ids = done.loc[done["_values"].eq(values), "run_id"].tolist()
                se = sampling_se(io.read_json(RunDir.of(runs_dir, ids[0]).eval)) \
                    if runs_dir is not None and len(ids) == 1 else None
                group.append({"stage": stage, "method": method, "model": model, "values": json.loads(values),
                              "runs": len(s), "validation": series.mean() if s else None,
                              "validation_sd": series.std() if len(s) > 1 else None, "se": se,
                              "c_total": float(config.loc[config["_values"].eq(values), "c_total"].sum()),
                              "chosen": i == chosen})
            mark_lead(group)
            rows += group
    return {"rule": RULE, "rows": rows}


NOISE_NOTE = ("sd: over the candidate's runs; se: a single run's binomial standard error over the validation pairs. "
              "lead: the chosen value's validation score minus the next best's; beyond noise when it exceeds 1.96 "
              "standard errors of that difference, else the choice is no better than its runner-up on this split.")


def _verdict(row: pd.Series) -> str:
    if not row["chosen"]:
        return ""
    return "chosen" if row["clear"] is None else \
        "chosen, beyond noise" if row["clear"] else "chosen, within noise"


def frame(doc: dict[str, Any]) -> pd.DataFrame:
    """The tuning summary as a table: scores in percent, the chosen candidates marked with their lead."""
    rows = pd.DataFrame(doc["rows"])
    return pd.DataFrame({
        "stage": rows["stage"], "method": rows["method"], "model": rows["model"],
        "candidate": rows["values"].map(lambda v: ", ".join(f"{k}={x}" for k, x in v.items())),
        "runs": rows["runs"], "validation (%)": 100 * rows["validation"].astype(float),
        "sd (pts)": 100 * rows["validation_sd"].astype(float), "se (pts)": 100 * rows["se"].astype(float),
        "lead (pts)": 100 * rows["lead"].astype(float), "C_total (GFLOPs)": rows["c_total"],
        "chosen": rows.apply(_verdict, axis=1)})


def markdown(doc: dict[str, Any]) -> list[str]:
    """The report's markdown section on tuning."""
    def points(v: float, fmt: str = ".2f") -> str:
        return "-" if pd.isna(v) else format(v, fmt)

    table = frame(doc)
    for column, fmt in (("validation (%)", ".2f"), ("sd (pts)", ".2f"), ("se (pts)", ".2f"), ("lead (pts)", "+.2f"),
                        ("C_total (GFLOPs)", ".3g")):
        table[column] = table[column].map(lambda v: points(v, fmt))
    return ["## Tuning", RULE, NOISE_NOTE, table.to_markdown(index=False, disable_numparse=True)]
