"""Webdataset shards of a pool and of reference features: write, read back, skip damaged samples; and the
loading benchmark's batch stream over them (benchmarks.batch_stream)."""
from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import http.server
import io as _io
import itertools
import json
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.batch_stream import _TokenCache, iterate_batches
from harness.data import shards
from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.data.shards import write as shards_write
from harness.data.shards.decode import load_npy

SPP = 64  # samples per shard: 256 samples -> 4 shards


@pytest.fixture(scope="module")
def pool():
    return build_pool(PoolConfig(sources=("shapes",), shapes_count=256, noise=0.25))


@pytest.fixture(scope="module")
def shard_dir(pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool-shards")
    shards.write_shards(pool, out, SPP)
    return out


def _copy(shard_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shard_dir, tmp_path / "shards"))


def _per_sample_captions(pool) -> list[str]:
    return [pool.captions[i] for i in pool.caption_ids.tolist()]


def assert_same_pool(got, want) -> None:
    assert torch.equal(got.indices, want.indices)
    assert got.images.dtype == torch.uint8 and torch.equal(got.images, want.images)
    assert _per_sample_captions(got) == _per_sample_captions(want)
    assert len(set(got.captions)) == len(got.captions)
    for name in ("labels", "caption_labels", "noisy"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert [got.source_names[i] for i in got.source.tolist()] == [want.source_names[i] for i in want.source.tolist()]


def _tokenize(captions: list[str]) -> torch.Tensor:
    """A stand-in tokenizer: a caption's first 48 UTF-8 bytes as ids, zero-padded."""
    return torch.tensor([list(c.encode()[:48].ljust(48, b"\0")) for c in captions], dtype=torch.int64)


def _npy_bytes(array: np.ndarray, version=(1, 0), allow_pickle=False) -> bytes:
    buf = _io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=allow_pickle)
    return buf.getvalue()


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _write_members(path: Path, members, fmt=tarfile.USTAR_FORMAT) -> None:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, _io.BytesIO(data))


# --- round trip ------------------------------------------------------------------------------------

def test_round_trip_equals_the_original_pool(pool, shard_dir):
    assert sorted(p.name for p in shard_dir.iterdir()) == [
        "manifest.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shard-000003.tar"]
    assert int(pool.noisy.sum()) == 64 and bool((pool.labels != pool.caption_labels).any())
    stats = shards.ReadStats()
    got = shards.read_pool(shard_dir, stats=stats)
    assert_same_pool(got, pool)
    assert got.classnames == pool.classnames and got.source_names == pool.source_names
    assert got.num_indices == pool.num_indices and got.config == pool.config
    assert (stats.read, stats.skipped, stats.shards) == (256, 0, 4)
    # the same through a brace spec, an explicit list of file:// URLs, and the manifest path
    spec = shards.shard_spec(shard_dir)
    assert spec == str(shard_dir / "shard-{000000..000003}.tar")
    assert_same_pool(shards.read_pool(spec, verify=True), pool)
    urls = [(shard_dir / f"shard-{i:06d}.tar").as_uri() for i in range(4)]
    assert_same_pool(shards.read_pool(urls), pool)
    assert_same_pool(shards.read_pool(shard_dir / "manifest.json"), pool)
    # shards given out of order still give the pool in index order
    assert_same_pool(shards.read_pool(urls[::-1]), pool)


