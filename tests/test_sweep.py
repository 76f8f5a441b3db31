"""End to end on tiny real data: grid -> submitit jobs -> train -> clip_benchmark eval -> store -> report."""
import json
import textwrap

import pandas as pd
import pytest
import torch

from harness.store import records

GRID = """
name: e2e
data: {sources: [shapes, digits], shapes_count: 384, noise: 0.2}
eval: {tasks: [digits, shapes_retrieval]}
train: {batch_size: 32, warmup_steps: 1}
executor: {kind: local, max_parallel: 2, timeout_min: 10}
stages:
  - name: reference
    data: {subset: clean}
    methods: [clip]
    models: [tiny-s]
    samples_seen: [128]
  - name: sweep
    reference: reference
    methods: [clip, drrho]
    models: [tiny-s]
    samples_seen: [32, 64, 96]
{extra}
"""
BROKEN_REFERENCE = """
  - name: broken
    reference: {checkpoint: CKPT, model: tiny-s}
    methods: [drrho]
    models: [tiny-s]
    samples_seen: [32]
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, clipsteer):
    root = tmp_path_factory.mktemp("e2e")
    ckpt = root / "not_a_clip_model.pt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, ckpt)  # readable, so the grid is valid; not a tiny-s model
    grid = root / "e2e.yaml"
    grid.write_text(textwrap.dedent(GRID).replace("{extra}", BROKEN_REFERENCE.replace("CKPT", str(ckpt))))
    results = root / "results"
    first = clipsteer("run", grid, "--results", results)
    return grid, results, first


def test_sweep_runs_every_stage_and_writes_the_report(sweep):
    grid, results, first = sweep
    assert first.returncode == 1, first.stderr  # one run fails on purpose: its reference checkpoint is no tiny-s
    table = pd.read_csv(results / "leaderboard.csv")
    assert len(table) == 1 + 6 + 1
    done = table[table.status == "done"]
    assert len(done) == 7
    assert done.is_reference.sum() == 1 and (done[done.is_reference].stage == "reference").all()
    assert set(done.method) == {"clip", "drrho"}
    for column in ("task:digits", "task:shapes_retrieval", "average"):
        assert done[column].between(0, 1).all()
    assert done.average.round(10).tolist() == done[["task:digits", "task:shapes_retrieval"]].mean(axis=1).round(10).tolist()
    assert (done.c_paper == done.gflops_per_pair * done.samples_seen).all()
    drrho = done[done.method == "drrho"]
    ref_id = done[done.is_reference].run_id.item()
    assert (drrho.reference == ref_id).all()
    scaling = json.loads((results / "scaling.json").read_text())
    assert [f["method"] for f in scaling["c_paper"]["fits"]] == [f["method"] for f in scaling["c_total"]["fits"]]
    assert (results / "plots" / "scaling_law.png").stat().st_size > 10_000
    assert (results / "plots" / "scaling_law_c_total.png").stat().st_size > 10_000
    # clip spends only its own forward passes; drrho adds the reference's forward on every trained sample
    clip = done[(done.method == "clip") & ~done.is_reference]
    assert (clip.c_total == clip.c_paper).all()
    assert (drrho.c_total - drrho.c_paper).tolist() == pytest.approx((drrho.gflops_per_pair * drrho.samples_seen).tolist())
    md = (results / "leaderboard.md").read_text()
    assert "Reference models" in md and "failed:" in md


def test_the_device_auto_resolves_when_the_run_starts_and_is_recorded_in_result_json(sweep):
    _, results, _ = sweep
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    done = [d for d in (results / "runs").iterdir() if (d / "result.json").exists() and d.name != "refcache"]
    trained = [json.loads((d / "result.json").read_text()) for d in done]
    trained = [r for r in trained if "train" in r]
    assert len(trained) == 7 and {r["device"] for r in trained} == {expected}


def test_runs_with_a_reference_record_the_weak_to_strong_gain_and_reducible_loss(sweep):
    _, results, _ = sweep
    table = pd.read_csv(results / "leaderboard.csv")
    done = table[table.status == "done"]
    ref = done[done.is_reference].iloc[0]
    drrho = done[done.method == "drrho"]
    assert drrho.reference_average.tolist() == pytest.approx([ref.average] * 3)  # read from the reference's run
    assert drrho.gain.tolist() == pytest.approx((drrho.average - ref.average).tolist())
    for task in ("digits", "shapes_retrieval"):
        assert drrho[f"gain:{task}"].tolist() == pytest.approx((drrho[f"task:{task}"] - ref[f"task:{task}"]).tolist())
    assert (drrho.reducible_var > 0).all() and drrho.reducible_mean.notna().all()
    assert done.loc[done.method == "clip", "gain"].isna().all()  # no reference, no gain
    result = json.loads((results / "runs" / drrho.run_id.iloc[0] / "result.json").read_text())
    assert result["reference"]["reducible_loss"]["n"] == 1024 and result["format"] == records.RESULT_FORMAT
    metrics = [json.loads(line) for line in (results / "runs" / drrho.run_id.iloc[0] / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= m["noisy_fraction"] <= 1 for m in metrics)


def test_a_failed_run_is_recorded_with_its_reason_and_does_not_stop_the_others(sweep):
    _, results, first = sweep
    table = pd.read_csv(results / "leaderboard.csv")
    failed = table[table.status == "failed"]
    assert failed.stage.tolist() == ["broken"]
    status = records.read_status(results / "runs" / failed.run_id.item())
    assert status["state"] == "failed" and status["error"]
    assert "FAILED" in first.stderr + first.stdout


def test_eval_results_hold_clip_benchmark_metrics(sweep):
    _, results, _ = sweep
    table = pd.read_csv(results / "leaderboard.csv")
    run_id = table[(table.status == "done") & (table.method == "drrho")].run_id.iloc[0]
    scores = json.loads((results / "runs" / run_id / "eval.json").read_text())
    assert {"acc1", "acc5", "mean_per_class_recall"} <= set(scores["tasks"]["digits"])
    assert {"image_retrieval_recall@1", "text_retrieval_recall@5"} <= set(scores["tasks"]["shapes_retrieval"])
    metrics = [json.loads(line) for line in (results / "runs" / run_id / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == metrics[-1]["samples_seen"] // 32 and "objective" in metrics[-1]


def test_rerun_launches_only_what_is_missing_or_failed(sweep, clipsteer):
    grid, results, _ = sweep
    done_before = {p.name: (p / "result.json").stat().st_mtime_ns for p in (results / "runs").iterdir()
                   if (p / "result.json").exists()}
    again = clipsteer("run", grid, "--results", results)
    assert again.returncode == 1
    assert "1 units to launch, 7 already done" in again.stderr + again.stdout
    after = {name: (results / "runs" / name / "result.json").stat().st_mtime_ns for name in done_before}
    assert after == done_before
    dry = clipsteer("run", grid, "--results", results, "--dry-run")
    assert "8 runs, 7 done, 1 to launch" in dry.stdout


def test_report_command_rebuilds_the_report(sweep, tmp_path, clipsteer):
    _, results, _ = sweep
    (results / "leaderboard.md").unlink()
    out = clipsteer("report", results)
    assert out.returncode == 0, out.stderr
    assert (results / "leaderboard.md").exists()
    missing = clipsteer("report", results / "nope")
    assert missing.returncode == 2 and "no such directory" in missing.stderr
    not_results = clipsteer("report", tmp_path)
    assert not_results.returncode == 2 and "not a results directory" in not_results.stderr


def test_every_registered_method_runs_a_tiny_sweep_end_to_end(tmp_path):
    from harness import sweep
    from harness.grid.config import load_grid
    from harness.profiles import model_profile
    from methods import REGISTRY

    grid_file = tmp_path / "zoo.yaml"
    grid_file.write_text(textwrap.dedent(f"""
        name: zoo
        data: {{sources: [shapes], shapes_count: 640, noise: 0.2}}
        eval: {{tasks: [shapes_retrieval]}}
        train: {{batch_size: 32, warmup_steps: 1}}
        executor: {{kind: debug}}
        stages:
          - name: reference
            methods: [clip]
            models: [tiny-m]
            samples_seen: [64]
          - name: zoo
            reference: reference
            methods: [{", ".join(sorted(REGISTRY))}]
            models: [tiny-s]
            samples_seen: [64]
          - name: cached
            reference: {{stage: reference, features: cached}}
            methods: [drrho, jest, filter]
            models: [tiny-s]
            samples_seen: [64]
        """))
    grid = load_grid(grid_file)
    outcome = sweep.run(grid, tmp_path / "results", grid.executor)
    assert not outcome.launch.failed
    table = pd.read_csv(tmp_path / "results" / "leaderboard.csv").set_index(["stage", "method"])
    assert set(table.loc["zoo"].index) == set(REGISTRY)
    assert (table.status == "done").all() and table.average.between(0, 1).all()

    # C_total, part by part, against what each method does: 2 steps of 32 samples, a 640-sample pool
    g, g_ref = model_profile("tiny-s")["gflops"], model_profile("tiny-m")["gflops"]
    extra = (table.c_total - table.c_paper) / g_ref
    for name in ("clip", "fastclip", "random"):
        assert extra["zoo", name] == 0
    for name in ("drrho", "kd", "fastclip_kd", "drrho_kd"):
        assert extra["zoo", name] == pytest.approx(64)  # the reference's forward pass of every trained sample
    for name in ("jest", "jest_topk", "rho_topk"):  # 160 candidates a step, scored by learner and reference
        assert extra["zoo", name] == pytest.approx(2 * 160 * (1 + g / g_ref))
    assert extra["zoo", "filter"] == pytest.approx(640)  # one scoring pass over the pool
    assert table.trained_pool["zoo", "filter"] == table.trained_pool["zoo", "random"] == 192 == round(0.3 * 640)
    # cached: the one pass over the pool is shared by the three runs that read it; no reference forward
    assert extra["cached", "drrho"] == extra["cached", "filter"] == pytest.approx(640 / 3)
    assert extra["cached", "jest"] == pytest.approx(640 / 3 + 2 * 160 * g / g_ref)
    # the cached filter keeps the same samples as the online one: same features, same top scores
    runs = tmp_path / "results" / "runs"
    kept = [torch.load(runs / table.run_id[stage, "filter"] / "kept_indices.pt") for stage in ("zoo", "cached")]
    assert torch.equal(kept[0], kept[1])
