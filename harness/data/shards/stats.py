"""What a shard read (or a folder conversion) delivered and what it skipped, and why."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

_EXAMPLES = 20               # skipped samples remembered by name in ReadStats.examples


@dataclass
class ReadStats:
    """What a read (or a folder conversion) delivered and what it skipped, and why.

    `read` counts samples delivered; `skipped` counts samples dropped, by reason in `reasons`
    (their sum). `shards` counts shards opened, `shard_errors` the shards that ended early or could
    not be read at all, by reason (unreadable, truncated, bad_header, read_error, checksum,
    not_in_manifest). `examples` names the first few skipped samples as "url#key: reason".
    """

    read: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    shards: int = 0
    shard_errors: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str = "", n: int = 1) -> None:
        if n <= 0:
            return
        self.skipped += n
        self.reasons[reason] += n
        if len(self.examples) < _EXAMPLES:
            self.examples.append(f"{where}: {reason}" + (f" (x{n})" if n > 1 else ""))

    @classmethod
    def combine(cls, parts: Iterable["ReadStats"]) -> "ReadStats":
        """The sum of several readers' statistics (worker processes each count their own); examples
        are kept in the order of `parts`, the first few."""
        total = cls()
        for part in parts:
            total.read += part.read
            total.skipped += part.skipped
            total.reasons.update(part.reasons)
            total.shards += part.shards
            total.shard_errors.update(part.shard_errors)
            total.examples.extend(part.examples[:_EXAMPLES - len(total.examples)])
        return total

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "skipped": self.skipped, "reasons": dict(sorted(self.reasons.items())),
                "shards": self.shards, "shard_errors": dict(sorted(self.shard_errors.items())),
                "examples": list(self.examples)}

    def __str__(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items())) or "none"
        return f"read {self.read} samples from {self.shards} shards, skipped {self.skipped} ({reasons})"
