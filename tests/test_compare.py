"""Tests for harness.report.compare and `clipsteer compare`: paired t-tests against scipy and hand-computed
values, Holm's correction, pairing by seed and configuration, and the command line on a results directory."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness import io, sweep
from harness.cli import main
from harness.grid.config import load_grid
from harness.grid.spec import expand
from harness.report import compare, configs
from harness.run.compute import PARTS
from harness.store import records

TASKS = ("digits", "shapes")


def test_paired_test_matches_the_closed_form_of_two_degrees_of_freedom():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 sqrt(3) on 2 df, where sf(t) = (1 - t / sqrt(t^2 + 2)) / 2
    # and the 0.975 quantile is 0.95 / sqrt(2 * 0.975 * 0.025)
    got = compare.paired_test([1.0, 2.0, 3.0])
    t = 2 * math.sqrt(3)
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)
    assert got["seeds"] == 3 and got["mean_difference"] == pytest.approx(2.0) and got["test"] == "t"
    assert got["p_value"] == pytest.approx(1 - t / math.sqrt(t**2 + 2), rel=1e-12)
    assert got["ci"] == pytest.approx([2 - half, 2 + half], rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_test_agrees_with_scipy_ttest_rel(seed):
    rng = np.random.default_rng(seed)
    method, base = rng.uniform(0.3, 0.7, 5), rng.uniform(0.3, 0.7, 5)
    got = compare.paired_test(100 * (method - base))
    want = stats.ttest_rel(100 * method, 100 * base)
    assert got["p_value"] == pytest.approx(want.pvalue, rel=1e-10)
    ci = want.confidence_interval(0.95)
    assert got["ci"] == pytest.approx([ci.low, ci.high], rel=1e-10)


def test_one_pair_gives_no_difference_and_no_verdict():
    got = compare.paired_test([4.0])
    assert got == {"seeds": 1, "mean_difference": None, "ci": None, "p_value": None, "test": None}
    assert compare.verdict(None, None) == compare.ONE_SEED == "1 seed: no verdict possible"


def test_zero_variance_uses_the_exact_sign_flip_test():
    same = 100 * (np.array([0.61, 0.52, 0.73]) - np.array([0.51, 0.42, 0.63]))  # 10 points each, up to float noise
    got = compare.paired_test(same)
    assert got["test"] == "sign-flip" and got["ci"] is None
    assert got["mean_difference"] == pytest.approx(10.0) and got["p_value"] == 2 / 2**3
    assert compare.paired_test([0.0, 0.0])["p_value"] == 1.0
    assert compare.paired_test([-1.5] * 6)["p_value"] == 2 / 2**6


def test_paired_test_refuses_no_or_non_finite_differences():
    for bad in ([], [1.0, np.nan]):
        with pytest.raises(ValueError, match="finite differences"):
            compare.paired_test(bad)


def test_holm_adjusts_a_hand_worked_family():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept at 0.06 (monotone)
    np.testing.assert_allclose(compare.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(compare.holm([0.6, 0.5]), [1.0, 1.0])  # 0.5 x 2 = 1; capped, then monotone
    np.testing.assert_allclose(compare.holm([0.02]), [0.02])


def test_verdict_reads_the_sign_and_the_adjusted_p():
    assert compare.verdict(1.2, 0.01) == "better" and compare.verdict(-0.3, 0.05) == "worse"
    assert compare.verdict(5.0, 0.051) == "no significant difference"


def _row(method, seed, scores, *, params="{}", reference=None, model="tiny", samples=1000, stage="sweep",
         status="done", is_reference=False):
    return {"run_id": f"{stage}-{method}-{params}-{model}-{samples}-{seed}", "stage": stage, "method": method,
            "model": model, "samples_seen": samples, "seed": seed, "status": status, "is_reference": is_reference,
            "reference": reference, "method_params": params, "average": float(np.mean(scores)),
            **{f"task:{t}": s for t, s in zip(TASKS, scores)}}


CLIP = {0: (0.50, 0.40), 1: (0.55, 0.41), 2: (0.52, 0.45)}
FAST = {0: (0.58, 0.44), 1: (0.60, 0.47), 2: (0.61, 0.50)}  # tau 0.03
SLOW = {0: (0.49, 0.42), 1: (0.57, 0.40), 2: (0.50, 0.46)}  # tau 0.1


def _table() -> pd.DataFrame:
    rows = [_row("clip", s, v) for s, v in CLIP.items()]
    rows += [_row("drrho", s, v, params='{"gamma": 1, "tau": 0.03}', reference="ref") for s, v in FAST.items()]
    rows += [_row("drrho", s, v, params='{"gamma": 1, "tau": 0.1}', reference="ref") for s, v in SLOW.items()]
    rows.append(_row("drrho", 3, (0.9, 0.9), params='{"gamma": 1, "tau": 0.1}', reference="ref"))  # no clip seed 3
    rows.append(_row("kd", 1, (0.70, 0.30), reference="ref"))
    rows.append(_row("kd", 0, (0.70, 0.30), reference="ref", model="small"))  # no clip run on that model
    rows.append(_row("clip", 0, (0.9, 0.9), stage="reference", model="small", is_reference=True))
    rows.append(_row("clip", 1, (np.nan, np.nan), model="small", status="failed"))
    return pd.DataFrame(rows)


def _expected(method: dict, metric) -> tuple[float, float]:
    """Mean paired difference (points) and ttest_rel p-value over the seeds both tables hold."""
    seeds = sorted(set(method) & set(CLIP))
    a = np.array([100 * metric(method[s]) for s in seeds])
    b = np.array([100 * metric(CLIP[s]) for s in seeds])
    return float(np.mean(a - b)), float(stats.ttest_rel(a, b).pvalue)


def test_compare_pairs_seeds_per_configuration_and_holm_adjusts_the_family():
    doc = compare.compare(_table())
    rows = {(r["label"], r["metric"]): r for r in doc["rows"]}
    assert set(rows) == {(label, metric) for label in ("drrho (tau=0.03)", "drrho (tau=0.1)", "kd")
                         for metric in ("average", *TASKS)}
    metrics = {"average": np.mean, "digits": lambda v: v[0], "shapes": lambda v: v[1]}
    for label, scores in (("drrho (tau=0.03)", FAST), ("drrho (tau=0.1)", SLOW)):
        for metric, pick in metrics.items():
            row = rows[(label, metric)]
            mean, p = _expected(scores, pick)
            assert row["seeds"] == 3  # the tau 0.1 run of seed 3 has no clip run to pair with
            assert row["mean_difference"] == pytest.approx(mean, rel=1e-12)
            assert row["p_value"] == pytest.approx(p, rel=1e-10)
    kd = rows[("kd", "average")]
    assert (kd["seeds"], kd["mean_difference"], kd["p_value"], kd["verdict"]) == (1, None, None, compare.ONE_SEED)
    tested = [r for r in doc["rows"] if r["p_value"] is not None]
    assert doc["family_size"] == len(tested) == 6 and doc["correction"] == "holm"
    np.testing.assert_allclose([r["p_holm"] for r in tested], compare.holm([r["p_value"] for r in tested]))
    for r in tested:
        sign = "better" if r["mean_difference"] > 0 else "worse"
        assert r["verdict"] == ("no significant difference" if r["p_holm"] > 0.05 else sign)
    assert rows[("drrho (tau=0.03)", "average")]["verdict"] == "better"
    assert rows[("drrho (tau=0.03)", "digits")]["p_value"] < 0.05 < rows[("drrho (tau=0.03)", "digits")]["p_holm"]
    assert rows[("drrho (tau=0.03)", "average")]["params"] == {"gamma": 1, "tau": 0.03}
    assert rows[("drrho (tau=0.03)", "average")]["reference"] == "ref" and kd["baseline_label"] == "clip"
    assert [(u["label"], u["model"]) for u in doc["unmatched"]] == [("kd", "small")]
    json.dumps(doc, allow_nan=False)  # strict JSON


def test_a_baseline_with_a_reference_pairs_only_with_runs_of_that_reference():
    rows = [_row("drrho", s, (0.5 + s / 10, 0.5), reference="r1") for s in range(2)]
    rows += [_row("kd", s, (0.6, 0.5 + s / 10), reference=ref) for s in range(2) for ref in ("r1", "r2")]
    doc = compare.compare(pd.DataFrame(rows), baseline="drrho")
    assert {r["reference"] for r in doc["rows"]} == {"r1"}
    assert [u["reference"] for u in doc["unmatched"]] == ["r2"]


def test_a_run_without_a_baseline_at_its_samples_pairs_at_equal_c_total_within_the_tolerance():
    def at(method, seed, samples, c_total, share=0.0, score=0.5):
        return {**_row(method, seed, (score, score), samples=samples, reference=None if method == "clip" else "ref",
                       stage="zoo" if samples == 4000 else "equal"), "c_total": c_total, "cache_share": share}

    rows = [at("clip", s, 4000, 100.0, score=0.5 + s / 100) for s in range(3)]
    rows += [at("jest", s, 700, 102.0 + 10.0, share=10.0, score=0.6 + s / 50) for s in range(3)]  # 2% off clip
    rows += [at("jest", s, 4000, 600.0, score=0.7) for s in range(3)]  # equal samples: paired on samples only
    rows += [at("rho_topk", s, 500, 80.0) for s in range(3)]  # 20% off: not paired
    doc = compare.compare(pd.DataFrame(rows))
    average = {(r["samples_seen"], r["paired_on"]): r for r in doc["rows"] if r["metric"] == "average"}
    assert set(average) == {(700, compare.C_TOTAL), (4000, compare.SAMPLES)}
    diffs = [100 * ((0.6 + s / 50) - (0.5 + s / 100)) for s in range(3)]
    assert average[(700, compare.C_TOTAL)]["mean_difference"] == pytest.approx(np.mean(diffs), rel=1e-12)
    assert [(u["method"], u["samples_seen"]) for u in doc["unmatched"]] == [("rho_topk", 500)]
    frame = compare.comparisons_frame(doc)
    assert set(frame["paired at equal"]) == {compare.C_TOTAL, compare.SAMPLES}
    assert "Rows paired at equal C_total" in compare.notes(doc)[0]


def test_check_baseline_names_the_methods_there():
    compare.check_baseline(_table(), "clip", "results/x")
    with pytest.raises(ValueError, match=r"no done run of method 'clp' in results/x; methods there: clip, drrho, "
                                         r"kd \(did you mean 'clip'\?\)"):
        compare.check_baseline(_table(), "clp", "results/x")


GRID = """
name: cmp
data: {sources: [shapes], shapes_count: 256}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32, warmup_steps: 1}
executor: {kind: debug}
stages:
  - {name: reference, methods: [clip], models: [tiny-s], samples_seen: [64]}
  - name: sweep
    reference: reference
    methods: [clip, {name: drrho, tau: 0.03}, {name: drrho, tau: 0.1}]
    models: [tiny-s]
    samples_seen: [32]
    seeds: [0, 1, 2]
  - {name: single, reference: reference, methods: [kd], models: [tiny-s], samples_seen: [32]}
