"""Tests for harness.report.plots on small hand-built results tables and training logs."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.report.plots import (
    data_efficiency_figure,
    method_colours,
    read_metrics,
    save_figure,
    task_delta_heatmap,
    training_curves_figure,
)

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


def test_method_colours_are_stable_and_switch_palette_past_ten():
    assert method_colours(["b", "a"]) == method_colours(["a", "b", "a"])
    assert list(method_colours(["b", "a"])) == ["a", "b"]
    many = method_colours([f"m{i:02d}" for i in range(12)])
    assert len(set(many.values())) == 12


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


def test_training_curves_plot_temperature_and_skip_missing(results, tmp_path):
    _write_log(tmp_path, "clip-a0", [{"step": i, "samples_seen": 100 * i, "loss": 3.0 - i, "logit_scale": 10.0 * i}
                                     for i in (1, 2)])
    _write_log(tmp_path, "drrho-b0", [{"step": 1, "samples_seen": 100, "loss": 2.5}], tail='{"loss": ')
    _write_log(tmp_path, "drrho-x", [{"step": 1, "samples_seen": 100, "noisy_fraction": 0.5}])  # failed run: ignored
    fig = training_curves_figure(results, tmp_path, "Demo")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "temperature"]
    loss, temperature = fig.axes
    assert sum(len(c.get_segments()) for c in loss.collections) == 2  # one line per run with a loss
    (collection,) = temperature.collections
    (segment,) = collection.get_segments()
    np.testing.assert_allclose(segment, [[100, 0.1], [200, 0.05]])
    assert tuple(collection.get_color()[0][:3]) == tuple(method_colours(["clip", "drrho", "filter"])["clip"])[:3]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["clip", "drrho"]
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
    from harness.report.fit import fit_methods
    from harness.report.plots import PAPER_FITS, scaling_figure

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
    assert len(ax.collections) >= 1  # the bootstrap bands


def test_gain_figure_places_each_run_at_its_variance_and_gain():
    from harness.report.plots import gain_figure

    ax = gain_figure(_imagenet_table(gain=True), "w2s").axes[0]
    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    assert sorted(map(tuple, np.round(offsets, 9))) == [(0.1, 1.0), (0.2, 2.0), (0.3, 3.0)]  # var, gain in points
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
    from harness.report.fit import fit_methods
    from harness.report.plots import scaling_figure

    table = _swept_table()
    labels = ["clip", "drrho (tau=0.03)", "drrho (tau=0.1)"]
    fits, skipped = fit_methods(table, n_boot=0)
    assert skipped == {} and [f.method for f in fits] == labels
    legend = scaling_figure(table, fits, "tau").axes[0].get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert [t.split(":")[0] for t in texts[:3]] == labels and all("$E = " in t for t in texts[:3])
    colours = [tuple(line.get_color()) for line in legend.get_lines()[:3]]
    assert len(set(colours)) == 3 and colours == [tuple(c) for c in method_colours(labels).values()]

    (ax,) = data_efficiency_figure(table, "tau").axes
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    assert set(lines) == set(labels) == {t.get_text() for t in ax.get_legend().get_texts()}
    np.testing.assert_allclose(lines["drrho (tau=0.1)"].get_ydata(),
                               [1.1 * (0.5 * n) ** -0.1 - 0.005 for n in (1000, 2000, 4000)])  # its two seeds' mean
    heat = task_delta_heatmap(table, "tau").axes[0]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["drrho (tau=0.03) (n=6)", "drrho (tau=0.1) (n=6)"]
