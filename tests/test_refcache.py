"""Reference features on the fly vs from a cache: same trajectory, refused when made by another
reference, built by `clipsteer cache-ref`; and the compute a run records against the passes it makes."""
import dataclasses
import hashlib
import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from harness import io
from harness.data import shards
from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.grid.config import pool_config
from harness.grid.runspec import MethodConfig, RunSpec
from harness.models import build_model, encode
from harness.profiles import model_profile
from harness.run import features, refcache
from harness.run.compute import run_compute
from harness.run.features import OnlineReference, load_cache
from harness.run.reference import CheckpointReference
from harness.run.train import TrainConfig, train
from harness.store.rundir import RunDir
from methods import get_method

# the clean subset of a noisy pool: sample indices differ from pool positions, so a lookup by
# position instead of by index would give other samples' features
DATA = {k: list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(PoolConfig(sources=("shapes",), shapes_count=320, noise=0.2,
                                                  subset="clean")).items()}
CFG = TrainConfig(batch_size=32, lr=1e-3, warmup_steps=2, log_every=1, augment=False)


def checkpoint(tmp_path: Path, seed: int) -> CheckpointReference:
    """A reference checkpoint made here (a tiny-s at init seed `seed`), as a spec's reference."""
    torch.manual_seed(seed)
    path = io.torch_save(tmp_path / f"ref{seed}.pt", {"state_dict": build_model("tiny-s").model.state_dict()})
    return CheckpointReference(path=str(path), sha256=f"sha-of-seed-{seed}", model="tiny-s", features="cached")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A cache of reference 0's features of the DATA pool."""
    root = tmp_path_factory.mktemp("cache")
    ref = checkpoint(root, 0)
    record = features.write_cache(root / "cache", ref, DATA, root, show_progress=False)
    io.write_json(RunDir(root / "cache").result, record)
    return root, ref, record


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in RunDir(run_dir).metrics.read_text().splitlines()]


@pytest.mark.parametrize("name", ["drrho", "jest", "kd", "filter"])
def test_cached_features_give_the_trajectory_of_on_the_fly_ones(made, tmp_path, name):
    root, ref, record = made
    pool = build_pool(pool_config(DATA))
    assert not torch.equal(pool.indices, torch.arange(len(pool)))
    online = OnlineReference(ref.load(root), "cpu")
    cached = features.load_cache(root / "cache", ref, DATA, "cpu")
    models = []
    for label, source in (("online", online), ("cached", cached)):
        torch.manual_seed(0)
        built = build_model("tiny-s")
        train(built, get_method(name)({}, pool.num_indices), pool, 6 * 32, CFG, 0, tmp_path / label,
              reference=source, show_progress=False)
        models.append(built.model.state_dict())
    # the cache encodes the pool in chunks of 256, the online path batch by batch: float rounding only
    assert losses(tmp_path / "online") == pytest.approx(losses(tmp_path / "cached"), rel=1e-4, abs=1e-6)
    for key in models[0]:
        torch.testing.assert_close(models[0][key], models[1][key], rtol=1e-3, atol=1e-4)
    assert record["pairs"] == len(pool) and record["gflops"] == pytest.approx(len(pool) * model_profile("tiny-s")["gflops"])


def test_the_cache_is_feature_shards_beside_the_pools_with_exact_rows(made, tmp_path):
    """The features are companion shards (harness.data.shards feature shards keyed by sample index); they
    read back as the reference's features of each pool sample, and a damaged shard is refused."""
    root, ref, record = made
    pool = build_pool(pool_config(DATA))
    table = shards.read_feature_shards(RunDir(root / "cache").feature_shards, verify=True)
    assert torch.equal(table.present.nonzero().squeeze(1), pool.indices) and record["pairs"] == len(pool)
    with torch.no_grad():
        feats = encode(ref.load(root), pool.images[:5], pool.tokenize(
            build_model("tiny-s").tokenizer)[pool.caption_ids[:5]], "cpu")
    torch.testing.assert_close(table.image[pool.indices[:5]], feats.image, rtol=1e-5, atol=1e-6)
    cached = features.load_cache(root / "cache", ref, DATA, "cpu")
    assert torch.equal(cached.batch(pool, torch.arange(5), pool.images[:5]).text, table.text[pool.indices[:5]])

    damaged = tmp_path / "damaged"
    shutil.copytree(root / "cache", damaged)
    shard = sorted(RunDir(damaged).feature_shards.glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:-2048])
    with pytest.raises(ValueError, match="is damaged"):
        features.load_cache(damaged, ref, DATA, "cpu")


def test_a_cache_made_by_another_reference_or_pool_is_refused(made, tmp_path):
    root, ref, _ = made
    other = checkpoint(tmp_path, 1)
    with pytest.raises(ValueError, match="made by reference .*sha256=sha-of-seed-0.*this run names reference "
                                         ".*sha256=sha-of-seed-1"):
        features.load_cache(root / "cache", other, DATA, "cpu")
    with pytest.raises(ValueError, match="made for another pool \\(data differs in: noise\\)"):
        refcache.check_cache(root / "cache", ref, {**DATA, "noise": 0.3})
    with pytest.raises(ValueError, match="no finished reference-feature cache"):
        refcache.check_cache(tmp_path, ref, DATA)


