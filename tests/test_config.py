"""Grid files: every kind of bad input is refused before anything runs, naming file, key and what is allowed."""
import textwrap

import pytest
import torch

from harness.cli import main
from harness.errors import ConfigError
from harness.grid.config import load_grid
from harness.grid.spec import expand

GOOD = """
name: t
data: {sources: [shapes], shapes_count: 512, noise: 0.2}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32}
executor: {kind: debug}
stages:
  - name: ref
    methods: [clip]
    models: [tiny-s]
    samples_seen: [64]
  - name: sweep
    reference: ref
    methods: [clip, {name: drrho, tau: 0.02}]
    models: [tiny-s, tiny-m]
    samples_seen: [64, 128]
    seeds: [0, 1]
"""


def write(tmp_path, text):
    path = tmp_path / "grid.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
        return path
    if "GARBAGE" in text:
        garbage = tmp_path / "garbage.pt"
        garbage.write_bytes(b"this is not a torch file")
        text = text.replace("GARBAGE", str(garbage))
    path.write_text(textwrap.dedent(text))
    return path


def mutate(old, new):
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


BAD = [
    ("stages: [", "not valid YAML"),
    (mutate("stages:", "stage:"), "stage: unknown key (did you mean 'stages'?)"),
    ("name: x\n", "stages: required"),
    (mutate("methods: [clip, {name: drrho", "methods: [clip, {name: drho"), "stages[1].methods[1]: unknown method 'drho' (did you mean 'drrho'?)"),
    (mutate("tau: 0.02", "taux: 0.02"), "stages[1].methods[1]: method 'drrho' has no parameter 'taux'"),
    (mutate("tau: 0.02", "tau: hot"), "parameter 'tau' must be float"),
    (mutate("models: [tiny-s, tiny-m]", "models: [tiny-s, tiny-xl]"), "stages[1].models[1]: unknown model 'tiny-xl'"),
    (mutate("tasks: [shapes_retrieval]", "tasks: [shape_retrieval]"), "eval.tasks[0]: unknown task 'shape_retrieval' (did you mean 'shapes_retrieval'?)"),
    (mutate("samples_seen: [64, 128]", "samples_seen: [64, 100]"), "stages[1].samples_seen[1]: 100 is not a multiple of batch_size 32 (samples seen are counted exactly); use 96 or 128"),
    (mutate("samples_seen: [64, 128]", "samples_seen: [-64]"), "stages[1].samples_seen[0]: must be >= 1"),
    (mutate("samples_seen: [64, 128]", "samples_seen: [many]"), "stages[1].samples_seen[0]: must be an integer"),
    (mutate("samples_seen: [64, 128]", "samples_seen: []"), "stages[1].samples_seen: must not be empty"),
    (mutate("reference: ref", "reference: reff"), "stages[1].reference: stage 'reff' does not exist (did you mean 'ref'?)"),
    (mutate("reference: ref", "reference: sweep"), "cannot be its own reference"),
    (mutate("    reference: ref\n", "    reference: null\n"), "stages[1].methods[1]: method 'drrho' needs a reference model"),
    (mutate("  - name: ref\n", "  - name: ref\n    reference: sweep\n"), "stages[0].reference: stage 'sweep' comes later"),
    (mutate("    samples_seen: [64]\n", "    samples_seen: [64, 128]\n"), "stages[1].reference: stage 'ref' has 2 runs; a reference stage must have exactly one"),
    (mutate("reference: ref", "reference: {checkpoint: /nonexistent/ref.pt, model: tiny-s}"), "stages[1].reference.checkpoint: no such file"),
    (mutate("reference: ref", "reference: {pretrained: openai}"), "stages[1].reference.model: required with 'pretrained'"),
    (mutate("executor: {kind: debug}", "executor: {kind: slurmm}"), "executor.kind: unknown executor 'slurmm'"),
    (mutate("executor: {kind: debug}", "executor: {kind: local, max_parallel: 0}"), "executor.max_parallel: must be >= 1"),
    (mutate("noise: 0.2", "noise: 1.5"), "data: "),
    (mutate("noise: 0.2", "noyse: 0.2"), "data.noyse: unknown key (did you mean 'noise'?)"),
    (mutate("train: {batch_size: 32}", "train: {batch_size: 0}"), "train: batch_size must be > 0"),
    (mutate("train: {batch_size: 32}", "train: {weight_decy: 0.1}"), "train.weight_decy: unknown key (did you mean 'weight_decay'?)"),
    (mutate("  - name: ref\n", "  - name: sweep\n"), "stages[1].name: duplicate stage name 'sweep'"),
    ("- just\n- a list\n", "must be a mapping, got list"),
    (mutate("seeds: [0, 1]", "seeds: [0, 0]"), "stages[1]: run sweep-clip-tiny-s-n64-s0-"),
    (mutate("methods: [clip, {name: drrho, tau: 0.02}]", "methods: [drrho, {name: drrho, tau: 0.01}]"), "appears twice"),
    (mutate("seeds: [0, 1]", "seeds: [0, 4294967296]"), "stages[1].seeds[1]: must be <= 2147483647"),
    (mutate("train: {batch_size: 32}", "train: {batch_size: 32.5}"), "train: batch_size must be int"),
    (mutate("train: {batch_size: 32}", "train: {batch_size: 32, augment: 'no'}"), "train: augment must be bool"),
    (mutate("train: {batch_size: 32}", "train: {batch_size: 32, lr: .nan}"), "train: lr must be finite"),
    (mutate("reference: ref", "reference: {stage: ref, model: tiny-m}"), "stages[1].reference.model: not allowed with 'stage'"),
    (mutate("reference: ref", "reference: {stage: ref, features: cache}"), "stages[1].reference.features: unknown 'cache' (did you mean 'cached'?); allowed: online, cached"),
    (mutate("reference: ref", "reference: {stage: ref, cache: /nonexistent/cache}"), "stages[1].reference.cache: no such directory"),
    (mutate("reference: ref", "reference: {stage: ref, features: online, cache: /tmp}"), "stages[1].reference.cache: a cache directory needs 'features: cached'"),
    (mutate("reference: ref", "reference: {stage: ref, cache: /tmp}"), "stages[1].reference.cache: no finished reference-feature cache at /tmp"),
    (mutate("methods: [clip, {name: drrho", "methods: [{name: filter, keep: 0}, {name: drrho"), "stages[1].methods[0]: method 'filter': keep must be in (0, 1]"),
    (mutate("reference: ref", "reference: {pretrained: opneai, model: ViT-B-32}"), "stages[1].reference.pretrained: open_clip has no pretrained tag 'opneai' for ViT-B-32 (did you mean 'openai'?)"),
    (mutate("models: [tiny-s, tiny-m]", "models: [tiny-s, coca_ViT-B-32]"), "captioning (CoCa) model"),
    (mutate("reference: ref", "reference: {checkpoint: GARBAGE, model: tiny-s}"), "stages[1].reference.checkpoint: not a readable checkpoint"),
    (mutate("shapes_count: 512", "shapes_count: 0"), "data: shapes_count must be an integer >= 1"),
    (mutate("shapes_count: 512", "shapes_count: 512, per_source: -3"), "data: per_source must be None or an integer >= 1"),
    (mutate("data: {sources: [shapes]", "data: {sources: [shape]"), "data: sources must be distinct names"),
    (mutate("executor: {kind: debug}", "executor: {kind: local, timeout_min: 0}"), "executor.timeout_min: must be >= 1"),
    (mutate("executor: {kind: debug}", "executor: {kind: local, cpus: 2}"), "executor.cpus: unknown key (did you mean 'cpus_per_job'?)"),
    (mutate("models: [tiny-s]\n", "models: tiny-s\n"), "stages[0].models: must be a list, got str"),
    (GOOD.encode("utf-16"), "not a UTF-8 text file"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_grid_is_refused_with_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        expand(load_grid(path))  # what `clipsteer run` does before launching anything
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


@pytest.mark.parametrize("text, message", BAD, ids=[m[:40] for _, m in BAD])
@pytest.mark.parametrize("command", ["run", "cache-ref"])
def test_the_command_line_refuses_each_bad_grid_with_exit_2_and_writes_nothing(tmp_path, capsys, command, text, message):
    path, out = write(tmp_path, text), tmp_path / "out"
    assert main([command, str(path), "--results", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clipsteer: error: {path}") and message in err and "Traceback" not in err
    assert not out.exists()


def test_noise_error_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="noise"):
        load_grid(write(tmp_path, mutate("noise: 0.2", "noise: 1.5")))


def test_missing_grid_file(tmp_path):
    with pytest.raises(ConfigError, match="no such grid file"):
        load_grid(tmp_path / "nope.yaml")


def test_good_grid_expands_into_stable_specs(tmp_path):
    grid = load_grid(write(tmp_path, GOOD))
    specs = expand(grid)
    assert len(specs) == 1 + 2 * 2 * 2 * 2
    assert [s["run_id"] for s in specs] == [s["run_id"] for s in expand(load_grid(write(tmp_path, GOOD)))]
    assert len({s["run_id"] for s in specs}) == len(specs)
    ref_id = specs[0]["run_id"]
    drrho = [s for s in specs if s["method"]["name"] == "drrho"]
    assert all(s["reference"] == {"kind": "run", "run_id": ref_id, "model": "tiny-s", "features": "online"} for s in drrho)
    assert all(s["method"]["params"]["tau"] == 0.02 and s["method"]["params"]["eps"] == 1e-4 for s in drrho)
    assert all(s["reference"] is None for s in specs if s["method"]["name"] == "clip")


def test_run_id_changes_with_the_spec_and_only_then(tmp_path):
    base = {s["run_id"] for s in expand(load_grid(write(tmp_path, GOOD)))}
    changed = {s["run_id"] for s in expand(load_grid(write(tmp_path, mutate("noise: 0.2", "noise: 0.3"))))}
    assert not base & changed  # the data changed: every run is a different run
    # a change to the sweep stage alone leaves the reference run's id as it was
    only_sweep = {s["run_id"] for s in expand(load_grid(write(tmp_path, mutate("tau: 0.02", "tau: 0.03"))))}
    assert len(base & only_sweep) == 1 + 8  # the reference and every clip run are unchanged


def test_run_id_ignores_what_does_not_change_the_result(tmp_path):
    base = [s["run_id"] for s in expand(load_grid(write(tmp_path, GOOD)))]
    same = [
        mutate("train: {batch_size: 32}", "train: {batch_size: 32, log_every: 3, checkpoint_every: 7}"),
        mutate("train: {batch_size: 32}", "train: {batch_size: 32, lr: 0.001}"),  # the default, written out
        mutate("noise: 0.2", "noise: 0.2, image_size: 32"),
    ]
    for text in same:
        assert [s["run_id"] for s in expand(load_grid(write(tmp_path, text)))] == base
    assert [s["run_id"] for s in expand(load_grid(write(tmp_path, mutate("train: {batch_size: 32}", "train: {batch_size: 32, lr: 1}"))))] == \
        [s["run_id"] for s in expand(load_grid(write(tmp_path, mutate("train: {batch_size: 32}", "train: {batch_size: 32, lr: 1.0}"))))]


def test_checkpoint_reference_is_identified_by_content_not_location(tmp_path):
    ids = []
    weights, other = tmp_path / "weights.pt", tmp_path / "other.pt"
    torch.save({"w": torch.ones(3)}, weights)
    torch.save({"w": torch.zeros(3)}, other)
    for folder, payload in (("a", weights), ("b", weights), ("c", other)):
        ckpt = tmp_path / folder / "ref.pt"
        ckpt.parent.mkdir()
        ckpt.write_bytes(payload.read_bytes())
        grid = load_grid(write(tmp_path, mutate("reference: ref", f"reference: {{checkpoint: {ckpt}, model: tiny-s}}")))
        ids.append({s["run_id"] for s in expand(grid) if s["method"]["name"] == "drrho"})
    assert ids[0] == ids[1] and not ids[0] & ids[2]


def test_cli_bad_grid_exits_2_and_writes_nothing(tmp_path, clipsteer):
    path = write(tmp_path, mutate("methods: [clip, {name: drrho", "methods: [clip, {name: drho"))
    out = tmp_path / "out"
    proc = clipsteer("run", path, "--results", out)
    assert proc.returncode == 2
    assert "unknown method 'drho' (did you mean 'drrho'?)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_cli_dry_run_lists_runs_and_writes_nothing(tmp_path, clipsteer):
    out = tmp_path / "out"
    proc = clipsteer("run", write(tmp_path, GOOD), "--results", out, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "17 runs, 0 done, 17 to launch" in proc.stdout
    assert proc.stdout.count("C_paper=") == 17
    assert not out.exists()


def test_dry_run_prints_the_resolved_configuration_and_cpu_minutes_from_the_measured_rate(tmp_path, capsys):
    """The resolved configuration marks every default (*); a CPU executor gets minutes, not GPU-hours: a clip run
    of a measured preset and batch takes samples_seen / (measured samples/s) seconds."""
    import json

    from harness.launch import estimate

    assert main(["run", str(write(tmp_path, GOOD)), "--results", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("GPU-h") == 1 and "no GPU asked for, so no GPU-hours" in out
    rate = json.loads(estimate.CPU_THROUGHPUT.read_text())["samples_per_s"]["tiny-s"]["32"]
    [line] = [line for line in out.splitlines() if line.strip().startswith("ref-clip-tiny-s-n64-s0-")]
    assert line.endswith(f"~{64 / rate / 60:.3g} min")
    flat = " ".join(out[out.index("resolved configuration"):].split())
    for shown in ("shapes_count=512,", "noise=0.2,", "subset=all*", "batch_size=32,", "lr=0.001*", "device=auto*",
                  "kind=debug,", "max_parallel=2*", "stage sweep: models=[tiny-s, tiny-m]", "seeds=[0]*",
                  "method drrho: tau=0.02, eps=0.0001*", "variant=paper*"):
        assert shown in flat, shown


def test_the_cpu_rate_of_an_unmeasured_preset_is_the_closest_measured_one_in_gflops_per_pair():
    import json
    import math

    from harness.launch.estimate import CPU_THROUGHPUT, TRAIN_FACTOR, cpu_gflops_per_s
    from harness.profiles import model_profile

    table = json.loads(CPU_THROUGHPUT.read_text())
    assert cpu_gflops_per_s("tiny-s", 40) == cpu_gflops_per_s("tiny-s", 32)  # the nearest measured batch, in ratio
    assert cpu_gflops_per_s("tiny-s", 128) == table["samples_per_s"]["tiny-s"]["128"] * TRAIN_FACTOR * \
        table["gflops_per_pair"]["tiny-s"]
    own = model_profile("tiny16-m")["gflops"]
    assert "tiny16-m" not in table["gflops_per_pair"]
    closest = min(table["gflops_per_pair"], key=lambda m: abs(math.log(table["gflops_per_pair"][m] / own)))
    assert cpu_gflops_per_s("tiny16-m", 128) == cpu_gflops_per_s(closest, 128)
