"""Tuning stages (harness.grid.tuning): validation pairs held out of the pool, the validation score, the choice
handed to later stages, the sweep that expands them once tuning is done, and the report's tuning section."""
import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from harness import io, sweep
from harness.data.build import build_pool, split_validation
from harness.data.poolconfig import PoolConfig, embedded_pool_size
from harness.errors import ConfigError
from harness.eval.validation import validation_scores
from harness.grid.config import ExecutorConfig, load_grid
from harness.grid.spec import expand, expand_waiting, run_id
from harness.grid.tuning import best
from harness.models import build_model
from harness.report.tuning import mark_lead, sampling_se
from harness.run import refcache
from harness.store.rundir import RESULT_FORMAT, RunDir

GRID = """
name: tg
data: {sources: [shapes], shapes_count: 320, noise: 0.2}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32, warmup_steps: 1, log_every: 1}
executor: {kind: debug}
stages:
  - name: ref
    methods: [clip]
    models: [tiny-s]
    samples_seen: [64]
  - name: tune
    reference: {stage: ref, features: cached}
    methods: [kd, drrho_kd]
    models: [tiny-s]
    samples_seen: [64]
    tune: TUNE
  - name: main
    reference: {stage: ref, features: cached}
    methods: [clip, kd, {name: drrho_kd, lam: 0.75}]
    models: [tiny-s]
    samples_seen: [64]
    seeds: [0, 1]
"""
TUNE = "{lam: [0.25, 1.0], on: validation}"


def _grid(tmp_path, tune=TUNE, text=GRID):
    path = tmp_path / "tg.yaml"
    path.write_text(text.replace("TUNE", tune))
    return load_grid(path)


# -- the validation split and its score --------------------------------------------------------------------------

def test_the_validation_pairs_are_drawn_by_seed_and_never_trained_on():
    cfg = PoolConfig(sources=("shapes",), shapes_count=300, noise=0.2, validation=40)
    train, held = split_validation(cfg)
    whole = build_pool(replace(cfg, validation=0))
    assert len(held) == 40 and len(train) == 260 == embedded_pool_size(cfg)
    assert set(train.indices.tolist()).isdisjoint(held.indices.tolist())
    assert sorted(train.indices.tolist() + held.indices.tolist()) == whole.indices.tolist()
    assert torch.equal(build_pool(cfg).indices, train.indices)  # what a run of cfg trains on
    assert torch.equal(held.images, whole.images[held.indices])  # indices stay the whole pool's: a cache serves both
    assert torch.equal(split_validation(cfg)[1].indices, held.indices)
    assert not torch.equal(split_validation(replace(cfg, seed=1))[1].indices, held.indices)
    assert len(build_pool(cfg, split="test")) == embedded_pool_size(cfg, "test")  # the test split is never split


def test_a_cache_of_the_whole_pool_serves_runs_that_hold_pairs_out():
    data = {"sources": ["shapes"], "shapes_count": 300, "noise": 0.2}
    assert refcache.data_identity({**data, "validation": 40}) == refcache.data_identity(data)


def test_holding_out_every_pair_is_refused():
    with pytest.raises(ValueError, match="would leave none to train on"):
        split_validation(PoolConfig(sources=("shapes",), shapes_count=30, validation=30))
    with pytest.raises(ValueError, match="validation must be an integer >= 0"):
        PoolConfig(validation=-1)


def test_the_validation_score_is_retrieval_recall_at_1_among_the_held_out_pairs():
    """Against an independent count: an image is right when its nearest distinct caption is its own; a caption
    when its nearest image carries it."""
    torch.manual_seed(0)
    built = build_model("tiny-s")
    held = split_validation(PoolConfig(sources=("shapes",), shapes_count=200, noise=0.3, validation=60))[1]
    doc = validation_scores(built, held, batch_size=16)
    with torch.no_grad():
        images = F.normalize(built.model.encode_image(built.preprocess(held.images)), dim=-1)
        texts = F.normalize(built.model.encode_text(held.tokenize(built.tokenizer)), dim=-1)
    sims = images @ texts.T
    text_hits = (sims.argmax(1) == held.caption_ids).float().mean().item()
    image_hits = (held.caption_ids[sims.argmax(0)] == torch.arange(len(texts))).float().mean().item()
    scores = doc["tasks"]["validation"]
    assert scores["text_retrieval_recall@1"] == pytest.approx(text_hits)
    assert scores["image_retrieval_recall@1"] == pytest.approx(image_hits)
    assert doc["average"] == scores["main_metric"] == pytest.approx((text_hits + image_hits) / 2)
    assert scores["pairs"] == 60 and scores["captions"] == len(held.captions) < 60  # captions repeat


