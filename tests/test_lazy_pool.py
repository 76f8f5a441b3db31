"""A shard set read lazily (data: {shards: ..., lazy: true}): the same rows as the in-memory pool, a training run
bit-identical to one on the in-memory pool, damaged samples replaced and counted, the index cached."""
from __future__ import annotations

import gzip
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from harness import io
from harness.data import lazy, shards
from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.models import build_model
from harness.run.train import TrainConfig, train
from harness.store import records
from methods import get_method

POOL = PoolConfig(sources=("shapes",), shapes_count=256, noise=0.2)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> tuple[Path, object]:
    """The 256-sample shapes pool as 4 shards, written out of index order (a shuffled pool)."""
    root = tmp_path_factory.mktemp("lazy")
    pool = build_pool(POOL)
    shuffled = pool.subset(torch.ones(len(pool), dtype=torch.bool))
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
    for name in ("images", "caption_ids", "labels", "caption_labels", "source", "noisy", "indices"):
        setattr(shuffled, name, getattr(pool, name)[order])
    shards.write_shards(shuffled, root / "set", samples_per_shard=64)
    return root / "set", pool


@pytest.fixture(autouse=True)
def index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(lazy.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_rows_are_the_in_memory_pools_rows(shard_set, index_cache):
    where, pool = shard_set
    cfg = PoolConfig(shards=str(where), lazy=True)
    lazy_pool, memory = build_pool(cfg), build_pool(PoolConfig(shards=str(where)))
    assert len(lazy_pool) == len(memory) == len(pool) and lazy_pool.num_indices == pool.num_indices
    assert torch.equal(lazy_pool.indices, memory.indices)
    pos = torch.tensor([0, 5, 255, 17, 5])
    assert torch.equal(lazy_pool.images_at(pos), memory.images_at(pos))
    tokenizer = build_model("tiny-s").tokenizer
    assert torch.equal(lazy_pool.tokens_at(tokenizer, pos), memory.tokens_at(tokenizer, pos))
    keep = torch.arange(len(pool)) % 3 == 0
    assert torch.equal(lazy_pool.subset(keep).images_at(pos[:2]), memory.subset(keep).images_at(pos[:2]))
    assert len(list((index_cache / "shard-index").glob("*.npz"))) == 4  # one index per shard, by its SHA-256
    held = sum(a.nbytes for p in lazy_pool._parts for a in p.values()) + sum(
        t.numel() * t.element_size() for t in (lazy_pool.indices, lazy_pool._rows)) + \
        lazy_pool._shard.nbytes + lazy_pool._local.nbytes
    assert held == lazy.INDEX_BYTES_PER_SAMPLE * len(lazy_pool)  # what --dry-run quotes per process


@pytest.mark.parametrize("method", ["clip", "filter"])
def test_training_on_the_lazy_pool_is_bit_identical_to_the_in_memory_pool(shard_set, tmp_path, method):
    where, _ = shard_set
    reference = build_model("tiny-s")
    reference.model.eval().requires_grad_(False)
    from harness.run.features import OnlineReference
    finals = []
    for name, cfg in (("memory", PoolConfig(shards=str(where))), ("lazy", PoolConfig(shards=str(where), lazy=True))):
        pool = build_pool(cfg)
        torch.manual_seed(0)
        built = build_model("tiny-s")
        train(built, get_method(method)({}, pool.num_indices), pool, 3 * 32,
              TrainConfig(batch_size=32, warmup_steps=1, log_every=1), 0, tmp_path / name,
              reference=OnlineReference(reference, "cpu"), show_progress=False)
        finals.append(built.model.state_dict())
    for key, value in finals[0].items():
        assert torch.equal(value, finals[1][key]), key


def test_lazy_is_outside_the_run_identity():
    spec = {"data": {"shards": "/x", "manifest_sha256": "0" * 64, "lazy": False}}
    assert records.identity(spec) == records.identity({"data": {**spec["data"], "lazy": True}})


def test_an_undecodable_image_is_replaced_by_the_next_row_and_counted(shard_set, tmp_path, monkeypatch):
    where, _ = shard_set
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in where.iterdir():
        broken.joinpath(f.name).write_bytes(f.read_bytes())
    manifest = io.read_json(broken / shards.MANIFEST)
    first = manifest["shards"][0]
    path = broken / first["name"]
    with tarfile.open(path) as tar:
        member = next(m for m in tar if m.name.endswith(".png"))
        victim = int(member.name.split(".")[0])
    data = bytearray(path.read_bytes())
    data[member.offset_data:member.offset_data + member.size] = b"\0" * member.size  # same size, not a PNG
    path.write_bytes(bytes(data))
    first["sha256"] = io.file_sha256(path)
    io.write_json(broken / shards.MANIFEST, manifest)

    pool = build_pool(PoolConfig(shards=str(broken), lazy=True))
    row = int((pool.indices == victim).nonzero())
    images = pool.images_at(torch.tensor([row, row]))
    assert torch.equal(images[0], images[1]) and torch.equal(images[0], pool.images_at(torch.tensor([row + 1]))[0])
    tokenizer = build_model("tiny-s").tokenizer
    assert torch.equal(pool.tokens_at(tokenizer, torch.tensor([row])), pool.tokens_at(tokenizer, torch.tensor([row + 1])))
    assert pool.stats.reasons["bad_image"] == 1


def test_a_shard_that_does_not_match_its_manifest_is_refused(shard_set, tmp_path):
    where, _ = shard_set
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in where.iterdir():
        broken.joinpath(f.name).write_bytes(f.read_bytes())
    name = io.read_json(broken / shards.MANIFEST)["shards"][1]["name"]
    (broken / name).write_bytes((broken / name).read_bytes()[:-1024])
    with pytest.raises(ValueError, match="does not match the SHA-256 in its manifest"):
        build_pool(PoolConfig(shards=str(broken), lazy=True))


def test_a_shard_that_is_not_a_tar_file_is_refused(shard_set, tmp_path):
    where, _ = shard_set
    broken = tmp_path / "broken"
    shutil.copytree(where, broken)
    manifest = io.read_json(broken / shards.MANIFEST)
    path = broken / manifest["shards"][2]["name"]
    path.write_bytes(gzip.compress(path.read_bytes(), mtime=0))  # a streaming reader reads it, a seeking one cannot
    manifest["shards"][2]["sha256"] = io.file_sha256(path)
    io.write_json(broken / shards.MANIFEST, manifest)
    with pytest.raises(ValueError, match="is not a readable tar file"):
        build_pool(PoolConfig(shards=str(broken), lazy=True))


def test_lazy_needs_shards():
    with pytest.raises(ValueError, match="true only with shards"):
        PoolConfig(lazy=True)
