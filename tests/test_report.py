"""Tests for harness.report.leaderboard.write_report on a small hand-built results table."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.io import read_json
from harness.report.fit import fit_methods
from harness.report.leaderboard import savings_frame, seed_means, write_report
from tests.test_html import Page

TASKS = ["task:fashion_mnist", "task:digits", "task:shapes_retrieval"]
FAILURE = "RuntimeError: CUDA out of memory | tried to allocate 2 GiB"


def _row(run_id, stage, method, model, samples, average, *, status="done", is_reference=False, reference="ref-0", error=None):
    gflops = {"tiny": 0.5, "small": 1.5}[model]
    done = status == "done"
    scores = {t: (average + d if done else np.nan) for t, d in zip(TASKS, (-0.05, 0.05, 0.0))}
    return {
        "run_id": run_id, "stage": stage, "method": method, "model": model, "samples_seen": samples, "seed": 0,
        "status": status, "error": error, "is_reference": is_reference, "reference": reference,
        "gflops_per_pair": gflops, "c_paper": gflops * samples, "c_total": 3 * gflops * samples, **scores,
        "average": average if done else np.nan, "wall_time_s": samples / 1000.0,
    }


@pytest.fixture
def results() -> pd.DataFrame:
    rows = [_row("ref-0", "reference", "clip", "small", 40_000, 0.62, is_reference=True, reference=None)]
    for i, samples in enumerate([10_000, 20_000, 40_000]):
        rows.append(_row(f"clip-{i}", "sweep", "clip", "tiny", samples, 1 - 0.9 * (0.5 * samples) ** -0.1, reference=None))
        rows.append(_row(f"drrho-{i}", "sweep", "drrho", "tiny", samples, 1 - 1.2 * (0.5 * samples) ** -0.13))
    rows.append(_row("drrho-3", "sweep", "drrho", "small", 20_000, np.nan, status="failed", error=FAILURE))
    return pd.DataFrame(rows)


def test_write_report_writes_every_file(results, tmp_path):
    paths = write_report(results, tmp_path / "report", "Demo sweep")
    figures = {"scaling_law", "scaling_law_c_total", "data_efficiency", "task_gain_over_clip"}
    assert set(paths) == {"leaderboard_csv", "leaderboard_md", "leaderboard_html", "scaling_json"} | {
        f"{name}_{fmt}" for name in figures for fmt in ("png", "svg")}
    assert paths["scaling_law_png"] == tmp_path / "report" / "plots" / "scaling_law.png"
    assert paths["scaling_law_c_total_svg"] == tmp_path / "report" / "plots" / "scaling_law_c_total.svg"
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    assert not list((tmp_path / "report").rglob("*.tmp"))


def test_leaderboard_csv_round_trips(results, tmp_path):
    paths = write_report(results, tmp_path, "Demo sweep")
    board = pd.read_csv(paths["leaderboard_csv"])
    assert len(board) == len(results)
    assert sorted(board["run_id"]) == sorted(results["run_id"])
    assert list(board.columns[:8]) == ["stage", "method", "model", "samples_seen", "seed", "gflops_per_pair", "c_paper",
                                       "c_total"]
    assert list(board.columns[8:17]) == TASKS + ["average", "wall_time_s", "status", "error", "reference", "run_id"]
    assert board["run_id"].iloc[0] == "ref-0"
    merged = board.merge(results, on="run_id", suffixes=("", "_in"))
    np.testing.assert_allclose(merged["average"], merged["average_in"], equal_nan=True)


def test_leaderboard_markdown(results, tmp_path):
    text = write_report(results, tmp_path, "Demo sweep")["leaderboard_md"].read_text()
    assert text.startswith("# Demo sweep\n")
    assert "FlopCounterMode" in text and "C_paper" in text
    ref_at, runs_at = text.index("## Reference models"), text.index("## Runs")
    assert ref_at < runs_at
    reference_table = text[ref_at:runs_at]
    assert "6.00e+04" in reference_table and "62.0" in reference_table  # C_paper = 1.5 * 40k; average 62%
    assert "1.80e+05" in reference_table  # C_total = 3 * C_paper in this table
    assert "clip-" not in reference_table and reference_table.count("\n| clip") == 1
    assert "failed: RuntimeError: CUDA out of memory \\| tried to allocate 2 GiB" in text
    section = text[runs_at:text.index("## Comparisons with clip")]
    runs = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert len(runs) == 7
    assert "failed:" in runs[0] and "| small " in runs[0]  # by model name: small before tiny
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in runs[1:]]
    assert [(c[0], c[2]) for c in cells] == [
        ("clip", "10,000"), ("drrho", "10,000"), ("clip", "20,000"), ("drrho", "20,000"), ("drrho", "40,000"), ("clip", "40,000"),
    ]  # by samples seen, then average descending
    assert cells[0][5] == "5.00e+03" and cells[0][6] == "1.50e+04" and cells[0][10] == "61.6"


def test_scaling_json_matches_fit_methods_and_the_closed_form_savings(results, tmp_path):
    doc = read_json(write_report(results, tmp_path, "Demo sweep")["scaling_json"])
    assert doc["unit"] == "GFLOPs"
    for column in ("c_paper", "c_total"):
        assert (doc[column]["form"], doc[column]["points"], doc[column]["compute"]) == ("power", "frontier", column)
        fits, skipped = fit_methods(results, compute_col=column)
        assert [f["method"] for f in doc[column]["fits"]] == [f.method for f in fits] == ["clip", "drrho"]
        for got, want in zip(doc[column]["fits"], fits):
            assert got["a"] == pytest.approx(want.a, rel=1e-12) and got["b"] == pytest.approx(want.b, rel=1e-12)
            assert {"n_points", "r2", "compute_min", "compute_max", "ci", "holdout"} <= set(got)
            assert got["n_points"] == 3
        assert doc[column]["skipped"] == skipped == {}
    clip_paper, clip_total = doc["c_paper"]["fits"][0], doc["c_total"]["fits"][0]
    assert clip_paper["a"] == pytest.approx(0.9) and clip_paper["b"] == pytest.approx(-0.1)
    # C_total = 3 C_paper here, so E = 0.9 (C_total / 3)^-0.1: same exponent, a scaled by 3^0.1
    assert clip_total["b"] == pytest.approx(-0.1) and clip_total["a"] == pytest.approx(0.9 * 3 ** 0.1)
    savings = doc["c_paper"]["savings"]
    assert len(savings) == 3 and {s["method"] for s in savings} == {"drrho"}
    for row in savings:
        t = row["target_error"]
        assert row["ratio"] == pytest.approx((t / 1.2) ** (1 / -0.13) / (t / 0.9) ** (1 / -0.1), rel=1e-9)
        assert row["extrapolated"] is False


def test_html_report_is_well_formed_and_escapes_names(results, tmp_path):
    hostile = results.assign(method=results["method"].replace({"drrho": "<b>drrho</b>"}))
    page = write_report(hostile, tmp_path, "Demo <sweep>")["leaderboard_html"].read_text()
    parsed = Page(page)  # raises on an unclosed or misnested element
    assert parsed.count("script") == 1 and len(parsed.tables) >= 4
    assert "<b>drrho</b>" not in page and "&lt;b&gt;drrho&lt;/b&gt;" in page
    assert "Demo &lt;sweep&gt;" in page and page.count("data:image/png;base64,") == 4
    for run_id in results["run_id"]:
        assert f">{run_id}<" in page


def test_scaling_plot_is_a_png(results, tmp_path):
    path = write_report(results, tmp_path, "Demo sweep")["scaling_law_png"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert 900 <= width <= 1200 and 600 <= height <= 900  # ~7 x 5 in at ~150 dpi


def test_report_with_only_failed_and_reference_runs(results, tmp_path):
    subset = results[results["is_reference"] | results["status"].eq("failed")]
    paths = write_report(subset, tmp_path, "Nothing finished")
    doc = read_json(paths["scaling_json"])
    for column in ("c_paper", "c_total"):
        assert doc[column]["fits"] == doc[column]["savings"] == [] and doc[column]["skipped"] == {}
    assert "failed: RuntimeError" in paths["leaderboard_md"].read_text()
    assert paths["scaling_law_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_means_group_runs_over_seeds(results, tmp_path):
    extra = results[results["run_id"].isin(["clip-0", "drrho-0"])].assign(seed=1)
    extra = extra.assign(run_id=extra["run_id"] + "-s1", average=extra["average"] + 0.02)
    table = pd.concat([results, extra], ignore_index=True)
    means = seed_means(table)
    assert len(means) == 6  # (tiny, 3 budgets) x (clip, drrho); the failed run and the reference are left out
    first = means[(means.method == "clip") & (means.samples_seen == 10_000)].iloc[0]
    one = results.set_index("run_id").loc["clip-0", "average"]
    assert first.seeds == 2 and first.average == pytest.approx(one + 0.01)
    assert first.average_std == pytest.approx(0.02 / 2 ** 0.5)  # sample std of two values 0.02 apart
    text = write_report(table, tmp_path, "Seeds")["leaderboard_md"].read_text()
    section = text[text.index("## Mean over seeds"):text.index("## Runs")]
    assert f"{100 * (one + 0.01):.1f} ± 1.4" in section and "3.00" in section  # C_total / C_paper = 3
    assert "## Mean over seeds" not in write_report(results, tmp_path / "one", "One seed")["leaderboard_md"].read_text()


def test_report_files_are_readable_by_others_like_plain_open(results, tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        paths = write_report(results, tmp_path, "Modes")
    finally:
        os.umask(mask)
    for path in paths.values():
        assert path.stat().st_mode & 0o777 == 0o644


def test_report_compares_each_method_with_clip_seed_by_seed(results, tmp_path):
    # drrho-0 and clip-0 get seeds 1 and 2: drrho gains 2 and 1 points over its seed-0 difference there, so the
    # paired differences (points) are d, d + 2, d + 1: mean d + 1, standard deviation 1, t on 2 degrees of freedom
    extra = []
    for seed, shift in ((1, 0.02), (2, 0.01)):
        for run_id, plus in (("clip-0", 0.0), ("drrho-0", shift)):
            row = results.set_index("run_id").loc[run_id]
            extra.append({**row.to_dict(), "run_id": f"{run_id}-s{seed}", "seed": seed,
                          **{c: row[c] + plus for c in [*TASKS, "average"]}})
    table = pd.concat([results, pd.DataFrame(extra)], ignore_index=True)
    paths = write_report(table, tmp_path, "Seeds")
    base = results.set_index("run_id")
    d = 100 * (base.loc["drrho-0", "average"] - base.loc["clip-0", "average"])
    t = abs(d + 1) / (1 / 3 ** 0.5)
    p = 1 - t / (t**2 + 2) ** 0.5  # two-sided p of Student t with 2 degrees of freedom, in closed form
    half = 0.95 / (2 * 0.975 * 0.025) ** 0.5 / 3 ** 0.5  # its 0.975 quantile over sqrt(3)

    doc = read_json(paths["scaling_json"])["comparisons"]
    assert doc["baseline"] == "clip" and doc["family_size"] == 4  # average and 3 tasks at 10,000 samples
    rows = {(r["samples_seen"], r["metric"]): r for r in doc["rows"]}
    first = rows[(10_000, "average")]
    assert first["seeds"] == 3 and first["mean_difference"] == pytest.approx(d + 1, rel=1e-9)
    assert first["p_value"] == pytest.approx(p, rel=1e-9)
    assert first["ci"] == pytest.approx([d + 1 - half, d + 1 + half], rel=1e-9)
    assert rows[(20_000, "average")]["verdict"] == "1 seed: no verdict possible"
    assert rows[(20_000, "average")]["mean_difference"] is None

    text = paths["leaderboard_md"].read_text()
    section = text[text.index("## Comparisons with clip"):text.index("## Scaling fits")]
    assert "Holm's step-down correction across the 4 comparisons" in section
    assert f"{d + 1:+.2f}" in section and f"[{d + 1 - half:+.2f}, {d + 1 + half:+.2f}]" in section
    assert section.count("1 seed: no verdict possible") == 8  # two budgets x (average + 3 tasks)

    page = Page(paths["leaderboard_html"].read_text())
    (compared,) = [t for t in page.tables if any(h["text"] == "Holm p" for h in t["headers"])]
    headers = [h["text"] for h in compared["headers"]]
    cells = [dict(zip(headers, (c["text"] for c in row))) for row in compared["rows"]]
    assert len(cells) == 12 and {c["verdict"] for c in cells if c["seeds"] == "1"} == {"1 seed: no verdict possible"}
    assert all(c["difference (pts)"] == "\u2013" for c in cells if c["seeds"] == "1")


SWEPT = [("clip", "{}", 0.9, -0.1), ("drrho", '{"gamma": 1, "tau": 0.03}', 1.2, -0.13),
         ("drrho", '{"gamma": 1, "tau": 0.1}', 1.0, -0.12)]  # method, params, error = a (0.5 samples)^b


def _swept(features=("online",)) -> pd.DataFrame:
    """A grid sweeping drrho's tau (and, when given several, how its reference features are read): three seeds
    per configuration at three budgets on one model, seeds 1 point apart around the configuration's law."""
    rows = [{**_row("ref-0", "reference", "clip", "small", 40_000, 0.62, is_reference=True, reference=None),
             "method_params": "{}", "reference_features": None}]
    configs = [(name, params, a, b, None if name == "clip" else mode)
               for name, params, a, b in SWEPT for mode in (features if name == "drrho" else (None,))]
    for name, params, a, b, mode in configs:
        a = a * (1.1 if mode == "cached" else 1.0)
        for samples in (10_000, 20_000, 40_000):
            for seed in range(3):
                average = 1 - a * (0.5 * samples) ** b + 0.01 * (seed - 1)
                row = _row(f"{name}-{params}-{mode}-{samples}-{seed}", "sweep", name, "tiny", samples, average,
                           reference=None if mode is None else "ref-0")
                rows.append({**row, "seed": seed, "method_params": params, "reference_features": mode})
    return pd.DataFrame(rows)