def test_shard_members_follow_the_webdataset_layout(pool, shard_dir):
    members = _members(shard_dir / "shard-000001.tar")
    assert [n for n, _ in members[:3]] == ["000000064.json", "000000064.png", "000000064.txt"]
    assert len(members) == 3 * SPP
    meta = json.loads(members[0][1])
    assert meta == {"index": 64, "label": int(pool.labels[64]), "caption_label": int(pool.caption_labels[64]),
                    "noisy": bool(pool.noisy[64]), "source": "shapes"}
    assert members[2][1].decode() == _per_sample_captions(pool)[64]
    image = np.asarray(Image.open(_io.BytesIO(members[1][1])))
    assert image.shape == (32, 32, 3) and np.array_equal(image, pool.images[64].permute(1, 2, 0).numpy())
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["count"] == 256 and manifest["samples_per_shard"] == SPP and manifest["image_size"] == 32
    assert manifest["num_indices"] == 256 and manifest["source_names"] == ["shapes"]
    for entry in manifest["shards"]:
        data = (shard_dir / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
        assert entry["count"] == SPP


def test_clean_subset_keeps_its_sparse_indices_and_num_indices(tmp_path):
    clean = build_pool(PoolConfig(sources=("shapes",), shapes_count=256, noise=0.25, subset="clean"))
    assert len(clean) == 192 and clean.num_indices == 256
    shards.write_shards(clean, tmp_path, 50)
    got = shards.read_pool(tmp_path)
    assert_same_pool(got, clean)
    assert got.num_indices == 256 and got.config == clean.config
    # a part of the set still has the full set's num_indices, and only its own samples
    part = shards.read_pool(str(tmp_path / "shard-{000001..000002}.tar"))
    assert part.num_indices == 256
    assert torch.equal(part.indices, clean.indices[50:150])


def test_without_a_manifest_the_pool_is_inferred_from_samples(pool, shard_dir, tmp_path):
    d = _copy(shard_dir, tmp_path)
    (d / "manifest.json").unlink()
    got = shards.read_pool(str(d / "shard-{000000..000001}.tar"))
    assert torch.equal(got.indices, torch.arange(128))
    assert got.num_indices == 128 and got.classnames == [] and got.source_names == ("shapes",)
    assert got.config is None
    with pytest.raises(ValueError, match="needs a manifest"):
        shards.read_pool(str(d / "shard-000000.tar"), verify=True)


# --- writing ---------------------------------------------------------------------------------------

def test_shard_bytes_are_deterministic(pool, shard_dir, tmp_path):
    shards.write_shards(pool, tmp_path / "again", SPP)
    for name in ("shard-000000.tar", "shard-000003.tar", "manifest.json"):
        assert (tmp_path / "again" / name).read_bytes() == (shard_dir / name).read_bytes(), name
    with tarfile.open(shard_dir / "shard-000002.tar") as tar:
        infos = tar.getmembers()
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {(0, 0, 0, "", "", 0o644)}
    # the manifest's digest names the content
    assert shards.manifest_digest(shard_dir) == shards.manifest_digest(tmp_path / "again" / "manifest.json")


def test_rewrite_removes_stale_shards_and_a_failed_write_leaves_no_manifest(pool, tmp_path, monkeypatch):
    shards.write_shards(pool, tmp_path, 50)
    assert len(list(tmp_path.glob("shard-*.tar"))) == 6
    (tmp_path / "shard-other.tar").write_bytes(b"not ours")
    paths = shards.write_shards(pool, tmp_path, 128)
    assert sorted(p.name for p in tmp_path.glob("shard-*.tar")) == [
        "shard-000000.tar", "shard-000001.tar", "shard-other.tar"]
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar"]
    assert json.loads((tmp_path / "manifest.json").read_text())["pattern"] == "shard-{000000..000001}.tar"

    calls = itertools.count()
    real_png = shards_write._png

    def failing_png(image):
        if next(calls) == 200:
            raise RuntimeError("disk full")
        return real_png(image)

    monkeypatch.setattr(shards_write, "_png", failing_png)
    with pytest.raises(RuntimeError, match="disk full"):
        shards.write_shards(pool, tmp_path, 128)
    assert not (tmp_path / "manifest.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(FileNotFoundError, match="no shard manifest"):
        shards.read_pool(tmp_path)


def test_write_refuses_bad_arguments(pool, tmp_path):
    with pytest.raises(ValueError, match="samples_per_shard"):
        shards.write_shards(pool, tmp_path, 0)
    with pytest.raises(ValueError, match="prefix"):
        shards.write_shards(pool, tmp_path, 10, prefix="a/b")


# --- URL specs -------------------------------------------------------------------------------------

EXPANSIONS = [
    ("shard-{000000..000003}.tar", ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shard-000003.tar"]),
    ("s{0..2}.tar", ["s0.tar", "s1.tar", "s2.tar"]),
    ("s{8..11}", ["s8", "s9", "s10", "s11"]),
    ("s{09..11}", ["s09", "s10", "s11"]),
    ("s{0..010..5}", ["s000", "s005", "s010"]),
    ("s{3..1}", ["s3", "s2", "s1"]),
    ("{a,b}/x.tar", ["a/x.tar", "b/x.tar"]),
    ("{a..c}", ["a", "b", "c"]),
    ("{a,b{1,2}}", ["a", "b1", "b2"]),
    ("x{1..2}y{a,b}", ["x1ya", "x1yb", "x2ya", "x2yb"]),
    ("a{,b}", ["a", "ab"]),
    ("keep{x}.tar", ["keep{x}.tar"]),
    ("{{1..2}}", ["{1}", "{2}"]),
    ("https://host/d/shard-{00..01}.tar", ["https://host/d/shard-00.tar", "https://host/d/shard-01.tar"]),
    ("a-{0..1}.tar::b.tar :: c-{x,y}.tar", ["a-0.tar", "a-1.tar", "b.tar", "c-x.tar", "c-y.tar"]),
    ("plain.tar", ["plain.tar"]),
]


@pytest.mark.parametrize("spec,want", EXPANSIONS)
def test_expand_urls(spec, want):
    assert shards.expand_urls(spec) == want


def test_expand_urls_lists_paths_and_errors():
    assert shards.expand_urls(["a{1..2}", Path("b{1..2}")]) == ["a1", "a2", "b{1..2}"]
    with pytest.raises(ValueError, match="unbalanced"):
        shards.expand_urls("shard-{0..3.tar")


def test_expand_urls_agrees_with_braceexpand():
    braceexpand = pytest.importorskip("braceexpand").braceexpand
    for spec, _ in EXPANSIONS:
        if "::" not in spec:
            assert shards.expand_urls(spec) == list(braceexpand(spec)), spec


# --- shuffling and resampling ----------------------------------------------------------------------

def _order(shard_dir, **kwargs) -> list[int]:
    return [s.index for s in shards.iterate_samples(shards.shard_spec(shard_dir), **kwargs)]


def test_unshuffled_stream_is_index_order_with_samples_decoded(pool, shard_dir):
    stream = shards.iterate_samples(shards.shard_spec(shard_dir))
    samples = list(stream)
    assert [s.index for s in samples] == list(range(256))
    s = samples[77]
    assert torch.equal(s.image, pool.images[77]) and s.caption == _per_sample_captions(pool)[77]
    assert (s.label, s.caption_label, s.noisy) == (int(pool.labels[77]), int(pool.caption_labels[77]),
                                                   bool(pool.noisy[77]))
    assert stream.stats.read == 256 and stream.stats.skipped == 0


def test_shuffle_buffer_is_seeded_and_a_permutation(shard_dir):
    a = _order(shard_dir, shuffle_buffer=100, seed=1)
    assert sorted(a) == list(range(256)) and a != list(range(256))
    assert a == _order(shard_dir, shuffle_buffer=100, seed=1)
    assert a != _order(shard_dir, shuffle_buffer=100, seed=2)
    assert a != _order(shard_dir, shuffle_buffer=100, seed=1, epoch=1)
    # shard order alone: shards come whole, in a permuted order drawn from (seed, epoch)
    block_orders = set()
    for epoch in range(4):
        by_shard = _order(shard_dir, seed=1, epoch=epoch, shuffle_shards=True)
        blocks = [by_shard[i] // SPP for i in range(0, 256, SPP)]
        assert sorted(blocks) == [0, 1, 2, 3]
        assert all(by_shard[i:i + SPP] == list(range(b * SPP, (b + 1) * SPP))
                   for i, b in zip(range(0, 256, SPP), blocks))
        assert by_shard == _order(shard_dir, seed=1, epoch=epoch, shuffle_shards=True)
        block_orders.add(tuple(blocks))
    assert len(block_orders) > 1


def test_resampling_draws_shards_with_replacement_forever(shard_dir):
    def draw(seed):
        stream = shards.iterate_samples(shards.shard_spec(shard_dir), resample=True, seed=seed, shuffle_buffer=32)
        got = [s.index for s in itertools.islice(stream, 12 * SPP)]
        stream.close()
        return got, stream.stats

    got, stats = draw(5)
    assert len(got) == 12 * SPP and set(got) <= set(range(256))
    assert stats.shards >= 12
    counts = np.bincount(np.array(got) // SPP, minlength=4)
    assert counts.sum() == 12 * SPP and counts.max() > 3 * SPP  # with replacement: some shard drawn more than 3 times
    assert draw(5)[0] == got and draw(6)[0] != got


def test_resampling_stops_when_no_shard_gives_a_sample(tmp_path):
    for i in range(3):
        (tmp_path / f"bad-{i}.tar").write_bytes(b"garbage" * 100)
    stream = shards.iterate_samples(str(tmp_path / "bad-{0..2}.tar"), resample=True)
    got = []
    worker = threading.Thread(target=lambda: got.append(list(stream)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "resampling broken shards never ended"
    assert got == [[]] and stream.stats.shard_errors["bad_header"] >= 3


# --- damaged data ----------------------------------------------------------------------------------

def _damaged_copy(shard_dir: Path, tmp_path: Path) -> Path:
    """A copy of the shard set with damaged samples in shard 1, shard 2 cut short and shard 3 not a tar."""
    d = _copy(shard_dir, tmp_path)
    # shard 1: samples 70 (PNG garbage), 71 (PNG cut short), 72 (no json), 73 (invalid json),
    # 74 (caption not UTF-8), 75 (json without index), 76 (label out of range)
    members = []
    for name, data in _members(d / "shard-000001.tar"):
        key, ext = name.split(".")
        index = int(key)
        if (index, ext) == (70, "png"):
            data = b"\x89PNG but not really"
        elif (index, ext) == (71, "png"):
            data = data[:len(data) // 2]
        elif (index, ext) == (72, "json"):
            continue
        elif (index, ext) == (73, "json"):
            data = b"{not json"
        elif (index, ext) == (74, "txt"):
            data = b"\xff\xfe\xfa"
        elif (index, ext) == (75, "json"):
            data = json.dumps({"label": 1}).encode()
        elif (index, ext) == (76, "json"):
            data = json.dumps({**json.loads(data), "label": 99}).encode()
        members.append((name, data))
    _write_members(d / "shard-000001.tar", members)
    # shard 2: truncated in the middle of the image of its 21st sample (index 148)
    shard2 = d / "shard-000002.tar"
    with tarfile.open(shard2) as tar:
        png = next(m for m in tar.getmembers() if m.name == "000000148.png")
    shard2.write_bytes(shard2.read_bytes()[:png.offset_data + png.size // 2])
    # shard 3: not a tar at all
    (d / "shard-000003.tar").write_bytes(bytes(range(256)) * 40)
    return d


def test_corrupt_samples_are_skipped_and_counted(pool, shard_dir, tmp_path):
    d = _damaged_copy(shard_dir, tmp_path)
    stats = shards.ReadStats()
    got = shards.read_pool(d, stats=stats)
    bad = {70, 71, 72, 73, 74, 75, 76}
    want = set(range(148)) - bad
    assert set(got.indices.tolist()) == want
    assert_same_pool(got, pool.subset(torch.isin(pool.indices, torch.tensor(sorted(want)))))
    assert dict(stats.reasons) == {"bad_image": 2, "missing_json": 1, "bad_json": 2, "bad_text": 1, "bad_label": 1,
                                   "truncated": 1, "lost": (SPP - 21) + SPP}
    assert stats.read == len(want) and stats.read + stats.skipped == 256
    assert dict(stats.shard_errors) == {"truncated": 1, "bad_header": 1}
    assert any("000000070" in e and "bad_image" in e for e in stats.examples)
    assert "skipped 115" in str(stats) and stats.as_dict()["reasons"]["lost"] == 107


def test_truncation_between_members_is_detected(pool, shard_dir, tmp_path):
    """tarfile ends silently when a cut falls on a member boundary; the manifest count and the
    missing end-of-archive block still tell."""
    d = _copy(shard_dir, tmp_path)
    shard0 = d / "shard-000000.tar"
    with tarfile.open(shard0) as tar:
        first = next(m for m in tar.getmembers() if m.name == "000000030.json")
    shard0.write_bytes(shard0.read_bytes()[:first.offset])
    with tarfile.open(shard0) as tar:  # what the standard library makes of it: no complaint
        assert len(tar.getmembers()) == 90
    stats = shards.ReadStats()
    got = shards.read_pool(str(d / "shard-000000.tar"), stats=stats)
    assert got.indices.tolist() == list(range(30))  # sample 29 is whole: kept
    assert dict(stats.reasons) == {"lost": SPP - 30} and dict(stats.shard_errors) == {"truncated": 1}
    # with no manifest, only the shard error tells
    (d / "manifest.json").unlink()
    stream = shards.iterate_samples(str(shard0))
    assert len(list(stream)) == 30 and stream.stats.shard_errors["truncated"] == 1 and stream.stats.skipped == 0


def test_verify_skips_a_shard_whose_bytes_changed(pool, shard_dir, tmp_path):
    d = _copy(shard_dir, tmp_path)
    shard1 = d / "shard-000001.tar"
    with tarfile.open(shard1) as tar:
        txt = next(m for m in tar.getmembers() if m.name == "000000100.txt")
    data = bytearray(shard1.read_bytes())
    data[txt.offset_data] ^= 0x01  # one caption letter: still a valid tar
    shard1.write_bytes(bytes(data))
    unverified = shards.read_pool(d)
    assert len(unverified) == 256 and _per_sample_captions(unverified)[100] != _per_sample_captions(pool)[100]
    stats = shards.ReadStats()
    verified = shards.read_pool(d, verify=True, stats=stats)
    assert set(verified.indices.tolist()) == set(range(256)) - set(range(64, 128))
    assert dict(stats.shard_errors) == {"checksum": 1} and dict(stats.reasons) == {"lost": SPP}


def test_duplicate_index_and_wrong_image_size_are_skipped(pool, shard_dir, tmp_path):
    d = _copy(shard_dir, tmp_path)
    members = _members(d / "shard-000001.tar")
    small = _io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(small, format="PNG")
    members = [(n, small.getvalue() if n == "000000065.png" else b) for n, b in members]
    _write_members(d / "shard-000001.tar", members)
    stats = shards.ReadStats()
    got = shards.read_pool([str(d / "shard-000000.tar"), str(d / "shard-000001.tar"), str(d / "shard-000000.tar")],
                           stats=stats)
    assert got.indices.tolist() == [i for i in range(128) if i != 65]
    assert dict(stats.reasons) == {"bad_size": 1, "duplicate_index": SPP}
    assert stats.read == 127


def test_reader_understands_pax_gnu_long_names_and_gzip(pool, tmp_path):
    image = _io.BytesIO()
    Image.fromarray(pool.images[3].permute(1, 2, 0).numpy()).save(image, format="PNG")
    folder = "deep/" + "d" * 120
    meta = json.dumps({"index": 3, "label": 0, "noisy": False, "source": "x"}).encode()
    members = [(f"{folder}/key3.json", meta), (f"{folder}/key3.png", image.getvalue()),
               (f"{folder}/key3.txt", "ünïcode caption".encode())]
    for i, fmt in enumerate((tarfile.PAX_FORMAT, tarfile.GNU_FORMAT)):
        _write_members(tmp_path / f"s{i}.tar", members, fmt)
    raw = (tmp_path / "s0.tar").read_bytes()
    (tmp_path / "s2.tar.gz").write_bytes(gzip.compress(raw))
    for name in ("s0.tar", "s1.tar", "s2.tar.gz"):
        stream = shards.iterate_samples(str(tmp_path / name))
        samples = list(stream)
        assert len(samples) == 1 and stream.stats.skipped == 0, name
        s = samples[0]
        assert s.key == f"{folder}/key3" and s.index == 3 and s.caption == "ünïcode caption"
        assert torch.equal(s.image, pool.images[3]) and s.caption_label == 0 and s.source == "x"
    # a gzip stream cut short
    (tmp_path / "s3.tar.gz").write_bytes(gzip.compress(raw)[:200])
    stream = shards.iterate_samples(str(tmp_path / "s3.tar.gz"))
    assert list(stream) == [] and sum(stream.stats.shard_errors.values()) == 1


def test_missing_shard_is_counted_not_raised(pool, shard_dir, tmp_path):
    d = _copy(shard_dir, tmp_path)
    (d / "shard-000002.tar").unlink()
    stats = shards.ReadStats()
    got = shards.read_pool(d, stats=stats)
    assert len(got) == 192 and dict(stats.shard_errors) == {"unreadable": 1} and dict(stats.reasons) == {"lost": SPP}


# --- images as npy arrays --------------------------------------------------------------------------

def test_npy_images_round_trip_and_damaged_arrays_are_skipped(pool, tmp_path):
    paths = shards.write_shards(pool, tmp_path / "npy", SPP, image_format="npy")
    assert [name for name, _ in _members(paths[0])][:3] == ["000000000.json", "000000000.npy", "000000000.txt"]
    assert_same_pool(shards.read_pool(tmp_path / "npy"), pool)
    again = shards.write_shards(pool, tmp_path / "again", SPP, image_format="npy")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    members = []
    for name, data in _members(paths[1]):
        data = {"000000065.npy": b"\x93NUMPY not really",
                "000000066.npy": _npy_bytes(np.zeros((3, 32, 32), np.float32)),
                "000000067.npy": _npy_bytes(np.zeros((32, 32, 3), np.uint8)),
                "000000068.npy": data[:-10],  # cut in the array
                "000000069.npy": data[:100],  # cut in the header
                "000000070.npy": _npy_bytes(np.zeros((3, 16, 16), np.uint8))}.get(name, data)
        members.append((name, data))
    _write_members(paths[1], members)
    stats = shards.ReadStats()
    got = shards.read_pool(tmp_path / "npy", stats=stats)
    assert set(got.indices.tolist()) == set(range(256)) - set(range(65, 71))
    assert dict(stats.reasons) == {"bad_image": 5, "bad_size": 1}
    with pytest.raises(ValueError, match="image_format"):
        shards.write_shards(pool, tmp_path / "x", image_format="jpeg")


@pytest.mark.parametrize("array", [np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
                                   np.asfortranarray(np.arange(12.0).reshape(3, 4)), np.array(1.5, np.float32),
                                   np.zeros(0, np.int64), np.arange(6, dtype=">i4")])
def test_load_npy_is_np_load(array):
    for version in ((1, 0), (2, 0)):
        data = _npy_bytes(array, version)
        got, want = load_npy(data), np.load(_io.BytesIO(data))
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
        assert got.flags.writeable
    for bad in (data[:len(data) - max(array.nbytes // 2, 1)], _npy_bytes(np.array([None]), allow_pickle=True)):
        with pytest.raises(ValueError):
            load_npy(bad)


# --- training batches (benchmarks.batch_stream) ----------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_batches_carry_each_sample_once_with_its_index_image_and_token_ids(pool, shard_dir, workers):
    stream = iterate_batches(shard_dir, 50, _tokenize, num_workers=workers)
    batches = list(stream)
    if workers:  # worker 0 reads shards 0 and 2, worker 1 shards 1 and 3; batches come in turn
        assert [len(b.index) for b in batches] == [50, 50, 50, 50, 28, 28]
        assert batches[1].index.tolist() == list(range(64, 114))
    else:
        assert [len(b.index) for b in batches] == [50] * 5 + [6]
    index = torch.cat([b.index for b in batches])
    assert sorted(index.tolist()) == list(range(256)) and index.dtype == torch.int64
    captions = _per_sample_captions(pool)
    for b in batches:
        assert b.image.dtype == torch.uint8 and b.image.is_contiguous()
        assert torch.equal(b.image, pool.images[b.index])
        assert torch.equal(b.text, _tokenize([captions[i] for i in b.index.tolist()]))
    assert (stream.stats.read, stream.stats.skipped, stream.stats.shards) == (256, 0, 4)


def test_batches_in_this_process_are_the_sample_stream_in_order(shard_dir):
    kwargs = {"shuffle_buffer": 40, "seed": 1, "resample": True}
    stream = shards.iterate_samples(shard_dir, **kwargs)
    want = [s.index for s in itertools.islice(stream, 5 * 32)]
    batches = iterate_batches(shard_dir, 32, _tokenize, **kwargs)
    assert torch.cat([b.index for b in itertools.islice(batches, 5)]).tolist() == want
    stream.close()
    batches.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_skip_and_count_damaged_samples_as_one_reader_does(shard_dir, tmp_path, workers):
    d = _damaged_copy(shard_dir, tmp_path)
    one = shards.iterate_samples(d)
    want = [s.index for s in one]
    stream = iterate_batches(d, 16, _tokenize, num_workers=workers)
    got = torch.cat([b.index for b in stream]).tolist()
    assert sorted(got) == sorted(want)
    have, expected = stream.stats.as_dict(), one.stats.as_dict()
    assert sorted(have.pop("examples")) == sorted(expected.pop("examples"))
    assert have == expected and expected["skipped"] == 115


def test_resampled_batches_from_workers_are_seeded(shard_dir):
    def take(seed):
        stream = iterate_batches(shard_dir, 32, _tokenize, shuffle_buffer=40, seed=seed, resample=True,
                                 num_workers=2)
        got = [b.index.tolist() for b in itertools.islice(stream, 12)]
        stream.close()
        return got, stream.stats

    got, stats = take(3)
    assert got == take(3)[0] and got != take(4)[0]
    flat = [i for batch in got for i in batch]
    assert len(flat) == 12 * 32 and set(flat) <= set(range(256)) and len(set(flat)) > 200
    assert stats.read >= len(flat) and stats.skipped == 0 and stats.shards >= 2


def test_token_cache_tokenizes_each_distinct_caption_once():
    calls = []

    def tokenizer(captions):
        calls.append(list(captions))
        return _tokenize(captions)

    cache = _TokenCache(tokenizer, capacity=4)
    assert torch.equal(cache(["a", "b", "a"]), _tokenize(["a", "b", "a"]))
    assert torch.equal(cache(["b", "c"]), _tokenize(["b", "c"]))
    assert calls == [["a", "b"], ["c"]]
    assert torch.equal(cache(["d", "a"]), _tokenize(["d", "a"]))  # 3 held + 2 > 4: it starts afresh
    assert calls[-1] == ["d", "a"] and set(cache.rows) == {"d", "a"}


def test_read_stats_combine():
    a, b = shards.ReadStats(), shards.ReadStats()
    a.read, a.shards = 5, 1
    a.skip("bad_image", "a#1")
    b.read, b.shards = 7, 2
    b.skip("lost", "b", 3)
    b.shard_errors["truncated"] += 1
    total = shards.ReadStats.combine([a, b])
    assert (total.read, total.skipped, total.shards) == (12, 4, 3)
    assert dict(total.reasons) == {"bad_image": 1, "lost": 3} and dict(total.shard_errors) == {"truncated": 1}
    assert total.examples == ["a#1: bad_image", "b: lost (x3)"]


def test_batch_arguments_are_checked(shard_dir):
    for kwargs in ({"batch_size": 0}, {"batch_size": True}, {"batch_size": 8, "num_workers": -1},
                   {"batch_size": 8, "shuffle_buffer": -1}):
        with pytest.raises(ValueError):
            iterate_batches(shard_dir, tokenizer=_tokenize, **kwargs)


# --- over HTTP -------------------------------------------------------------------------------------

def test_read_over_http(pool, shard_dir):
    handler = functools.partial(_QuietHandler, directory=str(shard_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        stats = shards.ReadStats()
        got = shards.read_pool(f"{base}/shard-{{000000..000003}}.tar", verify=True, stats=stats)
        assert_same_pool(got, pool)
        assert got.config == pool.config and stats.skipped == 0
        assert_same_pool(shards.read_pool(f"{base}/manifest.json"), pool)
        stats = shards.ReadStats()
        part = shards.read_pool(f"{base}/shard-{{000003..000004}}.tar", stats=stats)  # 4 does not exist
        assert torch.equal(part.indices, torch.arange(192, 256)) and stats.shard_errors["unreadable"] == 1
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# --- feature shards --------------------------------------------------------------------------------

def test_feature_shards_round_trip_into_a_refcache_table(tmp_path):
    gen = torch.Generator().manual_seed(0)
    indices = torch.randperm(300, generator=gen)[:200]  # sparse, unordered
    image, text = torch.randn(200, 16, generator=gen), torch.randn(200, 8, generator=gen)
    paths = shards.write_feature_shards(image, text, indices, tmp_path / "f", 64, logit_scale=torch.tensor(4.6),
                                        num_indices=320)
    assert [p.name for p in paths] == [f"features-{i:06d}.tar" for i in range(4)]
    stats = shards.ReadStats()
    table = shards.read_feature_shards(tmp_path / "f", stats=stats)
    assert table.num_indices == 320 and table.image.shape == (320, 16) and table.text.shape == (320, 8)
    assert torch.equal(table.image[indices], image) and torch.equal(table.text[indices], text)
    assert table.present.sum() == 200 and bool(table.present[indices].all())
    assert not table.image[~table.present].any() and not table.text[~table.present].any()
    assert stats.read == 200 and stats.skipped == 0
    cache = table.cache_dict()
    assert set(cache) == {"image", "text", "logit_scale"} and float(cache["logit_scale"]) == pytest.approx(4.6)
    # deterministic bytes, and float16 kept as float16
    shards.write_feature_shards(image, text, indices, tmp_path / "g", 64, logit_scale=torch.tensor(4.6),
                                num_indices=320)
    assert (tmp_path / "g" / "features-000002.tar").read_bytes() == paths[2].read_bytes()
    shards.write_feature_shards(image.half(), text.half(), indices, tmp_path / "h", 500)
    half = shards.read_feature_shards(str(tmp_path / "h" / "features-000000.tar"))
    assert half.image.dtype == torch.float16 and torch.equal(half.image[indices], image.half())
    assert half.num_indices == int(indices.max()) + 1 and half.logit_scale is None
    with pytest.raises(ValueError, match="logit_scale"):
        half.cache_dict()
    with pytest.raises(ValueError, match="not 'pool'"):
        shards.read_pool(tmp_path / "f")


def test_damaged_feature_samples_are_skipped(tmp_path):
    indices = torch.arange(10)
    image, text = torch.randn(10, 4), torch.randn(10, 4)
    (path,) = shards.write_feature_shards(image, text, indices, tmp_path, 100)
    members = []
    for name, data in _members(path):
        if name == "000000002.image.npy":
            data = b"not an array"
        elif name == "000000003.text.npy":
            continue
        elif name == "000000004.image.npy":
            buf = _io.BytesIO()
            np.save(buf, np.zeros(5, dtype=np.float32))
            data = buf.getvalue()
        members.append((name, data))
    _write_members(path, members)
    stats = shards.ReadStats()
    table = shards.read_feature_shards(tmp_path, stats=stats)
    assert table.present.tolist() == [i not in (2, 3, 4) for i in range(10)]
    assert torch.equal(table.image[table.present], image[table.present])
    assert dict(stats.reasons) == {"bad_array": 1, "missing_text": 1, "bad_shape": 1}


def test_feature_write_refuses_misaligned_inputs(tmp_path):
    with pytest.raises(ValueError, match="len\\(indices\\)"):
        shards.write_feature_shards(torch.zeros(3, 4), torch.zeros(2, 4), [0, 1, 2], tmp_path)
    with pytest.raises(ValueError, match="distinct"):
        shards.write_feature_shards(torch.zeros(2, 4), torch.zeros(2, 4), [1, 1], tmp_path)
    with pytest.raises(ValueError, match="num_indices"):
        shards.write_feature_shards(torch.zeros(2, 4), torch.zeros(2, 4), [0, 5], tmp_path, num_indices=3)


# --- folder + captions -----------------------------------------------------------------------------

def _image_folder(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 20), (255, 0, 0)).save(root / "b.png")                # wide: centre-cropped
    Image.new("L", (16, 16), 128).save(root / "a.png")                          # greyscale
    Image.new("RGBA", (64, 64), (0, 0, 255, 10)).save(root / "sub" / "c.png")   # alpha dropped
    Image.new("RGB", (8, 8), (0, 200, 0)).save(root / "d.jpg", quality=95)
    (root / "e.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")                  # undecodable
    Image.new("RGB", (8, 8)).save(root / "uncaptioned.png")


def test_folder_with_csv_captions_into_shards(tmp_path):
    _image_folder(tmp_path / "img")
    with open(tmp_path / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Caption", "filename", "label", "extra"])
        writer.writerow(["a red banner, wide", "b.png", "red", "x"])
        writer.writerow(["a grey square", "a.png", "grey", ""])
        writer.writerow(["a blue square", "sub/c.png", "blue", ""])
        writer.writerow(["green", "d.jpg", "green", ""])
        writer.writerow(["broken", "e.png", "red", ""])
        writer.writerow(["gone", "missing.png", "red", ""])
        writer.writerow(["escape", "../x.png", "red", ""])
    stats = shards.ReadStats()
    paths = shards.write_folder_shards(tmp_path / "img", tmp_path / "captions.csv", tmp_path / "out", 2,
                                       image_size=16, source="web", stats=stats)
    assert len(paths) == 2
    assert dict(stats.reasons) == {"bad_image": 1, "missing_file": 1, "bad_row": 1, "uncaptioned": 1}
    assert stats.read == 4
    got = shards.read_pool(tmp_path / "out")
    # indices: sorted filenames a.png b.png d.jpg e.png missing.png sub/c.png
    assert got.indices.tolist() == [0, 1, 2, 5] and got.num_indices == 6
    assert _per_sample_captions(got) == ["a grey square", "a red banner, wide", "green", "a blue square"]
    assert got.classnames == ["blue", "green", "grey", "red"]
    assert [got.classnames[i] for i in got.labels.tolist()] == ["grey", "red", "green", "blue"]
    assert torch.equal(got.labels, got.caption_labels) and not got.noisy.any()
    assert got.source_names == ("web",) and got.config is None
    assert got.images.shape == (4, 3, 16, 16)
    assert bool((got.images[0] == 128).all()) and bool((got.images[3][2] == 255).all())
    assert torch.equal(got.images[1][:, 0, 0], torch.tensor([255, 0, 0], dtype=torch.uint8))


def test_folder_with_tsv_captions_and_no_labels(tmp_path):
    _image_folder(tmp_path / "img")
    (tmp_path / "caps.tsv").write_text("filename\tcaption\nsub/c.png\ttab, separated\na.png\t\nb.png\tred\n",
                                       encoding="utf-8")
    stats = shards.ReadStats()
    shards.write_folder_shards(tmp_path / "img", tmp_path / "caps.tsv", tmp_path / "out", stats=stats)
    got = shards.read_pool(tmp_path / "out")
    assert got.indices.tolist() == [1, 2] and got.num_indices == 3
    assert _per_sample_captions(got) == ["red", "tab, separated"]
    assert got.classnames == [] and got.labels.tolist() == [-1, -1]
    assert stats.reasons["missing_caption"] == 1
    (tmp_path / "bad.csv").write_text("file,text\na.png,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'filename' and 'caption'"):
        shards.write_folder_shards(tmp_path / "img", tmp_path / "bad.csv", tmp_path / "out2")
    (tmp_path / "twice.csv").write_text("filename,caption\na.png,x\na.png,y\n", encoding="utf-8")
    with pytest.raises(ValueError, match="listed twice"):
        shards.write_folder_shards(tmp_path / "img", tmp_path / "twice.csv", tmp_path / "out3")


# --- the webdataset library reads these shards -----------------------------------------------------

def test_webdataset_library_reads_the_shards(pool, shard_dir, tmp_path):
    wds = pytest.importorskip("webdataset")
    dataset = wds.WebDataset(shards.shard_spec(shard_dir), shardshuffle=False).decode("rgb8")
    samples = list(itertools.islice(iter(dataset), 3))
    assert [s["__key__"] for s in samples] == ["000000000", "000000001", "000000002"]
    assert np.array_equal(samples[2]["png"], pool.images[2].permute(1, 2, 0).numpy())
    assert samples[1]["txt"] == _per_sample_captions(pool)[1] and samples[1]["json"]["index"] == 1
    shards.write_shards(pool, tmp_path, SPP, image_format="npy")
    dataset = wds.WebDataset(shards.shard_spec(tmp_path), shardshuffle=False).decode()
    sample = next(iter(dataset))
    assert np.array_equal(sample["npy"], pool.images[0].numpy())


@pytest.mark.parametrize("image_format", ["png", "npy"])
def test_make_shards_writes_a_grids_pool_that_reads_back_identical(tmp_path, capsys, image_format):
    from harness.cli import main
    from harness.grid.config import pool_config

    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndata: {sources: [shapes], shapes_count: 96, noise: 0.5}\neval: {tasks: [shapes_retrieval]}\n"
                    "stages:\n  - {name: s, methods: [clip], models: [tiny-s], samples_seen: [128], data: {subset: clean}}\n")
    assert main(["make-shards", "--grid", str(grid), "--stage", "s", "--out", str(tmp_path / "out"),
                 "--samples-per-shard", "20", "--image-format", image_format]) == 0
    spec = capsys.readouterr().out.strip().splitlines()[-1]
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        assert {m.name.rsplit(".", 1)[1] for m in tar} == {"json", "txt", image_format}
    assert spec.endswith("shard-{000000..000002}.tar")  # 48 clean samples of 96, 20 per shard
    want = build_pool(pool_config({"sources": ["shapes"], "shapes_count": 96, "noise": 0.5, "subset": "clean"}))
    got = shards.read_pool(spec)
    assert torch.equal(got.images, want.images) and torch.equal(got.indices, want.indices)
    assert [got.captions[i] for i in got.caption_ids] == [want.captions[i] for i in want.caption_ids]
    assert main(["make-shards", "--grid", str(grid), "--stage", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "--stage: no stage 'nope'; stages: s" in capsys.readouterr().err and not (tmp_path / "x").exists()
