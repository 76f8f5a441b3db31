"""The docs cannot drift from the code: docs/grid.md's tables against the validator's dataclasses, and every
docs page the README links exists."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from harness.data.pool import PoolConfig
from harness.grid import config
from harness.grid.slurm_config import SlurmConfig
from harness.run.train import TrainConfig
from harness.store.identity import IN_ID_UNLESS_DEFAULT, NOT_IN_ID
from methods import get_method

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"data": PoolConfig, "train": TrainConfig, "executor": config.ExecutorConfig,
            "executor.slurm": SlurmConfig, "stage reference": config.ReferenceConfig}


def _tables() -> dict[str, list[list[str]]]:
    """docs/grid.md's rows (key, type, default, meaning) per '## section'."""
    tables: dict[str, list[list[str]]] = {}
    section = None
    for line in (ROOT / "docs" / "grid.md").read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("| `") and section:
            tables.setdefault(section, []).append([c.strip() for c in line.strip("|").split(" | ")])
    return tables


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_grid_reference_lists_every_key_with_its_type_default_and_id_rule(section):
    rows = {r[0].strip("`"): r for r in _tables()[section]}
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    assert list(rows) == list(fields)
    for name, f in fields.items():
        _, typ, default, meaning = rows[name]
        assert typ == str(f.type).replace("|", "or"), name
        value = _default(f)
        assert default == ("required" if value is dataclasses.MISSING else
                           f"`{json.dumps(list(value) if isinstance(value, tuple) else value)}`"), name
        assert ("not in the run id" in meaning) == (dict(f.metadata) == NOT_IN_ID), name
        assert ("in the run id only away from its default" in meaning) == (dict(f.metadata) == IN_ID_UNLESS_DEFAULT), name


def test_grid_reference_lists_the_top_level_and_stage_keys():
    tables = _tables()
    assert {r[0].strip("`") for r in tables["Top level"]} == config.TOP_KEYS
    assert {r[0].strip("`") for r in tables["Stages"]} == config.STAGE_KEYS


def test_every_page_the_readme_links_exists():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|results)/[^)#]+)\)", readme)
    assert any(link.startswith("docs/") for link in links)
    assert [link for link in links if not (ROOT / link).exists()] == []
    linked = {link for link in links if link.startswith("docs/")}
    assert {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} <= linked


def test_the_readmes_add_a_method_recipe_runs_as_a_method():
    import torch
    import torch.nn.functional as F

    from methods import Features, Method, Progress

    readme = (ROOT / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "class MarginClip" in block)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    cls = namespace["MarginClip"]
    assert issubclass(cls, Method) and cls.reference == "batch"
    g = torch.Generator().manual_seed(0)
    image, text = (F.normalize(torch.randn(6, 8, generator=g), dim=-1) for _ in range(2))
    feats, ref = Features(image, text, torch.tensor(10.0)), Features(image.flip(0), text.flip(0))
    out = cls({"weight": 0.0}, 6).loss(feats, ref, torch.arange(6), Progress(0, 0.0))
    plain = get_method("clip")({}, 6).loss(feats, None, torch.arange(6), Progress(0, 0.0))
    assert torch.allclose(out.loss, plain.loss)  # weight 0: plain CLIP
    assert not torch.allclose(cls({}, 6).loss(feats, ref, torch.arange(6), Progress(0, 0.0)).loss, plain.loss)