"""
SCORES = {("clip", None): CLIP, ("drrho", 0.03): FAST, ("drrho", 0.1): SLOW, ("kd", None): {0: (0.7, 0.3)}}


def _results_dir(tmp_path, scores=SCORES):
    """A results directory as `clipsteer run` leaves it for the grid GRID: specs.json, and a done run per spec
    whose scores `scores` holds ((method, tau) -> seed -> per-task scores; the reference run scores 0.8)."""
    (tmp_path / "cmp.yaml").write_text(GRID)
    specs, results = expand(load_grid(tmp_path / "cmp.yaml")), tmp_path / "results"
    for spec in specs:
        by_seed = {0: (0.8, 0.8)} if spec.stage == "reference" else \
            scores.get((spec.method.name, spec.method.params.get("tau") if spec.method.name == "drrho" else None), {})
        if spec.seed in by_seed:
            values = by_seed[spec.seed]
            records.finish(records.run_dir(results, spec.run_id), {
                "compute": {part: 1.0 for part in PARTS}, "gflops_per_pair": 0.1, "train": {"pool_size": 100},
                "eval": {"average": float(np.mean(values)), "tasks": {t: {"main_metric": v} for t, v in
                                                                      zip(TASKS, values)}}, "wall_time_s": 1.0})
    io.write_json(results / sweep.SPECS, {"grid": "cmp", "source": "cmp.yaml", "specs": [s.to_json() for s in specs]})
    return results


def _cells(text: str) -> list[dict[str, str]]:
    """The rows of the one pipe table in `text`, keyed by its header."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]
    return [dict(zip(split[0], row)) for row in split[2:]]


