"""Typed units (harness.grid.runspec), reference kinds (harness.run.reference), run directory names
(harness.store.rundir) and the identity read from field metadata (harness.store.identity): the JSON form
and the ids are those the committed results were stored under."""
import dataclasses
import json
import pickle
import re
from pathlib import Path

import pytest

from harness import io
from harness.data.pool import PoolConfig
from harness.grid.config import load_grid
from harness.grid.runspec import CacheUnit, RunSpec, identity, unit_from_json
from harness.grid.spec import expand, run_id
from harness.run import refcache
from harness.run.reference import CheckpointReference, PretrainedReference, Reference, ReferenceNotReady, RunReference
from harness.run.train import TrainConfig
from harness.store import records
from harness.store.identity import IN_ID, IN_ID_UNLESS_DEFAULT, NOT_IN_ID, identity_of, in_id_as
from harness.store.rundir import RESULT_FORMAT, RunDir

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("grid", ["demo", "zoo", "w2s"])
def test_the_grids_expand_to_the_committed_specs(grid):
    """With the committed records, so the values the zoo's tuning stages chose are re-derived from them."""
    committed = io.read_json(ROOT / "results" / grid / "specs.json")["specs"]
    found = expand(load_grid(ROOT / "grids" / f"{grid}.yaml"), ROOT / "results" / grid)
    assert [s.to_json() for s in found] == committed


@pytest.mark.parametrize("grid", ["demo", "zoo"])
def test_the_json_round_trip_gives_the_same_spec_bytes_and_id(grid, tmp_path):
    for spec in expand(load_grid(ROOT / "grids" / f"{grid}.yaml")):
        stored = io.write_json(tmp_path / "spec.json", spec.to_json()).read_bytes()
        back = RunSpec.from_json(json.loads(stored))
        assert back == spec and run_id(back) == spec.run_id
        assert spec.run_id.endswith("-" + io.digest(identity(spec.to_json())))
        assert io.write_json(tmp_path / "again.json", back.to_json()).read_bytes() == stored
        assert pickle.loads(pickle.dumps(spec)) == spec  # submitit pickles the job's arguments
        assert spec["run_id"] == spec.run_id and spec["train"] == dataclasses.asdict(spec.train)  # read as a dict


def test_a_cache_unit_round_trips_and_is_told_from_a_run():
    specs = expand(load_grid(ROOT / "grids" / "zoo.yaml"))
    [unit] = refcache.cache_units(specs)
    entry = unit.to_json()
    assert entry["kind"] == CacheUnit.KIND and "features" not in entry["reference"]
    assert unit_from_json(json.loads(json.dumps(entry))) == unit
    assert isinstance(unit_from_json(specs[0].to_json()), RunSpec)
    assert unit.run_id == f"refcache-{unit.reference.model}-" + io.digest(
        {"reference": unit.reference.identity(), "data": refcache.data_identity(unit.data)})


REFERENCES = [
    (RunReference(run_id="ref-clip-tiny-m-n30720-s0-abc", model="tiny-m", features="cached"),
     "ref-clip-tiny-m-n30720-s0-abc",
     {"kind": "run", "run_id": "ref-clip-tiny-m-n30720-s0-abc", "model": "tiny-m"}),
    (CheckpointReference(path="/ckpt/ref.pt", sha256="f00d", model="tiny-s", cache="/caches/one"),
     "tiny-s@/ckpt/ref.pt", {"kind": "checkpoint", "sha256": "f00d", "model": "tiny-s"}),
    (PretrainedReference(tag="openai", model="ViT-B-32-quickgelu"), "ViT-B-32-quickgelu:openai",
     {"kind": "pretrained", "tag": "openai", "model": "ViT-B-32-quickgelu"}),
]


@pytest.mark.parametrize("ref, label, ident", REFERENCES, ids=lambda x: getattr(x, "KIND", None))
def test_each_reference_kind_owns_its_label_and_identity(ref, label, ident):
    entry = ref.to_json()
    assert ref.label() == label and ref.identity() == ident
    assert Reference.from_json(entry) == ref and ("cache" in entry) == (ref.cache is not None)
    assert ref.source() == {k: v for k, v in entry.items() if k not in ("features", "cache")}
    in_spec = identity({"reference": entry})["reference"]  # a run's identity keeps how features are read
    assert in_spec == {**ident, "features": ref.features}
    assert ref.requires() == ({ref.run_id} if isinstance(ref, RunReference) else set())


