"""What predicts the weak-to-strong gain: rank correlations of the reducible-loss variance and the misfit with
the gain, their bootstrap intervals and verdicts, and the gain-vs-misfit plot."""
import numpy as np
import pandas as pd
from scipy import stats

from harness.report import w2s


def _table(gains, variances, disagreements, seeds=(0, 1)):
    """Steered runs of drrho against one reference per configuration (reference i), two seeds each with the
    same values, plus one reference row."""
    rows = [{"run_id": "ref0", "stage": "ref", "method": "clip", "model": "m", "samples_seen": 1, "seed": 0,
             "is_reference": True, "reference": None, "reference_features": None, "status": "done", "average": 0.5}]
    for i, (g, v, d) in enumerate(zip(gains, variances, disagreements)):
        for seed in seeds:
            rows.append({"run_id": f"r{i}-{seed}", "stage": "s", "method": "drrho", "model": "m", "samples_seen": 1,
                         "seed": seed, "is_reference": False, "reference": f"ref{i}", "reference_features": "cached",
                         "status": "done", "average": 0.5 + g, "gain": g, "gain:digits": 2 * g,
                         "reducible_var": v, "disagree:digits": d, "misfit_ce:digits": 10 * d})
    return pd.DataFrame(rows)


def test_rank_correlations_match_scipy_with_their_expected_signs_and_verdicts():
    gains = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    table = _table(gains, variances=[6, 5, 4, 3, 2, 1], disagreements=[0.3, 0.1, 0.5, 0.2, 0.6, 0.4])
    doc = w2s.predictors(table, n_boot=500)
    rows = {r["quantity"]: r for r in doc["rows"]}
    assert doc["configurations"] == 6
    assert rows["reducible_var"]["rho"] == -1.0 and np.allclose(rows["reducible_var"]["ci"], [-1.0, -1.0])
    assert rows["reducible_var"]["verdict"] == "predicts the gain, in the direction its theory expects"
    expected = stats.spearmanr([0.3, 0.1, 0.5, 0.2, 0.6, 0.4], gains).statistic
    assert np.isclose(rows["disagreement"]["rho"], expected) and np.isclose(rows["misfit_ce"]["rho"], expected)
    low, high = rows["disagreement"]["ci"]
    assert low < expected < high
    assert rows["disagreement"]["verdict"] == "does not predict the gain here (the interval includes 0)"


def test_a_quantity_against_its_expected_sign_is_said_so():
    doc = w2s.predictors(_table([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1]), n_boot=200)
    rows = {r["quantity"]: r for r in doc["rows"]}
    assert rows["reducible_var"]["verdict"] == "correlates with the gain against the direction its theory expects"
    assert rows["disagreement"]["verdict"] == "correlates with the gain against the direction its theory expects"


def test_too_few_configurations_or_no_reference_give_no_correlation():
    doc = w2s.predictors(_table([0.1, 0.2, 0.3], [1, 2, 3], [0.1, 0.2, 0.3]))
    assert all(r["rho"] is None and r["verdict"].startswith("too few configurations (3 < 4)") for r in doc["rows"])
    assert w2s.predictors(_table([], [], []))["skipped"] == "no run with a reference"
    assert "No analysis" in w2s.predictors_markdown({"skipped": "no run with a reference"})[1]


def test_misfit_figure_places_runs_at_disagreement_and_classification_gain_with_the_identity_line():
    fig = w2s.misfit_figure(_table([0.01, 0.02], [1, 2], [0.1, 0.3], seeds=(0,)), "w2s")
    left, right = fig.axes
    offsets = sorted(map(tuple, np.round(np.concatenate([c.get_offsets() for c in left.collections]), 9)))
    assert offsets == [(10.0, 2.0), (30.0, 4.0)]  # disagreement and classification gain, in points
    right_offsets = sorted(map(tuple, np.round(np.concatenate([c.get_offsets() for c in right.collections]), 9)))
    assert right_offsets == [(1.0, 1.0), (3.0, 2.0)]  # cross-entropy (nats) and average gain (points)
    line = next(ln for ln in left.get_lines() if ln.get_linestyle() == "--")
    x, y = line.get_data()
    assert list(x) == list(y)