def test_compare_command_prints_verdicts_and_json(tmp_path, capsys):
    results = _results_dir(tmp_path)
    assert main(["compare", str(results)]) == 0
    out = capsys.readouterr().out
    assert "Paired comparisons against clip" in out and "Holm's step-down correction across the 6 comparisons" in out
    table = _cells(out)
    kd = [row for row in table if row["method"] == "kd"]
    assert len(kd) == 3 and all(row["verdict"] == compare.ONE_SEED for row in kd)
    assert {row[c] for row in kd for c in ("difference (pts)", "95% CI (pts)", "p", "Holm p")} == {"-"}
    mean, p = _expected(FAST, np.mean)
    fast = next(row for row in table if row["method"] == "drrho (tau=0.03)" and row["score"] == "average")
    (ref_id,) = [s["run_id"] for s in io.read_json(results / sweep.SPECS)["specs"] if s["stage"] == "reference"]
    assert fast["difference (pts)"] == f"{mean:+.2f}" and fast["p"] == f"{p:.3g}" and fast["reference"] == ref_id
    assert fast["seeds"] == "3" and fast["samples seen"] == "32" and fast["stage"] == "sweep"
    assert {row["stage"] for row in kd} == {"single"}  # paired with the clip runs of stage sweep

    assert main(["compare", str(results), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["baseline"] == "clip" and doc["family_size"] == 6 and doc["alpha"] == 0.05 and doc["ci_level"] == 0.95
    row = next(r for r in doc["rows"] if r["label"] == "drrho (tau=0.03)" and r["metric"] == "average")
    assert row["mean_difference"] == pytest.approx(mean) and row["p_value"] == pytest.approx(p, rel=1e-10)
    assert {"seeds", "ci", "p_holm", "verdict", "params", "model", "samples_seen", "reference"} <= set(row)
    assert row["seeds"] == 3 and row["params"]["tau"] == 0.03 and row["ci"][0] < mean < row["ci"][1]
    assert row["baseline_stage"] == "sweep" and row["reference"] == ref_id


def test_compare_command_exits_1_when_nothing_pairs(tmp_path, capsys):
    results = _results_dir(tmp_path, {("clip", None): {0: (0.5, 0.5)}, ("drrho", 0.1): {1: (0.6, 0.6)}})
    assert main(["compare", str(results)]) == 1
    assert "No comparisons" in capsys.readouterr().out


def test_compare_command_exits_2_for_a_missing_directory(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"clipsteer: error: {tmp_path / 'missing'}: no such directory\n"


def test_compare_command_exits_2_for_an_unknown_baseline(tmp_path, capsys):
    results = _results_dir(tmp_path)
    assert main(["compare", str(results), "--baseline", "jest"]) == 2
    assert capsys.readouterr().err == (f"clipsteer: error: --baseline: no done run of method 'jest' in {results}; "
                                       "methods there: clip, drrho, kd\n")


def test_labels_show_what_differs_among_a_methods_configurations():
    table = pd.DataFrame([
        {"method": "clip", "method_params": "{}"},
        {"method": "drrho", "method_params": '{"gamma": 1, "tau": 0.03}', "reference_features": "online"},
        {"method": "drrho", "method_params": '{"gamma": 1, "tau": 0.1}', "reference_features": "cached"},
        {"method": "drrho", "method_params": '{"gamma": 1, "tau": 0.1}', "reference_features": "online"},
        {"method": "kd", "method_params": None, "reference_features": "online"},
        {"method": "kd", "method_params": '{"t": 2}', "reference_features": "online"},
        {"method": "jest", "method_params": "{}", "reference_features": None},
        {"method": "jest", "method_params": "{}", "reference_features": "online"},
    ])
    assert list(configs.with_configs(table)["label"]) == [
        "clip", "drrho (tau=0.03, features=online)", "drrho (tau=0.1, features=cached)",
        "drrho (tau=0.1, features=online)", "kd (t=None)", "kd (t=2)", "jest (features=none)", "jest (features=online)"]
    assert list(configs.with_configs(table.drop(columns=["method_params", "reference_features"]))["label"]) == list(
        table["method"])
    assert configs.is_configuration_of("clip (lr=0.1)", "clip") and configs.is_configuration_of("clip", "clip")
    assert not configs.is_configuration_of("clipper", "clip")


def test_online_and_cached_reference_features_are_compared_apart():
    rows = [_row("clip", s, v) for s, v in CLIP.items()]
    for features, scores in (("online", FAST), ("cached", SLOW)):
        rows += [{**_row("drrho", s, v, reference="ref"), "run_id": f"drrho-{features}-{s}",
                  "reference_features": features} for s, v in scores.items()]
    doc = compare.compare(pd.DataFrame(rows))
    averages = {r["label"]: r for r in doc["rows"] if r["metric"] == "average"}
    assert set(averages) == {"drrho (features=online)", "drrho (features=cached)"}
    for features, scores in (("online", FAST), ("cached", SLOW)):
        row = averages[f"drrho (features={features})"]
        assert row["seeds"] == 3 and row["reference_features"] == features
        assert row["mean_difference"] == pytest.approx(_expected(scores, np.mean)[0], rel=1e-12)
