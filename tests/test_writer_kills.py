"""Data-cache writers SIGKILLed mid-write (a file written in full to its temporary name, not yet renamed: the
CLIPSTEER_FAULT point `write:<name>`), one per kind: a shard set, the lazy pool's shard-index cache, the
Fashion-MNIST download cache. The killed writer leaves a hidden temporary; the next writer of that cache
removes it and writes the cache in full."""
import io as _io
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from harness import faults, io
from harness.data import lazy, shards, sources
from harness.data.build import build_pool
from harness.data.pool import PoolConfig

ROOT = Path(__file__).resolve().parents[1]
POOL = PoolConfig(sources=("shapes",), shapes_count=64)
SHARDS = f"""
from harness.data import shards
from harness.data.build import build_pool
from harness.data.pool import PoolConfig
shards.write_shards(build_pool({POOL!r}), sys.argv[1], 16)
"""


def killed_writing(name: str, code: str, *args: object, **env: str) -> None:
    """Run `code` (with `args` as sys.argv[1:]) in a fresh interpreter that SIGKILLs itself once it has written
    file `name` in full to its temporary name."""
    env = {**os.environ, faults.ENV: f"write:{name}", **env}
    out = subprocess.run([sys.executable, "-c", f"import sys\n{code}", *map(str, args)], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr


def temporaries(folder: Path) -> list[str]:
    """The hidden temporaries under `folder`, each as the name of the file it was to become."""
    return sorted(p.name.split(".")[1] for p in Path(folder).rglob(f".*{io.TMP_SUFFIX}"))


def test_a_shard_writer_killed_mid_shard_leaves_nothing_after_the_next_write(tmp_path):
    killed_writing("shard-000001.tar", SHARDS, tmp_path / "set")
    assert temporaries(tmp_path) == ["shard-000001"] and not (tmp_path / "set" / "manifest.json").exists()
    shards.write_shards(build_pool(POOL), tmp_path / "set", 16)
    assert temporaries(tmp_path) == []
    assert len(shards.read_pool(tmp_path / "set")) == 64


def test_a_shard_index_cache_killed_mid_write_is_cleaned_by_the_next_index(tmp_path, monkeypatch):
    shards.write_shards(build_pool(POOL), tmp_path / "set", 64)
    [entry] = io.read_json(tmp_path / "set" / "manifest.json")["shards"]
    shard, cache = str(tmp_path / "set" / entry["name"]), tmp_path / "cache"
    code = "from harness.data import lazy, shards\nlazy.index_shard(sys.argv[1], sys.argv[2], shards.ReadStats())"
    killed_writing(f"{entry['sha256']}.npz", code, shard, entry["sha256"], **{lazy.CACHE_ENV: str(cache)})
    assert temporaries(cache) == [entry["sha256"]] and not list(cache.rglob("*.npz"))
    monkeypatch.setenv(lazy.CACHE_ENV, str(cache))
    index = lazy.index_shard(shard, entry["sha256"], shards.ReadStats())
    assert temporaries(cache) == [] and [p.name for p in cache.rglob("*.npz")] == [f"{entry['sha256']}.npz"]
    assert sorted(index["indices"].tolist()) == list(range(64))


FAKE_DOWNLOAD = "urllib.request.urlopen = lambda url, timeout: io.BytesIO(url.encode())"


def test_a_fashion_mnist_download_killed_mid_write_is_cleaned_by_the_next_download(tmp_path, monkeypatch):
    code = f"import io, urllib.request\n{FAKE_DOWNLOAD}\nfrom harness.data import sources\n" \
           "sources._fashion_mnist_root(sys.argv[1])"
    killed_writing("train-labels-idx1-ubyte.gz", code, tmp_path / "nowhere", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert temporaries(tmp_path / "xdg") == ["train-labels-idx1-ubyte"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _io.BytesIO(url.encode()))
    folder = sources._fashion_mnist_root(tmp_path / "nowhere")
    assert temporaries(tmp_path / "xdg") == []
    names = [name for pair in sources.FASHION_MNIST_FILES.values() for name in pair]
    assert {p.name: p.read_bytes() for p in folder.glob("*.gz")} == {
        name: (sources.FASHION_MNIST_URL + name).encode() for name in names}
