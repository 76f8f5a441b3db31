"""Tests for harness.fit: power-law recovery, refusals, per-method grouping, and a golden case on published data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.fit import FitError, PowerLaw, fit_methods, fit_power_law, frontier_mask

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OPENCLIP_DIR = SHARED_DATA / "scaling-laws-openclip"


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
        "method": "clip", "a": 2.0, "b": -0.5, "n_points": 3,
        "compute_min": 1.0, "compute_max": 100.0, "r2": 0.9, "compute_col": "c_paper",
    }


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
    assert "one compute value" in skipped["clip"]
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
        pytest.fail(f"published data for the golden fit test is missing: expected {OPENCLIP_DIR} (see ../shared/data/README.md)")
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
    """Published (../shared/data/README.md, Cherti et al. 2023 data): E = 5.86 * C^-0.111, C in GMACs."""
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
