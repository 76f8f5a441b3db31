"""Errors that the CLI turns into a message and exit code 2 (bad input), never a traceback."""
from __future__ import annotations

import difflib
from typing import Any, Iterable


class ConfigError(ValueError):
    """Bad user input: names the file, the key and what is allowed."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key = source, key
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


# other names people give a key, which no spelling distance finds: the key each means
SYNONYMS = {
    "learning_rate": "lr", "learningrate": "lr", "wd": "weight_decay", "bs": "batch_size", "batch": "batch_size",
    "warmup": "warmup_steps", "epsilon": "adam_eps", "eps": "adam_eps", "schedule_type": "schedule",
    "type": "kind", "executor_type": "kind", "workers": "max_parallel", "parallel": "max_parallel",
    "num_workers": "max_parallel", "model": "models", "method": "methods", "seed": "seeds", "samples": "samples_seen",
    "num_samples": "samples_seen", "budget": "samples_seen", "task": "tasks", "dataset": "data", "gpu": "device",
}


def closest(word: str, allowed: Iterable[str]) -> str | None:
    """The allowed key `word` is a synonym of, else the closest allowed word (by similarity, else the one word
    it begins), else None."""
    allowed = sorted(allowed)
    synonym = SYNONYMS.get(word.lower())
    close = [synonym] if synonym in allowed else difflib.get_close_matches(word, allowed, n=1) or \
        [a for a in allowed if len(word) >= 3 and a.startswith(word)][:1]
    return close[0] if close else None


def did_you_mean(word: str, allowed: Iterable[str]) -> str:
    """' (did you mean X?)' for the `closest` allowed word, or ''."""
    match = closest(word, allowed)
    return f" (did you mean {match!r}?)" if match is not None else ""


def check_int(raw: Any, src: str, key: str, minimum: int, maximum: int | None = None) -> int:
    """An integer value of a grid field (an integral float such as 1e3 counts), within bounds; else ConfigError."""
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise ConfigError(src, key, f"must be an integer, got {raw!r}")
    if raw < minimum:
        raise ConfigError(src, key, f"must be >= {minimum}, got {raw}")
    if maximum is not None and raw > maximum:
        raise ConfigError(src, key, f"must be <= {maximum}, got {raw}")
    return raw
