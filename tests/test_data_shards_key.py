"""A grid's `data: {shards: SPEC}`: validation, run identity, and a sweep trained end to end on a shard set."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from harness import io
from harness.cli import main
from harness.data import shards
from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.data.shardset import ShardSet, absolute_shards, shard_set
from harness.errors import ConfigError
from harness.grid.config import load_grid, pool_config
from harness.grid.spec import expand
from harness.run import refcache
from harness.store import records

SPP = 64  # samples per shard: the 256-sample pool below gives 4 shards
POOL_GRID = """
name: pool
data: {sources: [shapes], shapes_count: 256, noise: 0.2}
eval: {tasks: [shapes_retrieval]}
stages:
  - {name: s, methods: [clip], models: [tiny-s], samples_seen: [128]}
"""
SHARD_GRID = """
name: on-shards
data: {shards: "DATA"}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32, warmup_steps: 1, log_every: 1, checkpoint_minutes: 0}
executor: {kind: debug}
stages:
  - {name: ref, methods: [clip], models: [tiny-s], samples_seen: [64]}
  - name: steered
    reference: {stage: ref, features: cached}
    methods: [drrho]
    models: [tiny-s]
    samples_seen: [64]
"""


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    """A shard set written by `clipsteer make-shards --grid` (4 shards of 64 shapes)."""
    root = tmp_path_factory.mktemp("shardset")
    (root / "pool.yaml").write_text(POOL_GRID)
    assert main(["make-shards", "--grid", str(root / "pool.yaml"), "--out", str(root / "set"),
                 "--samples-per-shard", str(SPP)]) == 0
    return root / "set"


def grid_file(tmp_path: Path, spec: str, text: str = SHARD_GRID) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text.replace("DATA", spec))
    return path


def test_environment_variables_in_the_spec_are_expanded_at_load(shard_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDS_HOME", str(shard_dir.parent))
    grid = load_grid(grid_file(tmp_path, "${SHARDS_HOME}/set"))
    assert grid.data == {"shards": f"{shard_dir.parent}/set"}
    spec = expand(grid)[0]
    assert spec["data"] == {"shards": str(shard_dir), "manifest_sha256": shards.manifest_digest(shard_dir),
                            "lazy": False}


@pytest.mark.parametrize("value", [None, ""])
def test_an_unset_or_empty_variable_exits_2_naming_the_key_and_the_variable(shard_dir, tmp_path, monkeypatch,
                                                                            capsys, value):
    if value is None:
        monkeypatch.delenv("SHARDS_HOME", raising=False)
    else:
        monkeypatch.setenv("SHARDS_HOME", value)
    path = grid_file(tmp_path, "$SHARDS_HOME/set")
    assert main(["run", str(path), "--results", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: data.shards: environment variable SHARDS_HOME is {'not set' if value is None else 'empty'}" in err
    assert not (tmp_path / "out").exists()


def test_a_shard_pool_mixed_with_embedded_fields_is_refused_naming_them(shard_dir, tmp_path):
    text = SHARD_GRID.replace('data: {shards: "DATA"}', 'data: {shards: "DATA", noise: 0.3, seed: 1}')
    with pytest.raises(ConfigError, match=r"data: 'shards' reads the pool from a shard set; noise, seed describe"):
        load_grid(grid_file(tmp_path, str(shard_dir), text))
    staged = SHARD_GRID.replace("methods: [drrho]", "methods: [drrho]\n    data: {subset: clean}")
    with pytest.raises(ConfigError, match=r"stages\[1\]\.data: 'shards' .* subset describe"):
        load_grid(grid_file(tmp_path, str(shard_dir), staged))
    with pytest.raises(ValueError, match="leave noise out"):
        PoolConfig(shards=str(shard_dir), noise=0.3)


def test_a_missing_manifest_or_another_kind_of_set_is_refused_at_expand(shard_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    path = grid_file(tmp_path, str(empty))
    assert main(["run", str(path), "--results", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert (f"{path}: data.shards: cannot use the shard set '{empty}': its manifest {empty}/manifest.json "
            "is missing") in err
    features = tmp_path / "features"
    shards.write_feature_shards(torch.zeros(4, 2), torch.zeros(4, 2), range(4), features)
    with pytest.raises(ConfigError, match="hold 'features', not 'pool'"):
        expand(load_grid(grid_file(tmp_path, str(features))))
    assert not (tmp_path / "out").exists()


def test_the_run_id_names_the_shard_sets_content(shard_dir, tmp_path):
    ids = {spec["run_id"] for spec in expand(load_grid(grid_file(tmp_path, str(shard_dir))))}
    by_manifest = {spec["run_id"] for spec in expand(load_grid(grid_file(tmp_path, str(shard_dir / "manifest.json"))))}
    assert by_manifest.isdisjoint(ids)  # another spec, other ids (the spec is part of the identity)...
    copy = Path(shutil.copytree(shard_dir, tmp_path / "copy"))
    moved = {spec["run_id"] for spec in expand(load_grid(grid_file(tmp_path, str(copy))))}
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64  # ... and other content (a shard's checksum) too
    (copy / "manifest.json").write_text(json.dumps(manifest))
    changed = {spec["run_id"] for spec in expand(load_grid(grid_file(tmp_path, str(copy))))}
    assert changed.isdisjoint(moved)


def test_a_grid_may_pin_the_manifest_digest(shard_dir, tmp_path):
    digest = shards.manifest_digest(shard_dir)
    pinned = SHARD_GRID.replace('data: {shards: "DATA"}', f'data: {{shards: "DATA", manifest_sha256: "{digest}"}}')
    assert expand(load_grid(grid_file(tmp_path, str(shard_dir), pinned)))[0]["data"]["manifest_sha256"] == digest
    wrong = pinned.replace(digest, "f" * 64)
    with pytest.raises(ConfigError, match="data.manifest_sha256: the grid pins f{64}, but the manifest"):
        expand(load_grid(grid_file(tmp_path, str(shard_dir), wrong)))


def test_a_shard_spec_names_a_set_a_manifest_or_some_shards_locally_or_by_url(shard_dir, tmp_path, monkeypatch):
    whole = shard_set(str(shard_dir))
    assert whole == shard_set(str(shard_dir / "manifest.json"))
    assert (whole.count, whole.sha256) == (256, shards.manifest_digest(shard_dir))
    two = f"{shard_dir}/shard-{{000000..000001}}.tar"
    assert shard_set(two).count == 2 * SPP
    by_url = shard_set(f"file://{two}")
    assert by_url == ShardSet(f"file://{shard_dir}/manifest.json", whole.sha256, 2 * SPP, 32)
    monkeypatch.chdir(shard_dir.parent)
    assert absolute_shards("set/a-{0..1}.tar :: /abs/b.tar::https://host/c.tar") == \
        f"{shard_dir.parent}/set/a-{{0..1}}.tar::/abs/b.tar::https://host/c.tar"
    pool = build_pool(pool_config({"shards": two}))
    assert len(pool) == 2 * SPP and pool.num_indices == 256 and pool.config.shards == two


def test_a_shard_pool_refuses_another_split_a_changed_manifest_and_a_damaged_shard(shard_dir, tmp_path):
    copy = Path(shutil.copytree(shard_dir, tmp_path / "copy"))
    cfg = PoolConfig(shards=str(copy), manifest_sha256=shards.manifest_digest(copy))
    with pytest.raises(ValueError, match="has no 'test' split"):
        build_pool(cfg, split="test")
    with pytest.raises(ValueError, match="changed since the grid was expanded"):
        build_pool(PoolConfig(shards=str(copy), manifest_sha256="0" * 64))
    tar = copy / "shard-000002.tar"
    data = bytearray(tar.read_bytes())
    data[2000] ^= 0xFF
    tar.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"is damaged: .*checksum"):
        build_pool(cfg)


def test_pools_without_shards_keep_their_run_and_cache_ids():
    specs = expand(load_grid("grids/demo.yaml"))
    assert sorted(s["run_id"] for s in specs)[0] == "reference-clip-tiny-m-n30720-s0-7a93ba6a08"
    for spec in specs:
        assert spec["data"]["shards"] is None and spec["data"]["manifest_sha256"] is None
        older = {**spec, "data": {k: v for k, v in spec["data"].items() if k not in ("shards", "manifest_sha256")}}
        assert io.digest(records.identity(older)) == io.digest(records.identity(spec))
        assert refcache.data_identity(older["data"]) == refcache.data_identity(spec["data"])


def test_a_sweep_trains_on_a_shard_set_end_to_end(shard_dir, tmp_path, monkeypatch, capsys):
    from harness import sweep

    monkeypatch.setenv("SHARDS_HOME", str(shard_dir.parent))
    grid = load_grid(grid_file(tmp_path, "${SHARDS_HOME}/set"))
    results = tmp_path / "results"
    outcome = sweep.run(grid, results, grid.executor)
    assert not outcome.launch.failed, outcome.launch.failed
    specs = expand(grid)
    steered = next(s for s in specs if s["method"]["name"] == "drrho")
    result = io.read_json(records.run_dir(results, steered["run_id"]) / "result.json")
    assert result["train"]["pool_size"] == 256 and result["samples_seen"] == 64
    assert "no held-out test images" in result["reference"]["reducible_loss"]["skipped"]
    unit = refcache.cache_units(specs)[0]
    record = io.read_json(records.run_dir(results, unit["run_id"]) / "result.json")
    assert record["pairs"] == 256 and record["data"] == steered["data"]
    capsys.readouterr()
    assert main(["run", str(grid.source), "--results", str(results), "--dry-run"]) == 0
    assert "2 runs, 2 done, 0 to launch" in capsys.readouterr().out
