"""Which fields of a spec's parts count in its run id, marked on the config dataclasses themselves.

A field with metadata NOT_IN_ID (logging, checkpoint cadence, speed options that keep the math, where a
file lies) never enters the id; one with IN_ID_UNLESS_DEFAULT was added after runs existed and enters
it only away from its default, the value that reproduces those runs, so adding an option does not
rename every stored run.
"""
from __future__ import annotations

import dataclasses
from typing import Any

IN_ID = "in_id"
_NEVER, _UNLESS_DEFAULT = "never", "unless default"
NOT_IN_ID = {IN_ID: _NEVER}
IN_ID_UNLESS_DEFAULT = {IN_ID: _UNLESS_DEFAULT}


def identity_of(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """`values` (the JSON form of dataclass `cls`) without the fields marked to stay out of the id; keys that
    are no field of `cls` are kept."""
    marks = {f.name: f for f in dataclasses.fields(cls) if IN_ID in f.metadata}

    def counts(name: str, value: Any) -> bool:
        f = marks.get(name)
        if f is None:
            return True
        return f.metadata[IN_ID] == _UNLESS_DEFAULT and value != f.default

    return {k: v for k, v in values.items() if counts(k, v)}