def _law(a, b, samples):
    return 1 - a * (0.5 * samples) ** b


def _cells(section: str) -> list[dict[str, str]]:
    """The rows of the pipe table in a markdown section, keyed by its header."""
    header, _, *rows = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines()
                        if line.startswith("|")]
    return [dict(zip(header, row)) for row in rows]


def test_a_swept_parameter_keeps_its_configurations_apart_in_means_fits_and_comparisons(tmp_path):
    table = _swept()
    labels = ["clip", "drrho (tau=0.03)", "drrho (tau=0.1)"]
    means = seed_means(table)
    assert len(means) == 9 and means["seeds"].eq(3).all() and sorted(means["method"].unique()) == labels
    for label, (_, _, a, b) in zip(labels, SWEPT):
        mine = means[means["method"].eq(label)]
        np.testing.assert_allclose(mine["average"], [_law(a, b, s) for s in mine["samples_seen"]], rtol=1e-12)
        np.testing.assert_allclose(mine["average_std"], 0.01, rtol=1e-9)
    # best first within each budget: tau 0.1 leads everywhere, clip beats tau 0.03 only at the smallest budget
    assert [list(means.loc[means["samples_seen"].eq(s), "method"]) for s in (10_000, 40_000)] == [
        ["drrho (tau=0.1)", "clip", "drrho (tau=0.03)"], ["drrho (tau=0.1)", "drrho (tau=0.03)", "clip"]]

    paths = write_report(table, tmp_path, "Swept tau")
    text = paths["leaderboard_md"].read_text()
    mean_rows = _cells(text[text.index("## Mean over seeds"):text.index("## Runs")])
    assert [r["method"] for r in mean_rows[:3]] == ["drrho (tau=0.1)", "clip", "drrho (tau=0.03)"]
    assert len(mean_rows) == 9 and {r["seeds"] for r in mean_rows} == {"3"}  # never 6 seeds of two taus
    runs = [r["method"] for r in _cells(text[text.index("## Runs"):text.index("## Comparisons with clip")])]
    assert sorted(set(runs)) == labels and runs.count("drrho (tau=0.1)") == runs.count("drrho (tau=0.03)") == 9

    doc = read_json(paths["scaling_json"])
    for column in ("c_paper", "c_total"):
        fits = doc[column]["fits"]
        assert [f["method"] for f in fits] == labels and all(f["n_points"] == 3 for f in fits)
    for fit, (_, _, a, b) in zip(doc["c_paper"]["fits"], SWEPT):  # seed means lie on each configuration's law
        assert fit["a"] == pytest.approx(a, rel=1e-9) and fit["b"] == pytest.approx(b, rel=1e-9)  # C_paper = 0.5 n
    savings = doc["c_paper"]["savings"]
    assert [s["method"] for s in savings] == ["drrho (tau=0.03)"] * 3 + ["drrho (tau=0.1)"] * 3
    for row, (_, _, a, b) in zip(savings, [SWEPT[1]] * 3 + [SWEPT[2]] * 3):
        t = row["target_error"]
        assert row["ratio"] == pytest.approx((t / a) ** (1 / b) / (t / 0.9) ** (1 / -0.1), rel=1e-9)
    assert [(f["method"], f["model"]) for f in doc["data_efficiency"]["fits"]] == [(m, "tiny") for m in labels]
    assert {r["label"] for r in doc["comparisons"]["rows"]} == set(labels[1:])


