"""How results were made: the provenance record in every result.json, its summary in the report, `report --out`,
and `fit --csv` refusing a leaderboard CSV."""
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from harness import codeversion, io, provenance, sweep
from harness.grid.config import load_grid
from harness.store.rundir import RunDir

GRID = """
name: prov
data: {sources: [shapes], shapes_count: 256}
eval: {tasks: [shapes_retrieval]}
train: {batch_size: 32, warmup_steps: 1}
executor: {kind: debug}
stages:
  - {name: s, methods: [clip], models: [tiny-s], samples_seen: [32, 64]}
"""
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A two-run sweep with its report: (results directory, specs)."""
    tmp = tmp_path_factory.mktemp("prov")
    path = tmp / "prov.yaml"
    path.write_text(textwrap.dedent(GRID))
    grid = load_grid(path)
    outcome = sweep.run(grid, tmp / "out", grid.executor)
    assert not outcome.launch.failed
    return tmp / "out"


def test_every_result_records_versions_code_hardware_and_date(swept):
    results = [io.read_json(rdir.result) for rdir in RunDir.all(swept)]
    assert len(results) == 2
    for record in (r["provenance"] for r in results):
        assert record["torch"] == torch.__version__.split("+")[0] or record["torch"] == torch.__version__
        assert record["python"].count(".") == 2 and record["numpy"] and record["submitit"]
        assert record["open_clip_torch"] and record["clip_benchmark"]
        assert record["code"] == codeversion.code_version()
        assert record["cpu_count"] == os.cpu_count() and record["cpu_model"]
        assert record["gpu_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
        assert record["date"].endswith("+00:00")
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert record["commit"] == (head.stdout.strip() if head.returncode == 0 else None)


def test_report_says_how_the_runs_were_made(swept):
    doc = io.read_json(swept / "scaling.json")["provenance"]
    assert doc["runs"] == 2 and doc["code"] == codeversion.code_version() and doc["torch"]
    markdown = (swept / "leaderboard.md").read_text()
    assert "## How these were made" in markdown and doc["code"] in markdown
    assert "How these were made" in (swept / "leaderboard.html").read_text()


def test_summary_lists_disagreements_and_the_date_range():
    runs = [{"date": "2026-01-02T00:00:00+00:00", "commit": "a", "code": "x"},
            {"date": "2026-01-01T00:00:00+00:00", "commit": "b", "code": "x"},
            {"date": "2026-01-03T00:00:00+00:00", "commit": "a", "code": "x"}]
    made = provenance.summarise(runs)
    assert made["runs"] == 3 and made["code"] == "x" and made["commit"] == ["a", "b"]
    assert made["date"] == ["2026-01-01T00:00:00+00:00", "2026-01-03T00:00:00+00:00"]
    assert provenance.summarise([]) == {}


def test_dirty_looks_at_the_code_only(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "harness").mkdir(parents=True)
    (repo / "harness" / "a.py").write_text("x = 1\n")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    monkeypatch.setattr(provenance, "_ROOT", repo)
    assert provenance.git_state()["dirty"] is False
    (repo / "results").mkdir()
    (repo / "results" / "r.json").write_text("{}")  # results being written do not make the code dirty
    assert provenance.git_state()["dirty"] is False
    (repo / "harness" / "a.py").write_text("x = 2\n")
    assert provenance.git_state()["dirty"] is True
    monkeypatch.setattr(provenance, "_ROOT", tmp_path / "nowhere")
    assert provenance.git_state() == {"commit": None, "dirty": None}


def test_report_into_another_directory_keeps_the_runs_where_they_are(swept, tmp_path, clipsteer):
    out = tmp_path / "elsewhere"
    done = clipsteer("report", swept, "--out", out)
    assert done.returncode == 0, done.stderr
    assert (out / "leaderboard.csv").read_text() == (swept / "leaderboard.csv").read_text()
    assert not (out / "runs").exists() and (out / "plots" / "scaling_law.png").is_file()


@pytest.mark.parametrize("form", ["power", "joint"])
def test_fit_refuses_a_leaderboard_csv_and_says_what_to_pass(swept, clipsteer, form):
    done = clipsteer("fit", "--form", form, "--csv", swept / "leaderboard.csv")
    assert done.returncode == 2
    assert "leaderboard CSV" in done.stderr and f"clipsteer fit {swept}" in done.stderr
