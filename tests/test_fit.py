"""Tests for harness.report.fit: power-law recovery, refusals, per-method grouping, and a golden case on published data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.report.fit import (
    FitError,
    PowerLaw,
    data_efficiency,
    default_targets,
    fit_curve,
    fit_methods,
    fit_points,
    fit_power_law,
    fit_saturating,
    frontier_mask,
    saving_ratio,
)

OPENCLIP_DIR = Path(__file__).resolve().parent / "data" / "scaling-laws-openclip"


def test_recovers_exact_power_law():
    compute = np.geomspace(1e9, 1e12, 6)
    a, b, r2 = fit_power_law(compute, 7.15 * compute**-0.127)
    assert a == pytest.approx(7.15, rel=1e-9)
    assert b == pytest.approx(-0.127, abs=1e-12)
    assert r2 == pytest.approx(1.0, abs=1e-12)


def test_recovers_noisy_power_law():
    rng = np.random.default_rng(0)
    compute = np.geomspace(1e9, 1e12, 40)
    error = 7.15 * compute**-0.127 * np.exp(rng.normal(0.0, 0.03, compute.size))
    a, b, r2 = fit_power_law(compute, error)
    # 3% log-noise on 40 points over 3 decades: standard errors ~0.0024 on b and ~6% on a.
    assert b == pytest.approx(-0.127, abs=0.005)
    assert a == pytest.approx(7.15, rel=0.12)
    assert r2 == pytest.approx(np.corrcoef(np.log(compute), np.log(error))[0, 1] ** 2, rel=1e-9)
    assert 0.95 < r2 < 1.0


def test_accepts_pandas_series_and_lists():
    compute = pd.Series([1e3, 1e4, 1e5])
    a, b, _ = fit_power_law(compute, [0.5 * c**-0.2 for c in compute])
    assert (a, b) == (pytest.approx(0.5), pytest.approx(-0.2))


@pytest.mark.parametrize(
    ("compute", "error", "message"),
    [
        ([1e3, 1e4], [0.5, 0.4], "at least 3 points"),
        ([], [], "at least 3 points"),
        ([1e3, 0.0, 1e5], [0.5, 0.4, 0.3], "non-positive compute"),
        ([1e3, -1e4, 1e5], [0.5, 0.4, 0.3], "non-positive compute"),
        ([1e3, 1e4, 1e5], [0.5, 0.0, 0.3], "non-positive error"),
        ([1e3, np.nan, 1e5], [0.5, 0.4, 0.3], "non-finite compute"),
        ([1e3, 1e4, np.inf], [0.5, 0.4, 0.3], "non-finite compute"),
        ([1e3, 1e4, 1e5], [0.5, np.nan, 0.3], "non-finite error"),
        ([1e4, 1e4, 1e4], [0.5, 0.4, 0.3], "one compute value"),
        ([1e3, 1e4, 1e5], [0.5, 0.4], "same length"),
    ],
)
def test_refuses_untrustworthy_fits(compute, error, message):
    with pytest.raises(FitError, match=message):
        fit_power_law(compute, error)


def test_fit_error_is_a_value_error():
    assert issubclass(FitError, ValueError)


def test_power_law_predict_and_to_dict():
    law = PowerLaw("clip", a=2.0, b=-0.5, n_points=3, compute_min=1.0, compute_max=100.0, r2=0.9)
    np.testing.assert_allclose(law.predict([1.0, 4.0, 100.0]), [2.0, 1.0, 0.2])
    assert law.to_dict() == {
        "method": "clip", "a": 2.0, "b": -0.5, "n_points": 3, "compute_min": 1.0, "compute_max": 100.0, "r2": 0.9,
        "compute_col": "c_paper", "form": "power", "c": 0.0, "points": "frontier", "model": None, "ci": {},
        "n_boot": 0, "n_boot_failed": 0, "holdout": None,
    }
    assert law.compute_at(1.0) == pytest.approx(4.0)
    floored = PowerLaw("drrho", 2.0, -0.5, 4, 1.0, 100.0, 0.9, form="saturating", c=0.1)
    assert floored.predict([4.0]).item() == pytest.approx(1.1)
    assert floored.compute_at(1.1) == pytest.approx(4.0)
    assert floored.compute_at(0.1) == np.inf and floored.compute_at(0.05) == np.inf


def _row(method, compute, average, status="done", is_reference=False):
    return {
        "run_id": f"{method}-{compute:g}-{status}-{is_reference}", "method": method, "status": status,
        "is_reference": is_reference, "c_paper": compute, "c_total": 2 * compute,
        "average": average if status == "done" else np.nan,
    }


def test_fit_methods_groups_by_method_and_excludes_failed_and_reference_rows():
    computes = [1e3, 1e4, 1e5]
    rows = [_row("drrho", c, 1 - 3.0 * c**-0.3) for c in computes]
    rows += [_row("clip", c, 1 - 2.0 * c**-0.2) for c in computes]
    # Off the laws: any of these in a fit would break its exactness.
    rows += [_row("clip", 1e6, 0.01, status="failed"), _row("clip", 1e2, 0.99, is_reference=True)]
    rows += [_row("drrho", 1e6, 0.02, status="failed"), _row("drrho", 1e7, 0.98, is_reference=True)]
    rows += [_row("kd", 1e3, 0.5), _row("kd", 1e4, 0.6), _row("kd", 1e5, 0.7, status="failed")]
    rows += [_row("filter", 1e3, 0.5, is_reference=True)]

    fits, skipped = fit_methods(pd.DataFrame(rows))

    assert [f.method for f in fits] == ["clip", "drrho"]
    clip, drrho = fits
    assert (clip.a, clip.b) == (pytest.approx(2.0, rel=1e-9), pytest.approx(-0.2, abs=1e-9))
    assert (drrho.a, drrho.b) == (pytest.approx(3.0, rel=1e-9), pytest.approx(-0.3, abs=1e-9))
    for fit in fits:
        assert (fit.n_points, fit.compute_min, fit.compute_max, fit.compute_col) == (3, 1e3, 1e5, "c_paper")
        assert fit.r2 == pytest.approx(1.0)
    assert list(skipped) == ["kd"]
    assert "at least 3 points" in skipped["kd"]


def test_fit_methods_uses_the_compute_column_given():
    rows = [_row("clip", c, 1 - 2.0 * c**-0.2) for c in [1e3, 1e4, 1e5]]
    (fit,), skipped = fit_methods(pd.DataFrame(rows), compute_col="c_total")
    assert skipped == {}
    assert fit.compute_col == "c_total"
    assert (fit.compute_min, fit.compute_max) == (2e3, 2e5)
    assert fit.a == pytest.approx(2.0 * 2**0.2) and fit.b == pytest.approx(-0.2)


def test_fit_methods_reports_unfittable_points_instead_of_raising():
    rows = [_row("clip", 1e4, 0.5), _row("clip", 1e4, 0.6), _row("clip", 1e4, 0.7), _row("jest", 1e3, 1.0)]
    fits, skipped = fit_methods(pd.DataFrame(rows), points="all")
    assert fits == []
    assert "at least 3 points" in skipped["clip"]  # three seeds of one configuration: one point
    assert "non-positive error" in skipped["jest"]
    _, on_frontier = fit_methods(pd.DataFrame(rows))  # the frontier keeps one of the three clip points
    assert "need at least 3 points" in on_frontier["clip"]


def test_fit_methods_names_missing_columns():
    with pytest.raises(KeyError, match="average"):
        fit_methods(pd.DataFrame([{"method": "clip", "status": "done", "is_reference": False, "c_paper": 1.0}]))


def _openclip_imagenet_frontier() -> tuple[np.ndarray, np.ndarray]:
    """Per-compute-bin minimum ImageNet-1k zero-shot error of the LAION-trained OpenCLIP models.

    Compute = forward GMACs per image-text pair (arch_info.csv) x samples seen. Bins: 5 of equal
    width in log10(compute) spanning [min, max + 0.1 decade]; each bin contributes its centre
    and its lowest error. OpenAI's CLIP-WIT models are left out by keeping only the models
    listed in trained_models_info.csv.
    """
    if not OPENCLIP_DIR.is_dir():
        pytest.fail(f"published data for the golden fit test is missing: expected {OPENCLIP_DIR} (see tests/data/README.md)")
    results = pd.read_csv(OPENCLIP_DIR / "zeroshot_results.csv")
    trained = pd.read_csv(OPENCLIP_DIR / "trained_models_info.csv")
    arch = pd.read_csv(OPENCLIP_DIR / "arch_info.csv")
    imagenet = results[results["downstream_dataset"] == "imagenet1k"]
    runs = imagenet.merge(trained[["name"]], on="name").merge(arch[["model", "gmacs"]], left_on="arch", right_on="model", suffixes=("", "_arch"))
    assert len(runs) == len(trained) == 29
    compute = runs["gmacs_arch"].to_numpy() * runs["samples_seen"].to_numpy()
    np.testing.assert_allclose(compute, runs["gmacs_total"], rtol=1e-9)
    error = 1.0 - runs["acc1"].to_numpy()

    log_c = np.log10(compute)
    edges = np.linspace(log_c.min(), log_c.max() + 0.1, 6)
    bin_of = np.searchsorted(edges, log_c, side="right") - 1
    centres = (edges[:-1] + edges[1:]) / 2
    occupied = [i for i in range(5) if (bin_of == i).any()]
    return 10 ** centres[occupied], np.array([error[bin_of == i].min() for i in occupied])


def test_golden_openclip_imagenet_scaling_law():
    """Published (tests/data/README.md, Cherti et al. 2023 data): E = 5.86 * C^-0.111, C in GMACs."""
    compute, error = _openclip_imagenet_frontier()
    assert len(compute) == 5
    a, b, r2 = fit_power_law(compute, error)
    # The published numbers are rounded to 3 significant figures: allow half a unit in the last digit.
    assert a == pytest.approx(5.86, abs=0.005)
    assert b == pytest.approx(-0.111, abs=0.0005)
    assert r2 > 0.9


def test_frontier_keeps_only_points_no_cheaper_run_beats():
    compute = [10, 20, 20, 40, 80, 80, 160]
    error = [0.9, 0.8, 0.85, 0.82, 0.7, 0.6, 0.65]
    # 10:0.9 kept; 20:0.8 kept (0.85 at the same compute is beaten); 40:0.82 beaten by 0.8;
    # 80:0.6 kept (0.7 at the same compute is beaten by 0.6); 160:0.65 beaten by 0.6
    assert frontier_mask(compute, error).tolist() == [True, True, False, False, False, True, False]


def test_fit_methods_on_the_frontier_ignores_dominated_runs():
    law = lambda c: 3.0 * c ** -0.2  # noqa: E731
    rows = [{"method": "clip", "status": "done", "is_reference": False, "c_paper": c, "average": 1 - law(c)}
            for c in (1e2, 1e3, 1e4)]
    rows.append({"method": "clip", "status": "done", "is_reference": False, "c_paper": 5e3, "average": 0.0})
    (frontier,), _ = fit_methods(pd.DataFrame(rows))
    assert (frontier.a, frontier.b, frontier.n_points) == (pytest.approx(3.0), pytest.approx(-0.2), 3)
    (everything,), _ = fit_methods(pd.DataFrame(rows), points="all")
    assert everything.n_points == 4 and everything.b != pytest.approx(-0.2, abs=1e-3)
    with pytest.raises(ValueError, match="points must be one of frontier, all"):
        fit_methods(pd.DataFrame(rows), points="best")


def test_saturating_fit_recovers_exact_and_noisy_laws():
    compute = np.geomspace(1e2, 1e6, 9)
    a, b, c, r2 = fit_saturating(compute, 3.0 * compute**-0.3 + 0.2)
    assert (a, b, c) == (pytest.approx(3.0, rel=1e-4), pytest.approx(-0.3, abs=1e-5), pytest.approx(0.2, abs=1e-5))
    assert r2 == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(1)
    compute = np.geomspace(1e2, 1e6, 30)
    error = (3.0 * compute**-0.3 + 0.2) * np.exp(rng.normal(0.0, 0.01, compute.size))
    a, b, c, _ = fit_saturating(compute, error)
    # 1% log-noise on 30 points over 4 decades: b and c are correlated, so both get loose bounds.
    assert b == pytest.approx(-0.3, abs=0.05) and c == pytest.approx(0.2, abs=0.03)
    assert fit_curve(compute, error, "saturating")[:3] == (a, b, c)


def test_saturating_fit_shrugs_off_an_outlier_that_moves_least_squares():
    compute = np.geomspace(1e2, 1e6, 12)
    error = 3.0 * compute**-0.3 + 0.2
    error[5] *= 1.6
    a, b, c, _ = fit_saturating(compute, error)
    assert b == pytest.approx(-0.3, abs=0.02) and c == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize(
    ("form", "compute", "error", "message"),
    [
        ("saturating", [1e2, 1e3, 1e4], [0.5, 0.4, 0.35], "at least 4 points to fit the saturating form"),
        ("saturating", [1e2, 1e3, 1e4, 1e5], [0.5, 0.5, 0.5, 0.5], "flat|exponent"),
        ("saturating", [1e2, 1e3, 1e4, 1e5], [0.3, 0.4, 0.5, 0.6], "does not fall"),
        ("power", [1e2, 1e3, 1e4], [0.3, 0.4, 0.5], "does not fall"),
        ("power", [1e2, 1e3, 1e4], [0.5, 0.4, -0.1], "non-positive error"),
    ],
)
def test_refuses_fits_on_bounds_and_short_point_sets(form, compute, error, message):
    with pytest.raises(FitError, match=message):
        fit_curve(compute, error, form)


def test_unknown_form_is_refused():
    with pytest.raises(ValueError, match="form must be one of power, saturating"):
        fit_curve([1, 2, 3], [0.5, 0.4, 0.3], "exponential")


def test_bootstrap_interval_covers_the_true_exponent_at_about_its_level():
    """95% percentile intervals over 100 seeded synthetic data sets: the truth inside ~95 times."""
    compute = np.geomspace(1e3, 1e7, 12)
    covered = {"a": 0, "b": 0}
    reps = 100
    for rep in range(reps):
        noise = np.random.default_rng(rep).normal(0.0, 0.05, compute.size)
        fit = fit_points(compute, 2.0 * compute**-0.15 * np.exp(noise), points="all", n_boot=200, seed=rep)
        covered["a"] += fit.ci["a"][0] <= 2.0 <= fit.ci["a"][1]
        covered["b"] += fit.ci["b"][0] <= -0.15 <= fit.ci["b"][1]
        assert fit.n_boot + fit.n_boot_failed == 200
    # Case resampling of 12 points undercovers a little; a broken interval (e.g. from the wrong
    # column, or a 50% one) falls far outside this band.
    assert 0.82 <= covered["b"] / reps <= 1.0
    assert 0.82 <= covered["a"] / reps <= 1.0


def test_seeds_of_a_configuration_are_averaged_and_resampled_within_it():
    compute = np.repeat([1e3, 1e4, 1e5, 1e6], 3)
    law = 2.0 * compute**-0.2
    offsets = np.tile([0.9, 1.0, 1.1], 4)
    fit = fit_points(compute, law * offsets, points="all", n_boot=200)
    assert fit.n_points == 4
    assert (fit.a, fit.b) == (pytest.approx(2.0), pytest.approx(-0.2))  # each configuration's seed mean is on the law
    assert fit.ci["b"][0] < -0.2 < fit.ci["b"][1] and fit.n_boot == 200
    same = fit_points(compute, law, points="all", n_boot=50)
    assert same.ci["b"] == [pytest.approx(-0.2)] * 2  # identical seeds: nothing to resample
    with pytest.raises(FitError, match="different compute"):
        fit_points([1e3, 2e3, 1e4, 1e5], [0.5, 0.4, 0.3, 0.2], config=["x", "x", "y", "z"])


def test_holdout_reports_the_extrapolation_error_of_the_largest_compute():
    compute = np.geomspace(1e2, 1e6, 5)
    error = 2.0 * compute**-0.2
    observed = error[-1] * 1.1
    error[-1] = observed
    fit = fit_points(compute, error, points="all", holdout=1)
    predicted = 2.0 * 1e6**-0.2  # the fit on the first four points is the exact law
    assert fit.holdout["n_held_out"] == 1 and fit.holdout["fit_on"] == 4
    assert fit.holdout["predicted"] == [pytest.approx(predicted)]
    assert fit.holdout["relative_error"] == [pytest.approx((predicted - observed) / observed)]
    assert fit_points(compute[:3], error[:3], points="all", holdout=1).holdout is None  # 2 left: no fit


def test_saving_ratio_matches_the_closed_form_of_two_power_laws():
    compute = np.geomspace(1e2, 1e6, 6)
    base = fit_points(compute, 2.0 * compute**-0.2, method="clip", points="all", n_boot=100)
    fast = fit_points(compute, 2.5 * compute**-0.25, method="drrho", points="all", n_boot=100)
    target = 0.4
    closed = (target / 2.5) ** (1 / -0.25) / (target / 2.0) ** (1 / -0.2)
    out = saving_ratio(fast, base, target)
    assert out["ratio"] == pytest.approx(closed, rel=1e-6)
    assert out["ci"] == [pytest.approx(closed, rel=1e-6)] * 2  # exact data: every replicate agrees
    assert out["extrapolated"] is False and out["unreachable_share"] == 0.0
    assert saving_ratio(fast, base, 0.01)["extrapolated"] is True
    targets = default_targets(fast, base)
    assert len(targets) == 3 and all(0.0 < t < 1.0 for t in targets)
    for t in targets:
        assert not saving_ratio(fast, base, t)["extrapolated"]


def test_saving_ratio_is_infinite_below_a_floor():
    compute = np.geomspace(1e2, 1e6, 6)
    base = fit_points(compute, 2.0 * compute**-0.2, method="clip", points="all")
    floored = fit_points(compute, 2.0 * compute**-0.3 + 0.15, method="x", form="saturating", points="all")
    assert saving_ratio(floored, base, 0.1)["ratio"] == np.inf


def test_data_efficiency_fits_samples_seen_per_model_size():
    rows = []
    for model, scale in (("s", 3.0), ("m", 2.0)):
        for n in (1e3, 1e4, 1e5):
            for method, k in (("clip", 1.0), ("drrho", 0.9)):
                rows.append({"method": method, "model": model, "samples_seen": n, "seed": 0, "status": "done",
                             "is_reference": False, "average": 1 - k * scale * n**-0.2, "c_paper": n})
    fits, skipped = data_efficiency(pd.DataFrame(rows))
    assert skipped == {}
    assert [(f.method, f.model) for f in fits] == [("clip", "m"), ("clip", "s"), ("drrho", "m"), ("drrho", "s")]
    drrho_s = fits[3]
    assert drrho_s.compute_col == "samples_seen"
    assert (drrho_s.a, drrho_s.b) == (pytest.approx(2.7), pytest.approx(-0.2))


def test_fit_methods_fits_each_configuration_of_a_swept_parameter_and_of_reference_features():
    # drrho at two taus, the tau 0.1 runs reading the reference's features online or from a cache: each on its own law
    laws = {(0.03, "online"): (3.0, -0.3), (0.1, "online"): (2.5, -0.25), (0.1, "cached"): (2.4, -0.22)}
    rows = [_row("clip", c, 1 - 2.0 * c**-0.2) for c in [1e3, 1e4, 1e5]]
    for (tau, features), (a, b) in laws.items():
        for c in [1e3, 1e4, 1e5]:
            for seed, wobble in enumerate((-0.01, 0.01)):  # seeds of a configuration average onto its law
                rows.append({**_row("drrho", c, 1 - a * c**b + wobble), "run_id": f"{tau}-{features}-{c}-{seed}",
                             "method_params": f'{{"tau": {tau}}}', "reference_features": features})
    table = pd.DataFrame(rows)
    fits, skipped = fit_methods(table)
    assert skipped == {}
    assert [f.method for f in fits] == ["clip", "drrho (tau=0.03, features=online)",
                                        "drrho (tau=0.1, features=cached)", "drrho (tau=0.1, features=online)"]
    by_label = {f.method: f for f in fits}
    for (tau, features), (a, b) in laws.items():
        fit = by_label[f"drrho (tau={tau}, features={features})"]
        assert (fit.a, fit.b, fit.n_points) == (pytest.approx(a, rel=1e-9), pytest.approx(b, rel=1e-9), 3)
    (alone,), _ = fit_methods(table[table["method_params"].eq('{"tau": 0.03}')])
    assert alone.method == "drrho" and (alone.a, alone.b) == (pytest.approx(3.0), pytest.approx(-0.3))
