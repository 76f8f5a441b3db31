"""The paper's grids (grids/drrho_paper.yaml, grids/baselines_paper.yaml): validated, expanded and dry-run.

The shard set is a synthetic manifest of DFN-192M's size (no tar file: validation and the dry run read only
the manifest), and the evaluation root holds empty stand-ins for the task folders (only their presence is
checked before a run)."""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from harness.cli import main
from harness.eval.tasksets import DATACOMP, ROOT_ENV
from harness.grid.config import load_grid
from harness.grid.spec import expand
from harness.profiles import model_profile

DFN_PAIRS = 192_160_462
SHARD_SIZE = 10_000
B = 1_000_000_000
H100_BF16, MFU = 989e12, 0.4
REFERENCE = "ViT-B-32-quickgelu"


@pytest.fixture
def dfn(tmp_path, monkeypatch) -> Path:
    """$DFN192M: a directory with a clipsteer pool manifest of DFN-192M's size; $CLIPSTEER_EVAL_ROOT: stand-ins."""
    root = tmp_path / "dfn192m"
    root.mkdir()
    counts = [SHARD_SIZE] * (DFN_PAIRS // SHARD_SIZE) + [DFN_PAIRS % SHARD_SIZE]
    (root / "manifest.json").write_text(json.dumps({
        "format": "clipsteer-shards", "version": 1, "kind": "pool", "count": DFN_PAIRS, "num_indices": DFN_PAIRS,
        "image_size": 224, "samples_per_shard": SHARD_SIZE, "pattern": f"shard-{{000000..{len(counts) - 1:06d}}}.tar",
        "shards": [{"name": f"shard-{i:06d}.tar", "count": n, "sha256": f"{i:064x}"} for i, n in enumerate(counts)]}))
    monkeypatch.setenv("DFN192M", str(root))
    evals = tmp_path / "eval"
    for task in DATACOMP:
        for required in task.required():
            path = evals / task.folder / required
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch() if "." in path.name else path.mkdir(exist_ok=True)
    monkeypatch.setenv(ROOT_ENV, str(evals))
    return root


def gflops(model: str) -> float:
    return model_profile(model)["gflops"]


def test_the_drrho_grid_is_the_papers_scaling_grid(dfn):
    specs = expand(load_grid("grids/drrho_paper.yaml"))
    assert len(specs) == 33  # 3 methods x (ViT-B/32 and B/16 x 4 budgets + L/14 x 3)
    budgets = {(s["method"]["name"], s["model"]): set() for s in specs}
    for s in specs:
        budgets[s["method"]["name"], s["model"]].add(s["samples_seen"])
    for method in ("clip", "fastclip", "drrho"):
        assert budgets[method, "ViT-B-32"] == budgets[method, "ViT-B-16"] == {0.32 * B, 0.64 * B, 1.28 * B, 2.56 * B}
        assert budgets[method, "ViT-L-14"] == {0.32 * B, 0.64 * B, 1.28 * B}
    for s in specs:
        t = s["train"]
        assert (t["batch_size"], t["lr"], t["weight_decay"], t["warmup_steps"]) == (5120, 3.125e-4, 0.2, 500)
        assert (t["beta1"], t["beta2"], t["adam_eps"], t["device"], t["precision"]) == (0.9, 0.98, 1e-6, "cuda", "bf16")
        assert s["data"]["shards"] == str(dfn) and len(s["data"]["manifest_sha256"]) == 64
        if s["method"]["name"] == "drrho":
            assert s["reference"] == {"kind": "pretrained", "tag": "openai", "model": REFERENCE, "features": "online"}
            assert (s["method"]["params"]["tau"], s["method"]["params"]["eps"]) == (0.01, 1e-4)
        else:
            assert s["reference"] is None
        if s["method"]["name"] != "clip":  # FastCLIP's gamma rule: 1 up to 1.28B samples (6.7 epochs), 0.64 at 2.56B
            assert s["method"]["params"]["gamma_min"] == (0.64 if s["samples_seen"] == 2.56 * B else 1.0)
    slurm = load_grid("grids/drrho_paper.yaml").executor.slurm
    assert (slurm.nodes, slurm.gpus_per_node, slurm.tasks_per_node) == (1, 8, 8)


def test_the_baselines_grid_runs_every_method_with_three_references(dfn):
    from methods import REGISTRY, get_method, needs_reference

    specs = expand(load_grid("grids/baselines_paper.yaml"))
    assert len(specs) == 27  # clip, fastclip, random once; 8 steered methods x 3 references
    assert {(s["model"], s["samples_seen"]) for s in specs} == {("ViT-B-16", 1.28 * B)}
    assert {s["method"]["name"] for s in specs} == set(REGISTRY)
    references = Counter((s["reference"]["model"], s["reference"]["tag"]) for s in specs if s["reference"])
    assert references == {(REFERENCE, "openai"): 8, ("ViT-B-16-quickgelu", "dfn2b"): 8,
                          ("ViT-B-16", "datacomp_xl_s13b_b90k"): 8}
    for s in specs:
        assert (s["reference"] is not None) == needs_reference(get_method(s["method"]["name"]))


def expected_gpu_hours(specs: list[dict], peak: float, mfu: float) -> float:
    """GPU-hours recomputed from the models' forward GFLOPs: 3x for the trained samples, 1x for the reference's
    forward of every drawn sample (5x the batch for the online selection methods, whose learner also scores
    every candidate before training on a fifth), 1x for filter's scoring of DFN-192M."""
    flops = 0.0
    for s in specs:
        n, method, ref = s["samples_seen"], s["method"]["name"], s["reference"]
        drawn = 5 * n if method in ("jest", "jest_topk", "rho_topk") else n
        flops += 3 * gflops(s["model"]) * n + (drawn if drawn != n else 0) * gflops(s["model"])
        if ref and method == "filter":
            flops += gflops(ref["model"]) * DFN_PAIRS
        elif ref:
            flops += gflops(ref["model"]) * drawn
    return 1e9 * flops / (peak * mfu) / 3600


def dry_run(capsys, grid: str, *flags: str) -> str:
    capsys.readouterr()
    assert main(["run", grid, "--results", "unused-results-dir", "--dry-run", *flags]) == 0
    assert not Path("unused-results-dir").exists()
    return capsys.readouterr().out


def printed_total(out: str) -> float:
    return float(re.search(r"^estimate: ([\d,.]+) GPU-hours for the \d+ run\(s\) to launch$", out, re.M)[1]
                 .replace(",", ""))


def test_the_drrho_grid_dry_runs_with_its_resources_and_gpu_hours(dfn, capsys):
    out = dry_run(capsys, "grids/drrho_paper.yaml")
    assert "grid drrho_paper: 33 runs, 0 done, 33 to launch (executor slurm" in out
    assert out.count("C_paper=") == 33
    for line in ("#SBATCH --nodes=1", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --time=2880", "1 node(s) x 8 GPU(s) = 8 GPU(s)",
                 "assuming 989 TFLOP/s peak per GPU (H100 SXM, dense bf16) at 40% MFU",
                 "trained samples count 3x their forward FLOPs"):
        assert line in out, line
    gb = DFN_PAIRS * 80 / 1e9  # read lazily: the shard index only (80 bytes a row), 15.4 GB per process
    assert f"data: {dfn}: 192,160,462 pairs at 224 px, read lazily (each batch decoded from the shards): " \
           f"about {gb:,.1f} GB of shard index per process" in out and "warning: that" not in out
    specs = expand(load_grid("grids/drrho_paper.yaml"))
    want = expected_gpu_hours(specs, H100_BF16, MFU)
    assert printed_total(out) == pytest.approx(want, abs=0.05)
    # The longest run, ViT-L/14 drrho at 1.28B samples, on 8 GPUs:
    longest = 1e9 * (3 * gflops("ViT-L-14") + gflops(REFERENCE)) * 1.28 * B / (H100_BF16 * MFU) / 3600 / 8
    assert f"to {longest:,.1f} h" in out

    slower = dry_run(capsys, "grids/drrho_paper.yaml", "--gpu-tflops", "400", "--mfu", "0.1")
    assert "assuming 400 TFLOP/s peak per GPU at 10% MFU" in slower
    assert printed_total(slower) == pytest.approx(expected_gpu_hours(specs, 400e12, 0.1), abs=0.05)
    requeues = math.ceil(60 * longest * H100_BF16 * MFU / (400e12 * 0.1) / 2880) - 1  # 12 of 2-day jobs
    assert f"warning: the longest run needs about {requeues} requeue(s) at time_min 2880, more than max_requeues 5" \
        in slower


def test_the_baselines_grid_dry_runs_with_selection_and_filter_compute(dfn, capsys):
    out = dry_run(capsys, "grids/baselines_paper.yaml")
    assert "grid baselines_paper: 27 runs, 0 done, 27 to launch (executor slurm" in out
    specs = expand(load_grid("grids/baselines_paper.yaml"))
    assert printed_total(out) == pytest.approx(expected_gpu_hours(specs, H100_BF16, MFU), abs=0.05)


@pytest.mark.parametrize("grid", ["grids/drrho_paper.yaml", "grids/baselines_paper.yaml"])
def test_without_the_data_variable_the_grid_exits_2_naming_it(grid, monkeypatch, capsys):
    monkeypatch.delenv("DFN192M", raising=False)
    assert main(["run", grid, "--dry-run"]) == 2
    assert f"{grid}: data.shards: environment variable DFN192M is not set" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [(["--mfu", "0"], "--mfu: must be a fraction in (0, 1], got 0.0"),
                                            (["--mfu", "1.5"], "--mfu: must be a fraction in (0, 1], got 1.5"),
                                            (["--gpu-tflops", "-1"], "--gpu-tflops: must be a positive number")])
def test_a_bad_throughput_exits_2(dfn, capsys, flags, message):
    assert main(["run", "grids/drrho_paper.yaml", "--dry-run", *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_shard_set_read_whole_that_outgrows_the_jobs_memory_is_warned_about(dfn, tmp_path, capsys):
    whole = tmp_path / "whole.yaml"
    whole.write_text(Path("grids/drrho_paper.yaml").read_text().replace("lazy: true", "lazy: false"))
    out = dry_run(capsys, str(whole))
    gb = DFN_PAIRS * 3 * 224 ** 2 / 1e9  # the pool as uint8 images, read whole: far above the node's memory
    assert f"data: {dfn}: 192,160,462 pairs at 224 px, {gb:,.1f} GB of images held in memory" in out
    assert ("warning: that, times 8 task(s) per node, is more than executor.slurm.mem_gb (480 GB): these runs "
            "cannot start; read the set lazily (data.lazy: true)") in out