def test_references_say_where_their_weights_come_from(tmp_path):
    run = RunReference(run_id="r", model="tiny-s")
    with pytest.raises(ReferenceNotReady, match="reference run r is missing"):
        run.weights(tmp_path)
    records.finish(records.run_dir(tmp_path, "r"), {})
    assert run.weights(tmp_path) == str(RunDir.of(tmp_path, "r").final_model)
    io.write_json(RunDir.of(tmp_path, "r").eval, {"tasks": {}})
    assert run.stored_scores(tmp_path) == {"tasks": {}}
    ckpt, tag = REFERENCES[1][0], REFERENCES[2][0]
    assert (ckpt.weights(tmp_path), tag.weights(tmp_path)) == ("/ckpt/ref.pt", "openai")
    assert ckpt.stored_scores(tmp_path) is None and tag.stored_scores(tmp_path) is None
    with pytest.raises(ValueError, match="unknown reference kind 'stage'"):
        Reference.from_json({"kind": "stage", "model": "tiny-s"})


def test_a_run_directory_names_every_file(tmp_path):
    rdir = RunDir.of(tmp_path, "a-run")
    assert rdir.path == tmp_path / "runs" / "a-run" and RunDir(str(rdir.path)) == rdir
    names = {"spec": "spec.json", "status": "status.json", "result": "result.json", "eval": "eval.json",
             "error": "error.txt", "attempts": "attempts.jsonl", "requeues": "requeues.jsonl", "lease": "lease.json",
             "lease_lock": ".lease.lock", "metrics": "metrics.jsonl", "checkpoints": "checkpoints",
             "branch_points": "branch_points", "branch": "branch.json", "kept_indices": "kept_indices.pt",
             "final_model": "model.pt", "feature_shards": "features", "feature_table": "features.pt"}
    for attr, name in names.items():
        assert getattr(rdir, attr) == rdir.path / name and getattr(RunDir, attr).name == name


def test_a_run_directory_reads_its_state(tmp_path):
    rdir = RunDir.of(tmp_path, "r")
    assert rdir.state() == "missing" and RunDir.all(tmp_path) == []
    records.fail(rdir.path, RuntimeError("boom"))
    assert rdir.state() == "failed" and rdir.read_status()["error"] == "RuntimeError: boom"
    io.write_json(rdir.result, {"format": RESULT_FORMAT - 1})
    assert rdir.state() == "stale"
    records.finish(rdir.path, {})
    assert rdir.state() == "done" == records.state(tmp_path, "r") and RunDir.all(tmp_path) == [rdir]


def _marked(cls: type, mark: dict) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get(IN_ID) == mark[IN_ID]}


def test_the_fields_outside_the_id_are_marked_on_the_configs():
    assert _marked(TrainConfig, NOT_IN_ID) == {"log_every", "checkpoint_every", "checkpoint_minutes", "compile",
                                               "channels_last", "grad_checkpointing"}
    assert _marked(TrainConfig, IN_ID_UNLESS_DEFAULT) == {"precision", "schedule", "cooldown"}
    assert _marked(PoolConfig, NOT_IN_ID) == {"lazy"}
    assert _marked(PoolConfig, IN_ID_UNLESS_DEFAULT) == {"validation", "shards", "manifest_sha256"}
    assert _marked(CheckpointReference, NOT_IN_ID) == {"path", "cache"}
    train = dataclasses.asdict(TrainConfig(log_every=3, compile=True))
    assert identity_of(TrainConfig, train) == identity_of(TrainConfig, dataclasses.asdict(TrainConfig()))
    kept = identity_of(TrainConfig, dataclasses.asdict(TrainConfig(precision="bf16")))
    assert kept["precision"] == "bf16" and "schedule" not in kept and "log_every" not in kept
    assert identity_of(TrainConfig, {"unknown": 1}) == {"unknown": 1}
    assert _marked(TrainConfig, in_id_as("cpu")) == {"device"}


