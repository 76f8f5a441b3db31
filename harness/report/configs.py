"""Method configurations of a results table: a method's name, its parameters and how a run reads its reference's
features (online or cached). Seeds repeat a configuration; the report's means, fits, plots and comparisons group
runs by configuration, each named by a label that shows what sets it apart from the method's other ones."""
from __future__ import annotations

import json

import pandas as pd

PARAMS = "method_params"  # results-table column: the method's resolved parameters as key-sorted JSON
FEATURES = "reference_features"  # results-table column: 'online' or 'cached' for a run with a reference
NONE = "-"  # a run without a reference: its reference and features
KEY = ["method", "params", "features"]  # what makes a configuration, besides model, samples seen and reference


def method_labels(configs: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """Display name of each (method, params JSON, features) of `configs`: the method, followed by the parameters
    whose values differ among that method's configurations and, when those differ in it, how features are
    read, e.g. 'drrho (tau=0.03)' or 'drrho (features=cached)'."""
    labels = {}
    for method, group in configs.groupby("method"):
        params = {text: json.loads(text) for text in group["params"].unique()}
        keys = sorted({k for p in params.values() for k in p})
        varying = [k for k in keys if len({json.dumps(p.get(k)) for p in params.values()}) > 1]
        by_features = group["features"].nunique() > 1
        for text, features in group[["params", "features"]].drop_duplicates().itertuples(index=False):
            shown = [f"{k}={params[text].get(k)}" for k in varying]
            shown += [f"features={'none' if features == NONE else features}"] if by_features else []
            labels[(method, text, features)] = f"{method} ({', '.join(shown)})" if shown else str(method)
    return labels


def with_configs(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with columns params (PARAMS, '{}' where the table has none), features (FEATURES, NONE for none) and
    label (`method_labels`, drawn over every row of `df`, so a parameter the grid sweeps shows on each run)."""
    params = df[PARAMS].fillna("{}") if PARAMS in df else "{}"
    features = df[FEATURES].fillna(NONE) if FEATURES in df else NONE
    table = df.assign(params=params, features=features)
    labels = method_labels(table)
    return table.assign(label=[labels[key] for key in table[KEY].itertuples(index=False, name=None)])


def is_configuration_of(label: str, method: str) -> bool:
    """Whether `label` (from `method_labels`) names a configuration of `method`."""
    return label == method or label.startswith(f"{method} (")