def test_online_and_cached_reference_features_stay_apart(tmp_path):
    table = _swept(features=("online", "cached"))
    means = seed_means(table)
    assert len(means) == 15 and means["seeds"].eq(3).all()
    names = {f"drrho (tau={tau}, features={mode})" for tau in (0.03, 0.1) for mode in ("online", "cached")}
    assert set(means["method"]) == names | {"clip"}
    cached = means[means["method"].eq("drrho (tau=0.1, features=cached)")]
    np.testing.assert_allclose(cached["average"], [_law(1.1, -0.12, s) for s in cached["samples_seen"]], rtol=1e-12)
    doc = read_json(write_report(table, tmp_path, "Features")["scaling_json"])
    assert [f["method"] for f in doc["c_paper"]["fits"]] == ["clip", *sorted(names)]


def test_leaderboard_rows_by_average_within_model_and_budget_and_csv_keeps_every_column(tmp_path):
    table = _swept().assign(note="kept")
    board = pd.read_csv(write_report(table, tmp_path, "Order")["leaderboard_csv"], keep_default_na=False)
    assert board["run_id"].iloc[0] == "ref-0" and len(board) == len(table)
    runs = board.iloc[1:]
    assert list(runs["samples_seen"]) == sorted(runs["samples_seen"])
    for _, group in runs.groupby("samples_seen"):
        assert list(group["average"]) == sorted(group["average"], reverse=True)
    assert set(table.columns) <= set(board.columns) and set(board["note"]) == {"kept"}
    assert set(board["method"]) == {"clip", "drrho"}  # the name as the grid gave it; the parameters beside it
    assert set(board["method_params"]) == {"{}", '{"gamma": 1, "tau": 0.03}', '{"gamma": 1, "tau": 0.1}'}