def test_a_grid_naming_a_cache_takes_it_only_from_its_own_reference(made, tmp_path, clipsteer):
    root, ref, _ = made
    torch.manual_seed(1)
    other = io.torch_save(tmp_path / "other.pt", {"state_dict": build_model("tiny-s").model.state_dict()})
    data = ", ".join(f"{k}: {json.dumps(v)}" for k, v in DATA.items())
    grid = tmp_path / "g.yaml"

    def dry_run(cache: Path) -> subprocess.CompletedProcess:
        grid.write_text(textwrap.dedent(f"""
            data: {{{data}}}
            eval: {{tasks: [shapes_retrieval]}}
            train: {{batch_size: 32}}
            stages:
              - name: s
                reference: {{checkpoint: {other}, model: tiny-s, cache: {cache}}}
                methods: [drrho]
                models: [tiny-s]
                samples_seen: [64]
            """))
        return clipsteer("run", grid, "--dry-run", "--results", tmp_path / "results")

    refused = dry_run(root / "cache")  # made by reference 0
    assert refused.returncode == 2
    assert "stages[0].reference.cache" in refused.stderr and "was made by reference" in refused.stderr
    own = dataclasses.replace(ref, path=str(other), sha256=hashlib.sha256(other.read_bytes()).hexdigest())
    io.write_json(RunDir(tmp_path / "own").result,
                  features.write_cache(tmp_path / "own", own, DATA, tmp_path, show_progress=False))
    accepted = dry_run(tmp_path / "own")
    assert accepted.returncode == 0, accepted.stderr
    assert "1 to launch" in accepted.stdout and "refcache-" not in accepted.stdout  # named cache: nothing to build
    assert not (tmp_path / "results").exists()


def test_cache_ref_builds_each_cache_once(tmp_path, clipsteer):
    grid = tmp_path / "g.yaml"
    body = """
        name: g
        data: {sources: [shapes], shapes_count: 128}
        eval: {tasks: [shapes_retrieval]}
        train: {batch_size: 32}
        executor: {kind: debug}
        stages:
          - name: reference
            methods: [clip]
            models: [tiny-s]
            samples_seen: [32]
          - name: s
            reference: REF
            methods: [drrho, filter]
            models: [tiny-s]
            samples_seen: [32]
        """
    grid.write_text(textwrap.dedent(body.replace("REF", "reference")))
    results = tmp_path / "results"
    cli = ("cache-ref", grid, "--results", results)
    none = clipsteer(*cli)
    assert none.returncode == 2 and "no stage reads cached reference features" in none.stderr
    grid.write_text(textwrap.dedent(body.replace("REF", "{stage: reference, features: cached}")))
    early = clipsteer(*cli)
    assert early.returncode == 1 and "reference run reference-clip-tiny-s" in early.stderr and "is missing" in early.stderr
    ran = clipsteer("run", grid, "--results", results)
    assert ran.returncode == 0, ran.stderr
    caches = sorted(p.name for p in (results / "runs").iterdir() if p.name.startswith("refcache-"))
    assert len(caches) == 1  # two runs, one cache
    built = (results / "runs" / caches[0] / "result.json").stat().st_mtime_ns
    again = clipsteer(*cli)
    assert again.returncode == 0 and "0 units to launch, 1 already done" in again.stdout + again.stderr
    assert (results / "runs" / caches[0] / "result.json").stat().st_mtime_ns == built


class Counter:
    """Counts the image rows that go through a model's forward pass."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.rows = 0
        model.visual.register_forward_hook(lambda module, args, out: setattr(self, "rows", self.rows + len(args[0])))


@pytest.mark.parametrize("name, features", [("jest", "online"), ("rho_topk", "online"), ("drrho", "online"),
                                            ("filter", "online"), ("clip", None), ("drrho", "cached")])
def test_recorded_compute_matches_the_forward_passes_made(made, tmp_path, name, features):
    root, ref, _ = made
    pool = build_pool(pool_config(DATA))
    method = get_method(name)({}, pool.num_indices)
    spec = RunSpec(grid="g", stage="s", method=MethodConfig(name), model="tiny-s", samples_seen=4 * 32, seed=0,
                   data=DATA, train=CFG, eval_tasks=(), eval_suite="test", run_id="r",
                   reference=dataclasses.replace(ref, features=features) if features else None)
    torch.manual_seed(0)
    learner = build_model("tiny-s")
    learned = Counter(learner.model)
    reference = None
    if features == "online":
        reference = OnlineReference(ref.load(root), "cpu")
        referred = Counter(reference.built.model)
    elif features == "cached":
        reference = load_cache(root / "cache", ref, DATA, "cpu")
    train(learner, method, pool, spec.samples_seen, CFG, 0, tmp_path, reference=reference, show_progress=False)
    compute = run_compute(spec, method, len(pool))
    g = model_profile("tiny-s")["gflops"]
    assert learned.rows * g == pytest.approx(compute["c_paper"] + compute["learner_scoring"])
    reference_rows = referred.rows if features == "online" else 0
    assert reference_rows * g == pytest.approx(compute["reference_forward"] + compute["pool_scoring"])
    if name == "filter":
        assert torch.load(RunDir(tmp_path).kept_indices).numel() == round(0.3 * len(pool))
