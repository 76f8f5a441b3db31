"""benchmarks/gpu.py without a GPU: the peak table, its refusals, and its CPU dry run end to end (every path the
GPU check takes, but at tiny sizes, so its times mean nothing)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu
from harness.profiles import model_profile

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989),
    ("NVIDIA GH200 480GB", 989), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A10", 125), ("NVIDIA L40S", 362),
    ("NVIDIA L40", 181), ("NVIDIA L4", 121), ("Tesla V100-SXM2-16GB", None)])
def test_the_peak_is_looked_up_from_the_device_name_the_most_specific_name_first(name, peak):
    assert gpu.peak_tflops(name) == peak


def test_without_cuda_it_refuses_with_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path / "out")]) == 2
    assert "benchmarks.gpu: error: no CUDA device here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be > 0, got 0"),
    (["--batch-size", "-4"], "--batch-size must be > 0, got -4"),
    (["--peak-tflops", "0"], "--peak-tflops must be > 0, got 0.0"),
    (["--steps", "1"], "--steps must be more than the 1 warm-up step(s), got 1")])
def test_bad_numbers_are_refused_with_exit_2_naming_the_option(argv, message, tmp_path, capsys):
    assert gpu.main(["--dry-run-cpu", "--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One `python -m benchmarks.gpu --dry-run-cpu` in a fresh interpreter (it turns dynamo off for its process)."""
    out = tmp_path_factory.mktemp("gpu")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--dry-run-cpu", "--peak-tflops", "2",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "gpu-dry-run-cpu.json").read_text()), (out / "gpu-dry-run-cpu.md").read_text(), out


def test_the_dry_run_trains_every_case_with_compile_off_and_on_and_derives_its_numbers(dry_run):
    doc, _, _ = dry_run
    assert doc["dry_run_cpu"] and doc["device"] == "cpu" and doc["peak_tflops"] == 2
    assert [(r["method"], r["reference"], r["compile"]) for r in doc["runs"]] == [
        (m, ref, c) for c in (False, True)
        for m, ref in (("clip", None), ("drrho", "cached"), ("drrho", "online"), ("fastclip", None))]
    model_flops = 3 * model_profile("tiny-s")["gflops"] * 1e9 * 16  # forward + backward, batch 16
    for r in doc["runs"]:
        assert r["step_s"] > 0 and r["steps_per_s"] == pytest.approx(1 / r["step_s"])
        assert r["samples_per_s"] == pytest.approx(16 / r["step_s"])
        assert r["mfu"] == pytest.approx(model_flops / r["step_s"] / 2e12)
    step = {(r["method"], r["reference"], r["compile"]): r["step_s"] for r in doc["runs"]}
    assert {r["name"]: r["value"] for r in doc["ratios"]} == pytest.approx({
        f"drrho ({ref}) / clip step time, compile {'on' if c else 'off'}":
            step[("drrho", ref, c)] / step[("clip", None, c)] for c in (False, True) for ref in ("cached", "online")})


def test_the_dry_run_trains_data_parallel_in_two_processes_that_agree(dry_run):
    dp = dry_run[0]["data_parallel"]
    assert (dp["processes"], dp["backend"], dp["passed"]) == (2, "gloo", True)
    assert [r["rank"] for r in dp["ranks"]] == [0, 1]
    assert all(r["steps"] == 2 and r["global_batch"] == 32 and r["world_size"] == 2 and r["all_reduce_sum"] == 3
               for r in dp["ranks"])
    assert dp["ranks"][0]["final_loss"] == dp["ranks"][1]["final_loss"]


def test_the_dry_run_says_so_in_its_page_and_leaves_gpu_json_alone(dry_run):
    doc, page, out = dry_run
    assert "**A dry run on the CPU**" in page and page.count("\n| drrho | ") == 4
    assert "| drrho (online) / clip step time, compile on |" in page and "on gloo: **passed**" in page
    assert not (out / "gpu.json").exists() and not (out / "gpu.md").exists()
