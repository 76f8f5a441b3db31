"""Tests for harness.report.plots on small hand-built results tables and training logs."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.text import Text
from PIL import Image
from scipy import stats

from harness.report.fit import fit_methods
from harness.report.plots import (
    PAPER_FITS,
    SAFE_COLOURS,
    data_efficiency_figure,
    gain_figure,
    method_colours,
    read_metrics,
    reference_labels,
    save_figure,
    scaling_figure,
    score_figure,
    task_delta_heatmap,
    training_curves_figure,
)
from harness.report.w2s import misfit_figure

TASKS = ["task:digits", "task:shapes"]


def _row(run_id, method, model, samples, seed, scores, *, status="done", is_reference=False):
    gflops = {"tiny-s": 0.5, "tiny-m": 1.5, "huge": 9.0}[model]
    done = status == "done"
    tasks = {t: (s if done else np.nan) for t, s in zip(TASKS, scores)}
    return {
        "run_id": run_id, "stage": "sweep", "method": method, "model": model, "samples_seen": samples, "seed": seed,
        "is_reference": is_reference, "reference": None if method == "clip" else "ref", "status": status, "error": None,
        "gflops_per_pair": gflops, "c_paper": gflops * samples, "c_total": 2 * gflops * samples, **tasks,
        "average": float(np.mean(scores)) if done else np.nan, "wall_time_s": 1.0,
    }


@pytest.fixture
def results() -> pd.DataFrame:
    rows = [
        _row("ref", "clip", "huge", 40_000, 0, (0.9, 0.9), is_reference=True),
        _row("clip-a0", "clip", "tiny-m", 1000, 0, (0.50, 0.30)),
        _row("clip-a1", "clip", "tiny-m", 1000, 1, (0.40, 0.20)),
        _row("clip-b0", "clip", "tiny-s", 2000, 0, (0.60, 0.40)),
        _row("drrho-a0", "drrho", "tiny-m", 1000, 0, (0.55, 0.40)),
        _row("drrho-a1", "drrho", "tiny-m", 1000, 1, (0.50, 0.20)),
        _row("drrho-b0", "drrho", "tiny-s", 2000, 0, (0.70, 0.30)),
        _row("drrho-c0", "drrho", "tiny-s", 4000, 0, (0.80, 0.50)),  # no clip run to match
        _row("drrho-x", "drrho", "tiny-s", 2000, 1, (0.0, 0.0), status="failed"),
        _row("filter-a0", "filter", "tiny-m", 1000, 0, (0.45, 0.35)),
    ]
    return pd.DataFrame(rows)


def _write_log(results_dir, run_id, records, tail=""):
    path = results_dir / "runs" / run_id / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_method_colours_are_stable_colour_blind_safe_and_far_apart():
    assert method_colours(["b", "a"]) == method_colours(["a", "b", "a"])
    assert list(method_colours(["b", "a"])) == ["a", "b"]
    twelve = np.array(list(method_colours([f"m{i:02d}" for i in range(12)]).values()))
    np.testing.assert_allclose(twelve, [to_rgb(c) for c in SAFE_COLOURS])
    gaps = np.linalg.norm(twelve[:, None] - twelve[None], axis=-1)[np.triu_indices(12, 1)]
    assert gaps.min() > 0.15  # no two alike (filter, jest and jest_topk were three near-identical teals)
    zoo = ["clip", "drrho", "drrho_kd", "fastclip", "fastclip_kd", "filter", "jest", "jest_topk", "kd", "random",
           "rho_topk"]
    colours = method_colours(zoo)
    for a, b in (("filter", "jest"), ("jest", "jest_topk")):
        assert np.linalg.norm(np.subtract(colours[a], colours[b])) > 0.3
    assert len(set(method_colours([f"m{i:02d}" for i in range(13)]).values())) == 13  # past twelve: still distinct


def test_data_efficiency_panels_by_model_size_and_seed_means(results):
    fig = data_efficiency_figure(results, "Demo")
    axes = fig.axes
    assert [ax.get_title().split()[0] for ax in axes] == ["tiny-s", "tiny-m"]  # by GFLOPs/pair, not by name
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in axes)
    lines = {c.get_label(): c.lines[0] for c in axes[1].containers}
    assert set(lines) == {"clip", "drrho", "filter"}
    clip_errors = [1 - np.mean((0.50, 0.30)), 1 - np.mean((0.40, 0.20))]
    np.testing.assert_allclose(lines["clip"].get_ydata(), [np.mean(clip_errors)])
    drrho_small = {c.get_label(): c.lines[0] for c in axes[0].containers}["drrho"]
    np.testing.assert_allclose(drrho_small.get_xdata(), [2000, 4000])  # the failed run is left out
    np.testing.assert_allclose(drrho_small.get_ydata(), [0.5, 0.35])
    colours = method_colours(["clip", "drrho", "filter"])
    assert tuple(lines["drrho"].get_color()) == tuple(colours["drrho"])


def test_task_delta_heatmap_values_are_matched_differences(results):
    fig = task_delta_heatmap(results, "Demo")
    ax = fig.axes[0]
    values = np.ma.filled(ax.collections[0].get_array(), np.nan).reshape(2, 3)
    # drrho matches clip-a0, clip-a1 and clip-b0 (drrho-c0 has no partner); filter matches clip-a0 only
    drrho = np.mean([[5, 10, 7.5], [10, 0, 5], [10, -10, 0]], axis=0)
    filter_ = [-5, 5, 0]
    np.testing.assert_allclose(values, [drrho, filter_], atol=1e-9)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["digits", "shapes", "average"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["drrho (n=3)", "filter (n=1)"]
    assert [t.get_text() for t in ax.texts] == [f"{v:.1f}" for v in np.ravel([drrho, filter_])]
    low, high = ax.collections[0].get_clim()
    assert low == -high and high == pytest.approx(25 / 3)  # symmetric about 0, from the largest |delta|


def test_task_delta_heatmap_refuses_a_missing_or_unmatched_baseline(results):
    with pytest.raises(ValueError, match="baseline method 'siglip' has no done runs"):
        task_delta_heatmap(results, "Demo", baseline="siglip")
    unmatched = results[~results["run_id"].isin(["clip-b0"]) & ~results["model"].eq("tiny-m")]
    unmatched = pd.concat([unmatched, pd.DataFrame([_row("clip-z", "clip", "tiny-s", 8000, 0, (0.1, 0.1))])])
    with pytest.raises(ValueError, match="no done run of another method matches"):
        task_delta_heatmap(unmatched, "Demo")


def test_read_metrics_skips_a_truncated_last_line(tmp_path):
    records = [{"step": 1, "samples_seen": 64, "loss": 2.0}, {"step": 2, "samples_seen": 128, "loss": 1.5, "lr": 0.1}]
    path = _write_log(tmp_path, "r", records, tail='{"step": 3, "samples_seen": 19')
    log = read_metrics(path)
    assert list(log["step"]) == [1, 2]
    assert np.isnan(log["lr"].iloc[0]) and log["lr"].iloc[1] == 0.1
    assert read_metrics(tmp_path / "missing.jsonl").empty


def test_training_curves_plot_the_temperature_each_loss_used_and_skip_missing(results, tmp_path):
    _write_log(tmp_path, "clip-a0", [{"step": i, "samples_seen": 100 * i, "loss": 3.0 - i, "logit_scale": 10.0 * i}
                                     for i in (1, 2)])
    # drrho's loss logs its fixed tau; open_clip's logit scale (1/0.07 here) is not what that loss divides by
    _write_log(tmp_path, "drrho-a0", [{"step": i, "samples_seen": 100 * i, "loss": 1.0, "logit_scale": 1 / 0.07,
                                       "tau": 0.01} for i in (1, 2)])
    _write_log(tmp_path, "drrho-b0", [{"step": 1, "samples_seen": 100, "loss": 2.5}], tail='{"loss": ')
    _write_log(tmp_path, "drrho-x", [{"step": 1, "samples_seen": 100, "noisy_fraction": 0.5}])  # failed run: ignored
    fig = training_curves_figure(results, tmp_path, "Demo")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "temperature"]
    loss, temperature = fig.axes
    assert sum(len(c.get_segments()) for c in loss.collections) == 3  # one line per run with a loss
    colours = method_colours(["clip", "drrho", "filter"])
    lines = {tuple(c.get_color()[0][:3]): c.get_segments() for c in temperature.collections}
    np.testing.assert_allclose(lines[tuple(colours["clip"])], [[[100, 0.1], [200, 0.05]]])  # 1 / logit_scale
    np.testing.assert_allclose(lines[tuple(colours["drrho"])], [[[100, 0.01], [200, 0.01]]])  # its logged tau
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["clip", "drrho"]
    assert "tiny-s solid" in fig.get_suptitle() and "tiny-m dashed" in fig.get_suptitle()


def test_training_curves_without_logs_say_so(results, tmp_path):
    fig = training_curves_figure(results, tmp_path, "Demo")
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == ["no training logs"]


def test_save_figure_writes_valid_png_and_svg(results, tmp_path):
    paths = save_figure(task_delta_heatmap(results, "Demo"), tmp_path / "plots" / "task.deltas")
    assert paths == [tmp_path / "plots" / "task.deltas.png", tmp_path / "plots" / "task.deltas.svg"]
    with Image.open(paths[0]) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0
    assert ET.parse(paths[1]).getroot().tag.endswith("svg")
    assert not list(tmp_path.rglob("*.tmp"))


def _imagenet_table(gain: bool = False) -> pd.DataFrame:
    rows = []
    for i, c in enumerate((1e9, 1e10, 1e11)):
        for method, a, b in (("clip", 5.77, -0.116), ("drrho", 7.15, -0.127)):
            rows.append({"run_id": f"{method}-{i}", "stage": "sweep", "method": method, "model": "B-32",
                         "samples_seen": int(c), "seed": 0, "is_reference": False, "reference": "ref-a" if i else "ref-b",
                         "status": "done", "gflops_per_pair": 1.0, "c_paper": c, "c_total": 2 * c,
                         "task:imagenet1k": 1 - a * c**b, "average": 1 - a * c**b, "wall_time_s": 1.0,
                         **({"gain": 0.01 * (i + 1), "reducible_var": 0.1 * (i + 1)} if gain and method == "drrho" else {})})
    return pd.DataFrame(rows)


def test_scaling_figure_draws_the_papers_laws_dashed_for_imagenet_error():
    table = _imagenet_table()
    fits, _ = fit_methods(table, points="all", n_boot=100)
    ax = scaling_figure(table, fits, "IN-1k").axes[0]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 2
    for line, (a, b) in zip(dashed, PAPER_FITS.values()):
        x, y = line.get_data()
        np.testing.assert_allclose(y, a * np.asarray(x) ** b, rtol=1e-12)
    no_paper = scaling_figure(table.rename(columns={"task:imagenet1k": "task:other"}), fits, "other").axes[0]
    assert not [line for line in no_paper.get_lines() if line.get_linestyle() == "--"]


def test_gain_figure_places_each_run_at_its_variance_and_gain():
    fig = gain_figure(_imagenet_table(gain=True), "w2s")
    offsets = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    assert sorted(map(tuple, np.round(offsets, 9))) == [(0.1, 1.0), (0.2, 2.0), (0.3, 3.0)]  # var, gain in points
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["drrho", "reference ref-a", "reference ref-b"]
    empty = gain_figure(_imagenet_table(), "w2s").axes[0]
    assert "no run with a reference" in empty.texts[0].get_text()


def _swept_table() -> pd.DataFrame:
    """clip and drrho at tau 0.03 and 0.1, two seeds each at three budgets on one model."""
    rows = []
    for method, params, a in (("clip", "{}", 0.9), ("drrho", '{"tau": 0.03}', 1.0), ("drrho", '{"tau": 0.1}', 1.1)):
        for samples in (1000, 2000, 4000):
            for seed in (0, 1):
                score = 1 - a * (0.5 * samples) ** -0.1 + 0.01 * seed
                rows.append({**_row(f"{method}-{params}-{samples}-{seed}", method, "tiny-s", samples, seed,
                                    (score, score)), "method_params": params})
    return pd.DataFrame(rows)


def test_plot_legends_name_each_configuration_of_a_swept_parameter():
    table = _swept_table()
    labels = ["clip", "drrho (tau=0.03)", "drrho (tau=0.1)"]
    fits, skipped = fit_methods(table, n_boot=0)
    assert skipped == {} and [f.method for f in fits] == labels
    legend = scaling_figure(table, fits, "tau").legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    assert [t.split(":")[0] for t in texts[:3]] == labels and all("$E = " in t for t in texts[:3])
    colours = [tuple(line.get_color()) for line in legend.get_lines()[:3]]
    assert len(set(colours)) == 3 and colours == [tuple(c) for c in method_colours(labels).values()]

    efficiency = data_efficiency_figure(table, "tau")
    lines = {c.get_label(): c.lines[0] for c in efficiency.axes[0].containers}
    assert set(lines) == set(labels) == {t.get_text() for t in efficiency.legends[0].get_texts()}
    np.testing.assert_allclose(lines["drrho (tau=0.1)"].get_ydata(),
                               [1.1 * (0.5 * n) ** -0.1 - 0.005 for n in (1000, 2000, 4000)])  # its two seeds' mean
    heat = task_delta_heatmap(table, "tau").axes[0]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["drrho (tau=0.03) (n=6)", "drrho (tau=0.1) (n=6)"]


def _band_tops(ax) -> list[float]:
    """The highest error of each bootstrap band (fill_between polygons) of an axes."""
    return [float(c.get_paths()[0].vertices[:, 1].max()) for c in ax.collections if isinstance(c, PolyCollection)]


def test_scaling_figure_fills_the_fitted_frontier_points_and_hollows_the_rest():
    rows = [_row(f"clip-{n}", "clip", "tiny-s", n, 0, (s, s)) for n, s in ((1000, 0.2), (2000, 0.3), (4000, 0.4))]
    rows.append(_row("clip-big", "clip", "tiny-m", 2000, 0, (0.25, 0.25)))  # C_paper 3000, worse than 2000's run
    table = pd.DataFrame(rows)
    fits, _ = fit_methods(table, n_boot=0)
    ax = scaling_figure(table, fits, "frontier").axes[0]
    colour = method_colours(["clip"])["clip"]
    faces = {tuple(point): tuple(face[:3]) for c in ax.collections for point, face in
             zip(c.get_offsets().tolist(), np.broadcast_to(c.get_facecolors(), (len(c.get_offsets()), 4)))}
    assert faces == {(500.0, 0.8): colour, (1000.0, 0.7): colour, (2000.0, 0.6): colour, (3000.0, 0.75): (1, 1, 1)}


def test_scaling_bands_are_drawn_capped_at_error_one_and_the_y_range_holds_data_and_bands():
    errors = [(0.98, 0.90), (0.97, 0.80), (0.85, 0.84), (0.80, 0.70)]  # noisy seeds: the band's top passes 1
    table = pd.DataFrame([_row(f"clip-{i}-{seed}", "clip", "tiny-s", 1000 * 2**i, seed, (1 - e, 1 - e))
                          for i, pair in enumerate(errors) for seed, e in enumerate(pair)])
    (fit,), _ = fit_methods(table, n_boot=200)
    c = np.geomspace(fit.compute_min, fit.compute_max, 50)
    assert np.percentile(fit.boot[:, 0:1] * c ** fit.boot[:, 1:2], 97.5, axis=0).max() > 1.0
    ax = scaling_figure(table, [fit], "noisy").axes[0]
    (top,) = _band_tops(ax)
    low, high = ax.get_ylim()
    assert top == pytest.approx(1.0) and high <= 1.0
    assert low <= 0.70 and low > 0.5  # the smallest error, padded a little, not the axis' default reach
    assert "no band" not in ax.get_title()


def test_scaling_subtitle_says_why_a_band_is_missing():
    table = _swept_table()
    fits, _ = fit_methods(table, n_boot=0)
    ax = scaling_figure(table, fits, "no bootstrap").axes[0]
    assert _band_tops(ax) == []
    assert "no band for clip, drrho (tau=0.03), drrho (tau=0.1): no bootstrap run" in ax.get_title().replace("\n", " ")
    single = table[table["seed"].eq(0) & table["method"].eq("clip")]  # three points: most resamples have too few
    fits, _ = fit_methods(single, n_boot=200)
    title = scaling_figure(single, fits, "three points").axes[0].get_title().replace("\n", " ")
    assert f"no band for clip ({fits[0].n_boot} of 200): too few bootstrap refits succeeded (a band needs 50%)" in title
    bands = fit_methods(table, n_boot=200)[0]
    assert len(_band_tops(scaling_figure(table, bands, "seeds").axes[0])) == 3  # seeds resampled: every fit has one


def test_one_compute_level_gets_each_configurations_score_with_its_interval():
    table = _swept_table()
    table = table[table["samples_seen"].eq(1000)].assign(seed=lambda t: t["seed"].astype(int))
    table = pd.concat([table, table[table["seed"].eq(1)].assign(seed=2, average=lambda t: t["average"] + 0.03,
                                                                  run_id=lambda t: t["run_id"] + "-2")])
    fig = scaling_figure(table, [], "one budget")
    (ax,) = fig.axes
    assert "one compute level (C_paper = 500 GFLOPs)" in fig.get_suptitle().replace("\n", " ")
    means = 100 * table.groupby(with_labels(table))["average"].mean().sort_values(ascending=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(means.index)
    for y, (label, mean) in enumerate(means.items()):
        scores = 100 * table.loc[with_labels(table).eq(label), "average"].to_numpy()
        half = stats.t.ppf(0.975, 2) * scores.std(ddof=1) / np.sqrt(3)
        (segment,) = [s for c in ax.collections if isinstance(c, LineCollection) for s in c.get_segments()
                      if s[0][1] == y]
        np.testing.assert_allclose(segment, [[mean - half, y], [mean + half, y]])
    total = scaling_figure(table, [], "one budget", "c_total").axes[0]
    assert [t.get_text() for t in total.get_yticklabels()][0] == f"{means.index[0]} (C_total 1,000 GFLOPs)"


def with_labels(table: pd.DataFrame) -> pd.Series:
    from harness.report.configs import with_configs

    return with_configs(table)["label"]


def test_data_efficiency_at_one_samples_level_says_so():
    table = _swept_table()
    fig = data_efficiency_figure(table[table["samples_seen"].eq(1000)], "one level")
    assert "one samples-seen level" in fig.axes[0].texts[0].get_text().replace("\n", " ")


def test_reference_labels_name_stage_model_and_drop_hashes():
    rows = [{"run_id": f"reference-clip-{m}-n{n}-s0-0123456789", "stage": "reference", "method": "clip", "model": m,
             "samples_seen": n, "reference": None} for m, n in (("tiny-m", 30_720), ("tiny-s", 5120))]
    rows.append({"run_id": "ref-noisy-clip-tiny-m-n30720-s0-abcdefabcd", "stage": "ref-noisy", "method": "clip",
                 "model": "tiny-m", "samples_seen": 30_720, "reference": None})
    rows += [{"run_id": f"run-{r['run_id']}", "stage": "sweep", "method": "drrho", "model": "tiny-s", "samples_seen": 1,
              "reference": r["run_id"]} for r in list(rows)]
    rows.append({**rows[-1], "run_id": "gone", "reference": "old-clip-tiny-s-n5120-s1-fedcba9876"})
    assert reference_labels(pd.DataFrame(rows)) == {
        "reference-clip-tiny-m-n30720-s0-0123456789": "reference (clip tiny-m, 30,720 samples)",
        "reference-clip-tiny-s-n5120-s0-0123456789": "reference (clip tiny-s, 5,120 samples)",
        "ref-noisy-clip-tiny-m-n30720-s0-abcdefabcd": "ref-noisy (tiny-m)",
        "old-clip-tiny-s-n5120-s1-fedcba9876": "old-clip-tiny-s-n5120-s1",  # not in the table: the id, no hash
    }


def _long_names() -> pd.DataFrame:
    """The swept table with longer configuration labels, references with long stage names, gains and variances."""
    table = _swept_table()
    table["method_params"] = table["method_params"].replace({'{"tau": 0.03}': '{"gamma_min": 0.2, "tau": 0.03}',
                                                             '{"tau": 0.1}': '{"gamma_min": 0.5, "tau": 0.1}'})
    refs = pd.DataFrame([{**_row(f"ref-{name}-clip-huge-n40000-s0-0123456789", "clip", "huge", 40_000, 0, (0.9, 0.9),
                                 is_reference=True), "stage": f"reference-{name}"}
                         for name in ("noisy-captions", "clean")])
    runs = table["method"].eq("drrho")
    table.loc[runs, "reference"] = np.where(table.loc[runs, "seed"].eq(0), refs["run_id"][0], refs["run_id"][1])
    table.loc[runs, "gain"] = np.linspace(-0.2, 0.1, runs.sum())
    table.loc[runs, "reducible_var"] = np.linspace(0.1, 6.0, runs.sum())
    table.loc[runs, "gain:digits"] = np.linspace(-0.1, 0.2, runs.sum())
    table.loc[runs, "disagree:digits"] = np.linspace(0.05, 0.4, runs.sum())
    table.loc[runs, "misfit_ce:digits"] = np.linspace(0.5, 2.0, runs.sum())
    return pd.concat([refs, table], ignore_index=True)


def _figures(tmp_path) -> dict[str, object]:
    """Every kind of figure the report makes, on long names."""
    table = _long_names()
    fits, _ = fit_methods(table, n_boot=50)
    for row in table.itertuples():
        _write_log(tmp_path, row.run_id, [{"samples_seen": 100 * i, "loss": 1.0 / i, "logit_scale": 14.0,
                                           "noisy_fraction": 0.3} for i in (1, 2)])
    one = table[table["samples_seen"].isin([40_000, 1000])]
    return {"scaling": scaling_figure(table, fits, "A sweep with a rather long title", "c_total"),
            "scores": score_figure(one, "A sweep with a rather long title", "c_total"),
            "efficiency": data_efficiency_figure(table, "A sweep with a rather long title"),
            "heatmap": task_delta_heatmap(table, "A sweep with a rather long title"),
            "gain": gain_figure(table, "A sweep with a rather long title"),
            "misfit": misfit_figure(table, "A sweep with a rather long title"),
            "curves": training_curves_figure(table, tmp_path, "A sweep with a rather long title"),
            "message": data_efficiency_figure(one[one["samples_seen"].eq(1000)], "Nothing to draw at all")}


def test_no_title_label_or_legend_is_cut_off(tmp_path, monkeypatch):
    drawn: list[tuple[str, object]] = []
    draw = Text.draw

    def recording(self, renderer):
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self.get_text(), self.get_window_extent(renderer)))

    monkeypatch.setattr(Text, "draw", recording)
    for name, fig in _figures(tmp_path).items():
        drawn.clear()
        fig.canvas.draw()
        width, height = fig.canvas.get_width_height()
        assert len(drawn) >= 2, name  # a title and at least one more
        outside = [text for text, box in drawn
                   if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1]
        assert outside == [], f"{name}: cut off: {outside}"
