"""Tests for harness.report.scaling and `clipsteer fit`: CSV input, the JSON document, refusals and bad input."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.report.scaling import (
    NO_VERDICT,
    FitOptions,
    analyse,
    data_savings,
    format_text,
    read_points_csv,
    saving_verdict,
)
from tests.test_fit import _openclip_imagenet_frontier


def _csv(tmp_path, rows, name="points.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _two_laws(seeds=1):
    rows = []
    for c in np.geomspace(1e3, 1e6, 5):
        for s in range(seeds):
            wobble = 1 + 0.02 * (s - (seeds - 1) / 2)
            rows.append({"method": "clip", "compute": c, "error": 2.0 * c**-0.2 * wobble})
            rows.append({"method": "drrho", "compute": c, "error": 2.5 * c**-0.25 * wobble})
    return rows


def test_fit_csv_of_published_openclip_numbers_gives_the_published_law(tmp_path, capsys):
    compute, error = _openclip_imagenet_frontier()
    path = _csv(tmp_path, {"method": "openclip", "compute": compute, "error": error})
    assert main(["fit", "--csv", str(path), "--points", "all", "--json", "--bootstrap", "200"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (fit,) = doc["fits"]
    assert fit["a"] == pytest.approx(5.86, abs=0.005) and fit["b"] == pytest.approx(-0.111, abs=0.0005)
    assert fit["ci"]["b"][0] < fit["b"] < fit["ci"]["b"][1]
    assert fit["holdout"]["n_held_out"] == 1 and len(fit["holdout"]["relative_error"]) == 1
    assert doc["compute"] == "compute" and doc["savings"] == [] and doc["skipped"] == {}


def test_fit_text_shows_intervals_holdout_and_savings(tmp_path, capsys):
    path = _csv(tmp_path, _two_laws(seeds=3))
    assert main(["fit", "--csv", str(path), "--target", "0.4"]) == 0
    out = capsys.readouterr().out
    closed = (0.4 / 2.5) ** (1 / -0.25) / (0.4 / 2.0) ** (1 / -0.2)
    assert f"drrho at E=0.4000: {closed:.3g}x [" in out
    assert "held out the largest compute, fitted on 4 configurations" in out
    assert "clip: E = 2 [" in out  # seed means lie on the law; intervals from resampled seeds


@pytest.mark.parametrize(("ci", "word"), [([0.4, 0.9], "better"), ([1.05, 3.0], "worse"),
                                          ([0.8, 1.2], "no significant difference"),
                                          ([1.0, 1.5], "no significant difference"), (None, NO_VERDICT)])
def test_saving_verdict_reads_the_interval_against_1(ci, word):
    assert saving_verdict(ci) == word  # the ratio is the method's compute over the baseline's: below 1 saves


def test_savings_carry_the_verdict_of_their_interval(tmp_path, capsys):
    rows = pd.DataFrame(_two_laws(seeds=3))
    doc, _ = analyse(read_points_like(rows), FitOptions(n_boot=200, targets=(0.4,)))
    (row,) = doc["savings"]
    assert row["ratio"] == pytest.approx((0.4 / 2.5) ** (1 / -0.25) / (0.4 / 2.0) ** (1 / -0.2))  # 0.49: saves
    assert row["ci"][1] < 1 and row["verdict"] == "better"
    inverse, _ = analyse(read_points_like(rows), FitOptions(n_boot=200, targets=(0.4,), baseline="drrho"))
    assert inverse["savings"][0]["ci"][0] > 1 and inverse["savings"][0]["verdict"] == "worse"
    unbooted, _ = analyse(read_points_like(rows), FitOptions(n_boot=0, targets=(0.4,)))
    assert unbooted["savings"][0]["verdict"] == NO_VERDICT
    assert main(["fit", "--csv", str(_csv(tmp_path, _two_laws(seeds=3))), "--target", "0.4", "--bootstrap", "200"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("]: better")


def test_fit_refusals_exit_1_and_name_the_reason(tmp_path, capsys):
    rows = _two_laws() + [{"method": "kd", "compute": 1e3, "error": 0.5}, {"method": "kd", "compute": 1e4, "error": 0.4}]
    assert main(["fit", "--csv", str(_csv(tmp_path, rows)), "--bootstrap", "0"]) == 1
    assert "kd: refused: need at least 3 points" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("method,compute\nx,1\n", "error: missing column(s)"),
        ("method,compute,error\nx,1e3,abc\n", "error: row 2 holds 'abc', not a number"),
        ("method,compute,error\n", "no rows"),
        ("method,compute,error\nx,1e3,0.5\n,1e4,0.4\n", "method: row 3 has no method name"),
        ("", "cannot read as CSV"),
    ],
)
def test_bad_csv_exits_2_naming_the_problem(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(["fit", "--csv", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--target", "1.5"], "--target: target errors are fractions in (0, 1)"),
     (["--bootstrap", "-1"], "--bootstrap: must be >= 0"),
     (["--holdout", "-2"], "--holdout: must be >= 0")],
)
def test_bad_fit_options_exit_2(tmp_path, capsys, args, message):
    assert main(["fit", "--csv", str(_csv(tmp_path, _two_laws())), *args]) == 2
    assert message in capsys.readouterr().err


def test_fit_of_a_directory_that_is_not_a_results_directory_exits_2(tmp_path, capsys):
    assert main(["fit", str(tmp_path)]) == 2
    assert "not a results directory" in capsys.readouterr().err


def test_unreachable_target_is_null_in_json():
    rows = pd.DataFrame(_two_laws())
    doc, fits = analyse(read_points_like(rows), FitOptions(n_boot=0, targets=(1e-9,)))
    (row,) = doc["savings"]
    assert row["extrapolated"] is True and row["ratio"] == pytest.approx(fits[1].compute_at(1e-9) / fits[0].compute_at(1e-9))
    sat = pd.DataFrame([{"method": "clip", "compute": c, "error": 2.0 * c**-0.2} for c in np.geomspace(1e3, 1e6, 5)]
                       + [{"method": "x", "compute": c, "error": 2.0 * c**-0.3 + 0.1} for c in np.geomspace(1e3, 1e6, 5)])
    doc, _ = analyse(read_points_like(sat), FitOptions(n_boot=0, form="saturating", targets=(0.05,)))
    assert doc["savings"][0]["ratio"] is None and doc["savings"][0]["compute"] is None
    json.dumps(doc, allow_nan=False)


def read_points_like(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(config=rows["method"] + "@" + rows["compute"].astype(str))


def test_read_points_csv_groups_seeds_by_method_and_compute(tmp_path):
    pts = read_points_csv(_csv(tmp_path, _two_laws(seeds=2)))
    assert pts["config"].nunique() == 10 and len(pts) == 20


def test_data_savings_compare_methods_on_the_same_model():
    rows = []
    for model, scale in (("s", 3.0), ("m", 2.0)):
        for n in (1e3, 1e4, 1e5):
            for method, k in (("clip", 1.0), ("drrho", 0.8)):
                rows.append({"method": method, "model": model, "samples_seen": n, "status": "done",
                             "is_reference": False, "average": 1 - k * scale * n**-0.2})
    doc = data_savings(pd.DataFrame(rows), FitOptions(n_boot=0, holdout=0))
    assert {r["model"] for r in doc["savings"]} == {"s", "m"}
    for row in doc["savings"]:
        assert row["ratio"] == pytest.approx(0.8 ** (1 / 0.2))  # same exponent: a constant data saving


def test_savings_against_each_configuration_of_a_swept_baseline():
    rows = []
    for n in (1e3, 1e4, 1e5):
        for method, params, k in (("clip", '{"lr": 0.001}', 1.0), ("clip", '{"lr": 0.01}', 0.9),
                                  ("drrho", "{}", 0.8)):
            rows.append({"method": method, "method_params": params, "model": "s", "samples_seen": n,
                         "status": "done", "is_reference": False, "average": 1 - k * 2.0 * n**-0.2})
    doc = data_savings(pd.DataFrame(rows), FitOptions(n_boot=0, holdout=0))
    assert [f["method"] for f in doc["fits"]] == ["clip (lr=0.001)", "clip (lr=0.01)", "drrho"]
    ratios = {r["baseline"]: r["ratio"] for r in doc["savings"] if r["method"] == "drrho"}
    assert {r["method"] for r in doc["savings"]} == {"drrho"} and len(doc["savings"]) == 6  # 3 targets x 2 baselines
    assert ratios == {"clip (lr=0.001)": pytest.approx(0.8 ** 5), "clip (lr=0.01)": pytest.approx((0.8 / 0.9) ** 5)}
    points = pd.DataFrame([{"method": label, "compute": c, "error": k * c**-0.2}
                           for c in np.geomspace(1e3, 1e6, 4)
                           for label, k in (("clip (lr=0.001)", 2.0), ("clip (lr=0.01)", 1.8), ("drrho", 1.6))])
    analysis, _ = analyse(read_points_like(points), FitOptions(n_boot=0, targets=(0.2,)))
    text = format_text(analysis)
    assert "drrho (against clip (lr=0.001)) at E=0.2000: 0.328x" in text  # (1.6 / 2) ** 5
    assert "drrho (against clip (lr=0.01)) at E=0.2000: 0.555x" in text  # (1.6 / 1.8) ** 5
