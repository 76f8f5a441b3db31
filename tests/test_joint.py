"""Tests for harness.report.joint and joint_plots: recovery of a known joint law E(F, D), the closed-form optimum
against a brute-force search, refusals, the published OpenCLIP fit (golden and reproducible), the results-table
reader, the figures, and `clipsteer fit --form joint` end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from harness.cli import main
from harness.errors import ConfigError
from harness.report.fit import FitError
from harness.report.joint import (
    JointLaw,
    JointOptions,
    allocation_exponents,
    configurations,
    eligible,
    fit_joint,
    fit_joint_law,
    fit_joint_table,
    joint_points,
    optimal_allocation,
    shift_verdict,
)
from harness.report.joint_plots import ISO_LEVELS, joint_figures, joint_report
from harness.report.plots import save_figure

OPENCLIP_DIR = Path(__file__).resolve().parent / "data" / "scaling-laws-openclip"
TRUE = np.array([0.2, 2.0, 0.35, 30.0, 0.3])  # e0, a, alpha, b, beta


def _law(params: np.ndarray, flops: np.ndarray, samples: np.ndarray) -> np.ndarray:
    e0, a, alpha, b, beta = params
    return e0 + a / flops**alpha + b / samples**beta


def _grid(sizes: int, budgets: int) -> tuple[np.ndarray, np.ndarray]:
    flops, samples = np.meshgrid(np.geomspace(1, 1000, sizes), np.geomspace(1e6, 1e9, budgets))
    return flops.ravel(), samples.ravel()


def test_closed_form_optimum_matches_brute_force_search():
    params = np.array([0.1, 3.0, 0.3, 200.0, 0.45])
    flops = np.geomspace(1e-6, 1e12, 2_000_001)  # neighbours 2.1e-5 apart in relative terms
    for compute in (1e6, 1e9, 1e13):
        brute = _law(params, flops, compute / flops)
        best = int(np.argmin(brute))
        f_opt, d_opt, e_opt = (x.item() for x in optimal_allocation(params, compute))
        assert f_opt == pytest.approx(flops[best], rel=3e-5)
        assert d_opt == pytest.approx(compute / flops[best], rel=3e-5)
        assert e_opt <= brute.min() and e_opt == pytest.approx(brute.min(), rel=1e-9)
    exps = allocation_exponents(0.3, 0.45)
    f_1, d_1, e_1 = optimal_allocation(params, [1e9, 1e10])
    assert f_1[0, 1] / f_1[0, 0] == pytest.approx(10 ** exps["F"])
    assert d_1[0, 1] / d_1[0, 0] == pytest.approx(10 ** exps["D"])
    assert (e_1[0, 1] - 0.1) / (e_1[0, 0] - 0.1) == pytest.approx(10 ** -exps["E"])
    assert exps["F"] + exps["D"] == pytest.approx(1.0)


def test_recovers_exact_parameters():
    flops, samples = _grid(3, 3)
    params, objective = fit_joint_law(flops, samples, _law(TRUE, flops, samples))
    np.testing.assert_allclose(params, TRUE, rtol=1e-6)
    assert objective < 1e-15


def test_recovers_known_parameters_from_noisy_points():
    """6 sizes x 6 budgets (3 decades each), 1% log-normal noise. Tolerances: the largest deviations over 40 noise
    seeds, rounded up (e0 0.027, a 1.3%, alpha 0.011, beta 0.039, b 68%, the D term at the centre 15%); b alone is
    poorly identified (it trades off with beta), the D term where the data are is not."""
    flops, samples = _grid(6, 6)
    error = _law(TRUE, flops, samples) * np.exp(np.random.default_rng(0).normal(0.0, 0.01, flops.size))
    (e0, a, alpha, b, beta), _ = fit_joint_law(flops, samples, error)
    assert e0 == pytest.approx(TRUE[0], abs=0.03)
    assert a == pytest.approx(TRUE[1], rel=0.02)
    assert alpha == pytest.approx(TRUE[2], abs=0.012)
    assert beta == pytest.approx(TRUE[4], abs=0.04)
    assert b == pytest.approx(TRUE[3], rel=0.7)
    centre = np.exp(np.log(samples).mean())
    assert b / centre**beta == pytest.approx(TRUE[3] / centre ** TRUE[4], rel=0.15)
    assert allocation_exponents(alpha, beta)["F"] == pytest.approx(allocation_exponents(TRUE[2], TRUE[4])["F"], abs=0.035)


@pytest.mark.parametrize(("flops", "samples", "message"), [
    ([10.0] * 6, np.geomspace(1e6, 1e9, 6), "fewer than 2 model sizes"),
    ([1.0, 2.0, 3.0, 4.0, 4.0, 4.0], [1e6, 1e6, 1e6, 1e6, 1e7, 1e8], "with 2 or more budgets"),
    ([1.0, 1.0, 9.0, 9.0, 3.0], [1e6, 1e8, 1e6, 1e8, 1e7], "at least 6 distinct"),
    ([1.0, 1.0, 9.0, 9.0, 9.0, 9.0], [1e6, 1e8, 1e6, 1e8, 1e8, 1e8], "at least 6 distinct"),
    ([1.0, 1.0, 9.0, 9.0, -3.0, 9.0], [1e6, 1e8, 1e6, 1e8, 1e7, 1e7], "non-positive F"),
])
def test_refuses_points_that_cannot_identify_the_law(flops, samples, message):
    flops, samples = np.asarray(flops), np.asarray(samples)
    with pytest.raises(FitError, match=message):
        fit_joint_law(flops, samples, _law(TRUE, np.abs(flops), samples))


def test_refuses_a_fit_on_a_bound():
    """Error that does not fall with data: the D term vanishes, beta lands on 0, and the law is refused."""
    flops, samples = _grid(3, 3)
    with pytest.raises(FitError, match="beta = .* is on its bound"):
        fit_joint_law(flops, samples, 0.2 + 2.0 / flops**0.35)


@pytest.mark.parametrize(("ci", "verdict"), [
    ([1.2, 3.0], "smaller models and more data"), ([0.2, 0.9], "larger models and less data"),
    ([0.8, 1.5], "no significant difference"), (None, "no verdict"),
])
def test_shift_verdict_reads_the_interval(ci, verdict):
    assert verdict in shift_verdict(ci)


def _published() -> pd.DataFrame:
    """ImageNet zero-shot error of the LAION-2B and LAION-400M models: F = 2 x arch_info's GMACs per pair (GFLOPs),
    D = samples seen."""
    results = pd.read_csv(OPENCLIP_DIR / "zeroshot_results.csv")
    trained = pd.read_csv(OPENCLIP_DIR / "trained_models_info.csv")
    arch = pd.read_csv(OPENCLIP_DIR / "arch_info.csv")[["model", "gmacs"]].rename(columns={"model": "arch"})
    runs = results[results["downstream_dataset"] == "imagenet1k"].drop(columns="gmacs")
    runs = runs.merge(trained[["name", "data"]], on="name").merge(arch, on="arch")
    runs = runs[runs["data"].isin(["2B", "400M"])]
    return pd.DataFrame({"method": "LAION-" + runs["data"], "flops": 2 * runs["gmacs"], "samples": runs["samples_seen"],
                         "error": 1 - runs["acc1"]})


# docs/joint-laws.md: e0, a, alpha, b, beta, Huber objective, held-out relative error, F* exponent
PUBLISHED = {"LAION-2B": (0.0, 0.4582, 0.1757, 193.6, 0.3335, 1.191e-4, 0.0065, 0.655),
             "LAION-400M": (0.0, 0.5041, 0.1337, 2.722e6, 0.8109, 9.735e-5, -0.0308, 0.858)}


def test_published_joint_fit_matches_the_documented_numbers():
    points = _published()
    assert points.groupby("method").size().to_dict() == {"LAION-2B": 11, "LAION-400M": 9}
    laws, skipped = fit_joint_table(points, JointOptions(n_boot=0, holdout=1))
    assert skipped == {}
    for law in laws:
        e0, a, alpha, b, beta, objective, held_out, f_exp = PUBLISHED[law.method]
        assert law.e0 == pytest.approx(e0, abs=1e-6)
        assert (law.a, law.b) == (pytest.approx(a, rel=5e-4), pytest.approx(b, rel=2e-3))
        assert (law.alpha, law.beta) == (pytest.approx(alpha, abs=2e-4), pytest.approx(beta, abs=2e-4))
        assert law.objective == pytest.approx(objective, rel=1e-3)
        assert law.holdout["relative_error"][0] == pytest.approx(held_out, abs=5e-4)
        assert law.to_dict()["exponents"]["F"] == pytest.approx(f_exp, abs=5e-4)


def test_published_joint_fit_is_reproducible_from_its_seed():
    points = _published()
    points = points[points["method"] == "LAION-2B"]
    first, again = (fit_joint(points, "LAION-2B", n_boot=12, seed=5) for _ in range(2))
    assert first.ci and first.to_dict() == again.to_dict()
    np.testing.assert_array_equal(first.boot, again.boot)
    other = fit_joint(points, "LAION-2B", n_boot=12, seed=6)
    assert other.params.tolist() == first.params.tolist()
    assert not np.array_equal(other.boot[: min(len(other.boot), len(first.boot))],
                              first.boot[: min(len(other.boot), len(first.boot))])


def _run(method, model, gflops, samples, seed, scores, **extra):
    return {"run_id": f"{method}-{model}-{samples}-{seed}", "method": method, "model": model, "samples_seen": samples,
            "seed": seed, "is_reference": False, "reference": "ref" if method == "drrho" else None, "status": "done",
            "gflops_per_pair": gflops, "c_paper": gflops * samples, "task:digits": scores[0], "task:shapes": scores[1],
            "average": float(np.mean(scores)), **extra}


def test_joint_points_read_a_results_table():
    rows = [_run("clip", "tiny-s", 0.5, 1000, 0, (0.5, 0.3)), _run("clip", "tiny-s", 0.5, 1000, 1, (0.7, 0.5)),
            _run("clip", "tiny-m", 1.5, 2000, 0, (0.8, 0.6)), _run("drrho", "tiny-s", 0.5, 1000, 0, (0.6, 0.4)),
            _run("clip", "huge", 9.0, 4000, 0, (0.9, 0.9), is_reference=True),
            _run("clip", "tiny-m", 1.5, 4000, 0, (np.nan, np.nan), status="failed")]
    table = pd.DataFrame(rows, index=[7, 3, 5, 1, 0, 2])  # the reader does not depend on the table's index
    points = joint_points(table)
    assert sorted(points["method"]) == ["clip", "clip", "clip", "drrho"]
    clip = configurations(points[points["method"] == "clip"])
    order = np.argsort(clip.flops)
    assert clip.flops[order].tolist() == [0.5, 1.5] and clip.samples[order].tolist() == [1000, 2000]
    np.testing.assert_allclose(clip.means[order], [1 - 0.5, 1 - 0.7])  # two seeds of tiny-s averaged
    by_task = joint_points(table, task="shapes")
    np.testing.assert_allclose(sorted(by_task["error"]), [0.4, 0.5, 0.6, 0.7])
    with pytest.raises(ConfigError, match="tasks: digits, shapes"):
        joint_points(table, task="imagenet1k")
    assert not eligible(points)
    grid = [_run("clip", m, g, s, 0, (0.5, 0.5)) for m, g in (("s", 0.5), ("m", 1.5)) for s in (1000, 2000)]
    assert eligible(joint_points(pd.DataFrame(grid)))
    assert joint_report(table, "t") == (None, {})


def test_figures_are_drawn_and_saved(tmp_path):
    flops, samples = _grid(3, 3)
    points = pd.DataFrame({"method": "clip", "flops": flops, "samples": samples, "error": _law(TRUE, flops, samples)})
    boot = TRUE * np.exp(np.random.default_rng(0).normal(0.0, 0.02, (40, 5)))
    law = JointLaw("clip", *TRUE, n_points=9, n_sizes=3, objective=0.0, flops_range=(1.0, 1000.0),
                   samples_range=(1e6, 1e9), compute_range=(1e6, 1e12), ci={"e0": [0.1, 0.3]}, boot=boot)
    figures = joint_figures([law], points, "demo")
    assert sorted(figures) == ["joint_allocation", "joint_isoflop", "joint_parity"]
    assert len(figures["joint_isoflop"].axes[0].get_lines()) == ISO_LEVELS
    allocation_axes = figures["joint_allocation"].axes
    assert all(any(isinstance(c, PolyCollection) for c in ax.collections) for ax in allocation_axes)  # bands
    png, svg = save_figure(figures["joint_isoflop"], tmp_path / "joint_isoflop")  # drawing is slow: one figure
    assert png.stat().st_size > 0 and svg.read_text().lstrip().startswith("<?xml")
    assert joint_figures([], points, "demo") == {}


def _write_csv(path: Path, laws: dict[str, np.ndarray]) -> Path:
    flops, samples = _grid(3, 3)
    rows = []
    for method, params in laws.items():
        error = _law(params, flops, samples)
        for seed, wobble in enumerate((0.997, 1.003)):  # two seeds per configuration
            rows += [{"method": method, "gflops_per_pair": f, "samples": d, "error": e * wobble}
                     for f, d, e in zip(flops, samples, error)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_cli_fit_joint_from_csv_prints_json(tmp_path, capsys):
    truth = {"clip": TRUE, "drrho": np.array([0.15, 2.0, 0.45, 30.0, 0.3])}
    path = _write_csv(tmp_path / "points.csv", truth)
    code = main(["fit", "--form", "joint", "--csv", str(path), "--json", "--bootstrap", "6", "--seed", "1"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["form"], doc["baseline"], doc["skipped"], doc["n_boot"]) == ("joint", "clip", {}, 6)
    fits = {fit["method"]: fit for fit in doc["fits"]}
    assert sorted(fits) == ["clip", "drrho"]
    for method, fit in fits.items():
        assert fit["form"] == "joint" and fit["n_points"] == 9 and fit["n_sizes"] == 3
        # seeds average to the exact law, so the fit recovers it
        np.testing.assert_allclose([fit[k] for k in ("e0", "a", "alpha", "b", "beta")], truth[method], rtol=1e-4)
        assert set(fit["ci"]) == {"e0", "a", "alpha", "b", "beta"} and fit["n_boot"] + fit["n_boot_failed"] == 6
        assert fit["objective"] >= 0 and len(fit["holdout"]["relative_error"]) == 1
        assert abs(fit["holdout"]["relative_error"][0]) < 1e-4
        assert fit["exponents"]["F"] + fit["exponents"]["D"] == pytest.approx(1.0)
    assert [row["method"] for row in doc["shifts"]] == ["drrho"] * 3
    for row, compute in zip(doc["shifts"], doc["computes"]):
        f_drrho, f_clip = (optimal_allocation([fits[m][k] for k in ("e0", "a", "alpha", "b", "beta")], compute)[0]
                           for m in ("drrho", "clip"))
        assert row["ratio"] == pytest.approx((f_clip / f_drrho).item() ** 2)  # (C/F_drrho^2) / (C/F_clip^2)


def test_cli_fit_joint_refusal_and_bad_csv(tmp_path, capsys):
    one_size = tmp_path / "one.csv"
    pd.DataFrame({"method": "clip", "gflops_per_pair": 1.0, "samples": [1e6, 1e7, 1e8], "error": [0.5, 0.4, 0.3]}
                 ).to_csv(one_size, index=False)
    assert main(["fit", "--form", "joint", "--csv", str(one_size)]) == 1
    assert "clip: refused: fewer than 2 model sizes" in capsys.readouterr().out
    missing = tmp_path / "missing.csv"
    pd.DataFrame({"method": ["clip"], "gflops_per_pair": [1.0], "error": [0.5]}).to_csv(missing, index=False)
    assert main(["fit", "--form", "joint", "--csv", str(missing), "--json"]) == 2
    err = capsys.readouterr().err
    assert "samples: missing column(s)" in err and "method, gflops_per_pair, samples, error" in err
    assert main(["fit", "--csv", str(missing), "--task", "digits"]) == 2
    assert "only the joint form fits one task" in capsys.readouterr().err
