"""`budget: {c_total: X}` stages: each method's samples seen resolved against the compute accounting
(harness.run.compute, harness.launch.estimate), and its refusals."""
import pytest

from harness.errors import ConfigError
from harness.grid.config import load_grid
from harness.grid.spec import expand
from harness.launch.estimate import _run_gflops
from harness.profiles import model_profile
from harness.run.compute import c_total, run_compute
from methods import get_method

GRID = """
name: budget
data: {sources: [shapes], shapes_count: 256}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 16}
stages:
  - {name: reference, methods: [clip], models: [tiny-m], samples_seen: [32]}
  - name: equal
    reference: {stage: reference, features: FEATURES}
    methods: [clip, drrho, jest, METHOD]
    models: [tiny-s, tiny-m]
    BUDGET
    seeds: [0, 1]
"""
TINY_S_40960 = 0.008036864 * 40960  # clip's C_total on tiny-s at 40,960 samples: 329.19 GFLOPs


def grid(tmp_path, budget=f"budget: {{c_total: {TINY_S_40960!r}}}", features="cached", method="random"):
    path = tmp_path / "budget.yaml"
    path.write_text(GRID.replace("BUDGET", budget).replace("FEATURES", features).replace("METHOD", method))
    return path


def own_c_total(spec):
    return c_total(run_compute(spec, get_method(spec.method.name)(spec.method.params, num_indices=1), 0))


def test_each_method_gets_the_samples_whose_c_total_is_nearest_the_budget(tmp_path):
    specs = [s for s in expand(load_grid(grid(tmp_path))) if s.stage == "equal"]
    assert len(specs) == 4 * 2 * 2 and all(s.samples_seen % 16 == 0 for s in specs)
    samples = {(s.method.name, s.model): s.samples_seen for s in specs}
    assert samples[("clip", "tiny-s")] == samples[("drrho", "tiny-s")] == samples[("random", "tiny-s")] == 40960
    # jest scores a super-batch of 5 x 16 with the learner at each step: 6 forward passes a trained sample;
    # 329.19 / (0.008036864 x 16 x 6) = 426.67 steps, nearest 427
    assert model_profile("tiny-s")["gflops"] == 0.008036864 and samples[("jest", "tiny-s")] == 427 * 16
    g_m = model_profile("tiny-m")["gflops"]
    assert samples[("clip", "tiny-m")] == 16 * round(TINY_S_40960 / (g_m * 16))
    for spec in specs:  # no other multiple of the batch is nearer the budget, as compute.py and estimate.py count it
        step = own_c_total(spec) / (spec.samples_seen // 16)
        assert abs(own_c_total(spec) - TINY_S_40960) <= step / 2
        assert _run_gflops(spec, lambda data: pytest.fail("no pool is scored"))[0] == pytest.approx(own_c_total(spec))
    assert [s.seed for s in specs[:2]] == [0, 1] and specs[0].samples_seen == specs[1].samples_seen


def test_an_on_the_fly_reference_counts_its_forward_passes(tmp_path):
    specs = {(s.method.name, s.model): s for s in expand(load_grid(grid(tmp_path, features="online")))
             if s.stage == "equal"}
    g_s, g_m = model_profile("tiny-s")["gflops"], model_profile("tiny-m")["gflops"]
    # drrho on tiny-s reads tiny-m's features of every trained sample: (g_s + g_m) x 16 a step
    assert specs[("drrho", "tiny-s")].samples_seen == 16 * round(TINY_S_40960 / ((g_s + g_m) * 16))
    assert specs[("drrho", "tiny-s")].samples_seen < specs[("clip", "tiny-s")].samples_seen == 40960


def test_a_budget_below_one_step_still_trains_one_batch(tmp_path):
    specs = [s for s in expand(load_grid(grid(tmp_path, budget="budget: {c_total: 0.001}"))) if s.stage == "equal"]
    assert {s.samples_seen for s in specs} == {16}


def test_pool_scoring_on_the_fly_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"stages\[1\]\.budget\.c_total: method 'filter' scores the whole pool"):
        expand(load_grid(grid(tmp_path, features="online", method="filter")))
    assert any(s.method.name == "filter" for s in expand(load_grid(grid(tmp_path, method="filter"))))  # cached: fine


@pytest.mark.parametrize("budget, key, message", [
    ("budget: {c_total: -5}", "stages[1].budget.c_total", "must be a positive number of forward GFLOPs per run"),
    ("budget: {c_total: true}", "stages[1].budget.c_total", "must be a positive number"),
    ("budget: {c_totl: 5}", "stages[1].budget.c_totl", "did you mean 'c_total'"),
    ("budget: {c_total: 5}\n    samples_seen: [32]", "stages[1].samples_seen", "give exactly one of 'samples_seen'"),
    ("", "stages[1].samples_seen", "give exactly one of 'samples_seen'")])
def test_bad_budgets_are_refused_naming_the_key(tmp_path, budget, key, message):
    with pytest.raises(ConfigError) as info:
        load_grid(grid(tmp_path, budget=budget))
    assert f"{key}: " in str(info.value) and message in str(info.value)


def test_the_zoos_equal_c_total_stage_resolves_the_selectors_to_clips_c_total():
    specs = expand(load_grid("grids/zoo.yaml"))
    equal = [s for s in specs if s.stage == "equal-ctotal"]
    assert {s.method.name: s.samples_seen for s in equal} == {"jest": 6784, "jest_topk": 6784, "rho_topk": 6784}
    assert all(abs(own_c_total(s) - TINY_S_40960) < 0.008036864 * 128 * 6 / 2 for s in equal)  # half a step
    clip = next(s for s in specs if s.stage == "zoo" and s.method.name == "clip")
    assert own_c_total(clip) == pytest.approx(TINY_S_40960, rel=1e-4)


def test_the_command_line_refuses_an_unresolvable_budget_with_exit_2(tmp_path, clipsteer):
    out = tmp_path / "out"
    proc = clipsteer("run", grid(tmp_path, features="online", method="filter"), "--results", out, "--dry-run")
    assert proc.returncode == 2 and "budget.c_total: method 'filter' scores the whole pool" in proc.stderr
    assert not out.exists()
