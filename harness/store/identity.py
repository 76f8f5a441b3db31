"""Which fields of a spec's parts count in its run id, marked on the config dataclasses themselves.

A field with metadata NOT_IN_ID (logging, checkpoint cadence, speed options that keep the math, where a
file lies) never enters the id; one with IN_ID_UNLESS_DEFAULT was added after runs existed and enters
it only away from its default, the value that reproduces those runs, so adding an option does not
rename every stored run; one marked `in_id_as(value)` was taken out of the id later and is hashed as that
fixed value, so taking it out renamed no stored run either.
"""
from __future__ import annotations

import dataclasses
from typing import Any

IN_ID = "in_id"
_NEVER, _UNLESS_DEFAULT, _AS = "never", "unless default", "as"
NOT_IN_ID = {IN_ID: _NEVER}
IN_ID_UNLESS_DEFAULT = {IN_ID: _UNLESS_DEFAULT}


def in_id_as(value: Any) -> dict[str, Any]:
    """Metadata of a field taken out of the id after runs existed: the id always hashes it as `value`, the one
    every earlier run had, so it stays out of the id without renaming a stored run."""
    return {IN_ID: _AS, _AS: value}


def identity_of(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """`values` (the JSON form of dataclass `cls`) without the fields marked to stay out of the id, and with
    those marked `in_id_as` at their fixed value; keys that are no field of `cls` are kept."""
    marks = {f.name: f for f in dataclasses.fields(cls) if IN_ID in f.metadata}

    def counts(name: str, value: Any) -> bool:
        f = marks.get(name)
        if f is None:
            return True
        return f.metadata[IN_ID] == _AS or (f.metadata[IN_ID] == _UNLESS_DEFAULT and value != f.default)

    def value(name: str, v: Any) -> Any:
        f = marks.get(name)
        return f.metadata[_AS] if f is not None and f.metadata[IN_ID] == _AS else v

    return {k: value(k, v) for k, v in values.items() if counts(k, v)}