# -- the grid -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tune, key, message", [
    ("{tau: [0.01, 0.03]}", "stages[1].tune.tau", "method 'kd' has no parameter 'tau'"),
    ("{lam: [0.5]}", "stages[1].tune.lam", "at least two distinct candidate values"),
    ("{lam: [0.5, 0.5]}", "stages[1].tune.lam", "at least two distinct candidate values"),
    ("{lam: [0.5, 1.0], on: test}", "stages[1].tune.on", "unknown 'test'"),
    ("{on: validation}", "stages[1].tune", "name at least one method parameter"),
    ("{lam: [0.5, -1.0]}", "stages[1].tune", "candidate {'lam': -1.0} for method 'kd'"),
])
def test_bad_tuning_is_refused_naming_the_key(tmp_path, tune, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        _grid(tmp_path, tune)
    assert err.value.key == key


def test_a_tuned_parameter_set_by_the_method_itself_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="sets lam itself") as err:
        _grid(tmp_path, text=GRID.replace("methods: [kd, drrho_kd]", "methods: [{name: kd, lam: 0.5}]"))
    assert err.value.key == "stages[1].tune.lam"


def test_a_later_run_on_a_model_the_stage_did_not_tune_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="tunes kd's lam on tiny-s, not on tiny-m") as err:
        main = "methods: [clip, kd, {name: drrho_kd, lam: 0.75}]\n    models: [tiny-s"
        _grid(tmp_path, text=GRID.replace(main, main + ", tiny-m"))
    assert err.value.key == "stages[2].methods[1]"


def test_tuning_runs_hold_pairs_out_and_later_runs_wait_for_their_choice(tmp_path):
    grid = _grid(tmp_path)
    specs = expand(grid)
    tuning = [s for s in specs if s.stage == "tune"]
    assert [(s.method.name, s.method.params["lam"]) for s in tuning] == [
        ("kd", 0.25), ("kd", 1.0), ("drrho_kd", 0.25), ("drrho_kd", 1.0)]
    assert all(s.tune == ("lam",) and s.eval_tasks == () and s.data["validation"] == 32 for s in tuning)  # 320 / 10
    main = [s for s in specs if s.stage == "main"]
    assert [s.method.name for s in main] == ["clip", "clip", "drrho_kd", "drrho_kd"]  # drrho_kd sets lam itself
    assert all(s.data["validation"] == 0 and not s.tuned for s in main)
    assert expand_waiting(grid)[1] == ["stage main: kd on tiny-s waits for tuning stage tune"]
    assert len({refcache.cache_unit(s).run_id for s in specs if s.reference}) == 1  # one cache for all


def _finish(results, spec, score):
    """A tuning run recorded as done with validation score `score` (what choose reads)."""
    rdir = RunDir.of(results, spec.run_id)
    rdir.path.mkdir(parents=True)
    io.write_json(rdir.spec, spec.to_json())
    io.write_json(rdir.status, {"state": "done"})
    io.write_json(rdir.result, {"run_id": spec.run_id, "format": RESULT_FORMAT, "eval": {"average": score}})


def test_the_best_mean_validation_score_is_handed_on_and_a_tie_goes_to_the_first(tmp_path):
    assert best([{"x": 1}, {"x": 2}, {"x": 3}], [[0.2, 0.4], [0.5, 0.1], [0.3]]) == 0  # means 0.3, 0.3, 0.3
    assert best([{"x": 1}, {"x": 2}], [[0.2], [0.21]]) == 1
    grid, results = _grid(tmp_path), tmp_path / "results"
    kd_low, kd_high, *_ = [s for s in expand(grid) if s.stage == "tune"]
    _finish(results, kd_low, 0.1)
    _finish(results, kd_high, 0.3)
    assert expand_waiting(grid, results)[1]  # drrho_kd's tuning runs are not done: nothing is chosen yet
    for spec in [s for s in expand(grid) if s.stage == "tune" and s.method.name == "drrho_kd"]:
        _finish(results, spec, 0.2)
    [kd0, kd1] = [s for s in expand(grid, results) if s.stage == "main" and s.method.name == "kd"]
    assert kd0.method.params["lam"] == 1.0 and kd0.tuned == {"lam": "tune"} and expand_waiting(grid, results)[1] == []
    explicit = replace(kd0, method=replace(kd0.method, params={**kd0.method.params}), tuned={})
    assert run_id(explicit) == kd0.run_id  # a tuned value and the same value set by hand: one run


# -- end to end ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tuning")
    small = GRID.replace("methods: [kd, drrho_kd]", "methods: [kd]").replace(", {name: drrho_kd, lam: 0.75}]", "]")
    grid = _grid(folder, text=small.replace("seeds: [0, 1]", "seeds: [0]"))
    outcome = sweep.run(grid, folder / "results", ExecutorConfig(kind="debug"))
    return grid, folder / "results", outcome