def test_the_device_defaults_to_auto_and_stays_out_of_the_id_without_renaming_a_stored_run():
    assert TrainConfig().device == "auto"
    ids = {d: identity_of(TrainConfig, dataclasses.asdict(TrainConfig(device=d)))["device"]
           for d in ("auto", "cpu", "cuda")}
    assert ids == {"auto": "cpu", "cpu": "cpu", "cuda": "cpu"}  # hashed as every stored run's "cpu"
    spec = expand(load_grid(ROOT / "grids" / "demo.yaml"))[0]
    stored = {**spec.to_json(), "train": {**spec.to_json()["train"], "device": "cpu"}}  # as stored before "auto"
    assert spec.train.device == "auto" and identity(stored) == identity(spec.to_json())
    with pytest.raises(ValueError, match="device must be one of"):
        TrainConfig(device="gpu")


BORROWING = """name: {name}
data: {{sources: [shapes], shapes_count: 256}}
eval: {{tasks: [shapes_retrieval]}}
train: {{batch_size: 32}}
stages:
{stages}
  - {{name: sweep, reference: {reference}, methods: [drrho], models: [tiny-s], samples_seen: [64]}}
"""
OWN = "  - {name: reference, data: {subset: clean}, methods: [clip], models: [tiny-m], samples_seen: [64]}"


def test_a_reference_borrowed_from_another_grid_keeps_the_ids_and_must_be_done(tmp_path, monkeypatch, capsys):
    """b borrows a's reference (the same spec but for the grid's name): b's runs keep the ids they had when b
    trained that reference itself, the weights come from a's run directory, and `run` refuses until it is done."""
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "a.yaml").write_text(BORROWING.format(name="a", stages=OWN, reference="reference"))
    (tmp_path / "grids" / "b.yaml").write_text(BORROWING.format(name="b", stages="",
                                               reference="{grid: a, stage: reference, features: cached}"))
    (tmp_path / "own.yaml").write_text(BORROWING.format(name="b", stages=OWN,
                                                        reference="{stage: reference, features: cached}"))
    a, b, own = (expand(load_grid(p)) for p in ("grids/a.yaml", "grids/b.yaml", "own.yaml"))
    assert [s.run_id for s in b] == [own[1].run_id]  # the same id as when b trained the reference itself
    ref = b[0].reference
    assert ref.run_id == own[0].run_id != a[0].run_id and ref.requires() == set()
    assert ref.borrowed == f"a/{a[0].run_id}" and ref.label() == ref.borrowed
    assert own[1].reference.label() == own[0].run_id
    theirs = ref.run_dir(Path("results/b"))
    assert theirs.path == Path("results/a/runs") / a[0].run_id  # a's results directory beside b's
    assert ref.run_dir(Path("mine/b")).path == Path("mine/a/runs") / a[0].run_id
    assert refcache.cache_units(b)[0].run_id == refcache.cache_units(own)[0].run_id
    assert main(["run", "grids/b.yaml"]) == 2
    assert (f"the borrowed reference run {theirs.path} is missing: run its grid first, beside this one "
            "(`clipsteer run grids/a.yaml --results results/a`)") in capsys.readouterr().err
    records.finish(theirs.path, {})  # a's reference done, but its weights are not there (as in a fresh clone)
    assert main(["run", "grids/b.yaml"]) == 2
    assert "is done but without its weights" in capsys.readouterr().err
    theirs.final_model.write_bytes(b"")  # now b may run (checked, not launched here)
    from harness import sweep
    sweep.check_borrowed(load_grid("grids/b.yaml"), b, Path("results/b"))


@pytest.mark.parametrize("reference, message", [
    ("{grid: aa, stage: reference}", "reference.grid: no grid file aa.yaml in grids (did you mean 'a'?)"),
    ("{grid: a, pretrained: x, model: tiny-s}", "reference.grid: names the grid of a 'stage'"),
    ("{grid: b, stage: reference}", "names this grid itself"),
])
def test_a_borrowed_reference_is_refused_when_its_grid_is_not_there(tmp_path, monkeypatch, reference, message):
    from harness.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "a.yaml").write_text(BORROWING.format(name="a", stages=OWN, reference="reference"))
    (tmp_path / "grids" / "b.yaml").write_text(BORROWING.format(name="b", stages="", reference=reference))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_grid("grids/b.yaml")
