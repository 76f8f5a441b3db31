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