def test_a_sweep_tunes_then_trains_the_later_stage_with_the_best_value(swept):
    grid, results, outcome = swept
    assert not outcome.launch.failed and outcome.launch.waiting == []
    specs = expand(grid, results)
    assert len(outcome.launch.done) == len(specs) + 1  # and the feature cache
    scores = {s.method.params["lam"]: io.read_json(RunDir.of(results, s.run_id).eval)["average"]
              for s in specs if s.stage == "tune" and s.method.name == "kd"}
    best_lam = max(scores, key=lambda lam: (scores[lam], -lam))
    kd_runs = [s for s in specs if s.stage == "main" and s.method.name == "kd"]
    assert [s.method.params["lam"] for s in kd_runs] == [best_lam]
    tuning_eval = io.read_json(RunDir.of(results, [s for s in specs if s.stage == "tune"][0].run_id).eval)
    assert list(tuning_eval["tasks"]) == ["validation"]  # never the test tasks
    assert [s.to_json() for s in specs] == io.read_json(results / "specs.json")["specs"]


def test_the_report_keeps_tuning_runs_apart_and_counts_their_compute(swept):
    grid, results, _ = swept
    table = pd.read_csv(results / "leaderboard.csv")
    assert not table["stage"].eq("tune").any() and "task:validation" not in table
    rows = [r for r in io.read_json(results / "scaling.json")["tuning"]["rows"] if r["method"] == "kd"]
    assert [r["values"] for r in rows] == [{"lam": 0.25}, {"lam": 1.0}] and sum(r["chosen"] for r in rows) == 1
    chosen = next(r for r in rows if r["chosen"])["values"]["lam"]
    kd = table[table["method"].eq("kd")]
    assert kd["method_params"].map(lambda p: json.loads(p)["lam"]).tolist() == [chosen]
    c_paper = sum(io.read_json(RunDir.of(results, s.run_id).result)["c_paper"]
                  for s in expand(grid, results) if s.stage == "tune" and s.method.name == "kd")
    spent = rows[0]["c_total"] + rows[1]["c_total"]
    assert spent > c_paper and kd["tuning_c_total"].tolist() == pytest.approx([spent])
    assert table[table["method"].eq("clip") & table["stage"].eq("main")]["tuning_c_total"].isna().all()
    text = (results / "leaderboard.md").read_text()
    assert "## Tuning" in text and "tuning (GFLOPs)" in text and "lam=0.25" in text


def test_the_report_says_whether_a_choice_is_beyond_the_noise_of_the_validation_split():
    doc = {"tasks": {"validation": {"image_retrieval_recall@1": 0.1, "text_retrieval_recall@1": 0.2,
                                    "captions": 400, "pairs": 900}}}
    assert sampling_se(doc) == pytest.approx(0.5 * ((0.1 * 0.9 / 400) + (0.2 * 0.8 / 900)) ** 0.5)
    rows = [{"validation": 0.30, "validation_sd": None, "se": 0.01, "runs": 1, "chosen": True},
            {"validation": 0.25, "validation_sd": None, "se": 0.01, "runs": 1, "chosen": False},
            {"validation": 0.10, "validation_sd": None, "se": 0.01, "runs": 1, "chosen": False}]
    mark_lead(rows)  # lead 0.05 against the runner-up; 1.96 * sqrt(2) * 0.01 = 0.0277
    assert rows[0]["lead"] == pytest.approx(0.05) and rows[0]["clear"] is True and rows[1]["lead"] is None
    rows[1]["validation"] = 0.28
    mark_lead(rows)
    assert rows[0]["lead"] == pytest.approx(0.02) and rows[0]["clear"] is False
    seeds = [{"validation": 0.30, "validation_sd": 0.02, "se": None, "runs": 4, "chosen": True},
             {"validation": 0.27, "validation_sd": 0.02, "se": None, "runs": 4, "chosen": False}]
    mark_lead(seeds)  # standard errors of the means: 0.01 each; 0.03 > 0.0277
    assert seeds[0]["clear"] is True


def test_status_and_the_dry_run_name_the_runs_that_wait_for_a_tuning_stage(tmp_path, clipsteer):
    path = _grid(tmp_path).source
    results = tmp_path / "results"
    status = clipsteer("status", path, "--results", results)
    assert status.returncode == 0, status.stderr
    assert "not expanded yet: stage main: kd on tiny-s waits for tuning stage tune" in status.stdout
    plan = clipsteer("run", path, "--results", results, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "then, once it is done: stage main: kd on tiny-s waits for tuning stage tune" in plan.stdout
    assert "tune={lam: [0.25, 1.0], on: validation}" in " ".join(plan.stdout.split()) and not results.exists()