def test_savings_frame_names_the_baseline_configuration_when_there_are_several():
    row = {"method": "drrho", "target_error": 0.3, "ratio": 0.5, "ci": None, "extrapolated": False, "verdict": "-"}
    one = savings_frame({"savings": [{**row, "baseline": "clip"}]})
    assert list(one.columns[:3]) == ["method", "target error", "ratio to clip"]
    two = savings_frame({"savings": [{**row, "baseline": "clip (lr=0.1)"}, {**row, "baseline": "clip (lr=0.01)"}]})
    assert list(two.columns[:4]) == ["method", "baseline", "target error", "ratio"]
    assert list(two["baseline"]) == ["clip (lr=0.1)", "clip (lr=0.01)"] and list(two["ratio"]) == [0.5, 0.5]


def test_a_grid_with_two_sizes_at_two_budgets_gets_the_joint_law_in_scaling_json_and_its_plots(tmp_path):
    law = lambda f, d: 0.1 + 0.3 * f**-0.3 + 40.0 * d**-0.4  # noqa: E731  (E(F, D) with F in GFLOPs per pair)
    rows = [_row(f"{m}-{model}-{n}", "sweep", "clip", model, n, 1 - law({"tiny": 0.5, "small": 1.5}[model], n),
                 reference=None)
            for m, model in enumerate(["tiny", "small"]) for n in (10_000, 20_000, 40_000)]
    paths = write_report(pd.DataFrame(rows), tmp_path, "joint")
    (fit,) = json.loads(paths["scaling_json"].read_text())["joint"]["fits"]
    assert fit["alpha"] == pytest.approx(0.3, rel=0.05) and fit["beta"] == pytest.approx(0.4, rel=0.05)
    assert sorted(p.name for p in (tmp_path / "plots").glob("joint_*.png")) == [
        "joint_allocation.png", "joint_isoflop.png", "joint_parity.png"]


def test_runs_table_shows_the_misfit_as_disagreement_averaged_over_tasks(results, tmp_path):
    steered = results["method"].eq("drrho") & results["status"].eq("done")
    table = results.assign(gain=np.where(steered, 0.01, np.nan), reducible_var=np.where(steered, 2.0, np.nan),
                           **{"disagree:a": np.where(steered, 0.2, np.nan), "disagree:b": np.where(steered, 0.4, np.nan)})
    text = write_report(table, tmp_path, "misfit")["leaderboard_md"].read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "disagreement (%)" in line)
    column = [c.strip() for c in lines[start].split("|")].index("disagreement (%)")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    table = [[c.strip() for c in line.split("|")] for line in lines[start + 2:end]]
    done = [r for r in table if r[1] == "drrho" and not any(c.startswith("failed") for c in r)]
    assert len(done) == 3 and {r[column] for r in done} == {"30.0"}
    assert {r[column] for r in table if r not in done} == {"-"}


def test_the_report_opens_with_the_verdict_at_equal_c_paper_and_c_total(results, tmp_path):
    paths = write_report(results, tmp_path, "verdict")
    text = paths["leaderboard_md"].read_text()
    assert text.split("\n\n")[1] == "## Verdict"
    savings = json.loads(paths["scaling_json"].read_text())["c_paper"]["savings"]
    middle = savings[len(savings) // 2]
    line = next(line for line in text.splitlines() if "at equal C_paper" in line)
    assert line.startswith(f"- **drrho vs clip at equal C_paper: {middle['verdict']}.**")
    assert f"needs {middle['ratio']:.2f}x clip's compute" in line and "at equal C_total" in text
