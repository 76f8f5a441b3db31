"""Write the results: benchmarks.json (everything) and benchmarks.md (the tables people read)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from benchmarks.timing import GroupResult


def document(machine: dict[str, Any], settings: dict[str, Any], command: str, groups: dict[str, GroupResult],
             wall_s: float) -> dict[str, Any]:
    """The JSON document: machine, date, settings, every measurement and ratio (median/min/max, goal, pass)."""
    return {"machine": {**machine, "load_average_at_end": os.getloadavg()}, "date": machine["date"],
            "command": command, "settings": settings, "wall_time_s": wall_s, "groups": list(groups),
            "measurements": [{"group": g, **m.summary()} for g, r in groups.items() for m in r.measurements],
            "ratios": [{"group": g, **m.summary()} for g, r in groups.items() for m in r.ratios],
            "facts": {g: r.facts for g, r in groups.items() if r.facts},
            "scaling_table": [row for r in groups.values() for row in r.table],
            "notes": [n for r in groups.values() for n in r.notes]}


def write(out: Path, doc: dict[str, Any]) -> None:
    """benchmarks.json and benchmarks.md under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "benchmarks.md").write_text(markdown(doc), encoding="utf-8")


def _number(value: float) -> str:
    return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"


def _shown(record: dict[str, Any]) -> tuple[str, float]:
    """Unit and scale to print a record in: seconds under one second as milliseconds."""
    return ("ms", 1e3) if record["unit"] == "s" and abs(record["median"]) < 1 else (record["unit"], 1.0)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _verdict(record: dict[str, Any]) -> str:
    return "report only" if record["pass"] is None else ("**pass**" if record["pass"] else "**FAIL**")


def markdown(doc: dict[str, Any]) -> str:
    """The Markdown page: context, ratios with goals, measurements, the scaling table and how things were measured."""
    m = doc["machine"]
    lines = ["# clipsteer benchmarks", "",
             f"Numbers from a **{m['cpu_count']}-core CPU machine** ({m['cpu_model']}, no GPU), shared with other "
             "work while they ran, so every comparison was taken in one run of one process with its two sides "
             "interleaved (A, B, A, B, ... after a warm-up round) and is reported as the median over rounds with "
             "the min and max. A ratio's rounds are paired: each round's A divided by the same round's B. Pass or fail "
             "compares the median with the goal; a ratio whose min-max range straddles its goal is within the noise "
             "of this machine.", "",
             f"- command: `{doc['command']}` ({'quick smoke settings' if doc['settings']['quick'] else 'full settings'}, "
             f"{doc['wall_time_s']:.0f} s in all)",
             f"- date: {doc['date']}; torch {m['torch']}, open_clip {m['open_clip']}, Python {m['python']}",
             f"- torch threads for every timing: {m['torch_threads_used']} (torch's default here: "
             f"{m['torch_threads_default']}); load average at start {_load(m['load_average_at_start'])}, at end "
             f"{_load(m['load_average_at_end'])}",
             "- a cProfile of one harness training call: `python -m benchmarks.profile_step METHOD` (top 15 by "
             "cumulative time)", ""]
    if doc["ratios"]:
        lines += ["## Ratios", "", _row(["group", "ratio", "median", "min", "max", "rounds", "goal", "result", "note"]),
                  _row(["---"] * 2 + ["---:"] * 5 + ["---"] * 2)]
        lines += [_row([r["group"], r["name"], f"{r['median']:.3f}", f"{r['min']:.3f}", f"{r['max']:.3f}",
                        str(r["repeats"]), r["goal"] or "-", _verdict(r), r["note"]]) for r in doc["ratios"]]
        worst = _worst(doc["ratios"])
        if worst:
            lines += ["", f"Closest to (or furthest past) its goal: **{worst['name']}** at {worst['median']:.3f} "
                      f"(goal {worst['goal']})."]
        lines.append("")
    if doc["measurements"]:
        lines += ["## Measurements", "", _row(["group", "measurement", "median", "min", "max", "unit", "repeats", "goal"]),
                  _row(["---"] * 2 + ["---:"] * 3 + ["---", "---:", "---"])]
        for r in doc["measurements"]:
            unit, scale = _shown(r)
            goal = "-" if r["goal"] is None else f"{r['goal']} {r['unit']}: {_verdict(r)}"
            lines.append(_row([r["group"], r["name"], _number(r["median"] * scale), _number(r["min"] * scale),
                               _number(r["max"] * scale), unit, str(r["repeats"]), goal]))
        lines.append("")
    lines += _scaling(doc)
    lines += _facts(doc["facts"])
    lines += ["## How each number was taken", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    return "\n".join(lines)


def _load(load: list[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load) + " (1, 5, 15 min)"


def _worst(ratios: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The goal-carrying ratio with the least margin (median relative to its limit)."""
    def margin(r: dict[str, Any]) -> float:
        op, limit = r["goal"].split()
        return r["median"] / float(limit) if op.startswith("<") else float(limit) / r["median"]
    scored = [r for r in ratios if r["goal"]]
    return max(scored, key=margin) if scored else None


def _scaling(doc: dict[str, Any]) -> list[str]:
    table = doc["scaling_table"]
    if not table:
        return []
    batches = sorted({row["batch"] for row in table})
    presets = list(dict.fromkeys(row["preset"] for row in table))
    cell = {(row["preset"], row["batch"]): row for row in table}
    lines = ["## Step time by model and batch size (clip, bare loop, 1 thread)", "",
             "Milliseconds per step (median over rounds) and samples per second.", "",
             _row(["preset", "GFLOPs/pair"] + [f"b{b} ms" for b in batches] + [f"b{b} samples/s" for b in batches]),
             _row(["---"] + ["---:"] * (1 + 2 * len(batches)))]
    for p in presets:
        lines.append(_row([p, f"{cell[(p, batches[0])]['gflops_per_pair']:.4g}"]
                          + [f"{cell[(p, b)]['step_ms']:.1f}" for b in batches]
                          + [f"{cell[(p, b)]['samples_per_s']:,.0f}" for b in batches]))
    skipped = doc["facts"].get("scaling", {}).get("scaling_skipped", {})
    lines += [""] + [f"- skipped {name}: {why}" for name, why in skipped.items()]
    return lines + ["", "![step time against batch size](step_time.png)", ""]


def _facts(facts: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    use = facts.get("evaluation", {}).get("text_encoder_per_task")
    if use:
        lines += ["## Text encoder use per task (one evaluate() call)", "",
                  _row(["task", "encode_text calls", "rows encoded", "prompts", "each prompt encoded once"]),
                  _row(["---", "---:", "---:", "---:", "---"])]
        lines += [_row([t, str(u["encode_text_calls"]), str(u["rows_encoded"]), str(u["prompts"]),
                        "yes" if u["each_prompt_encoded_once"] else "no"]) for t, u in use.items()]
        lines.append("")
    return lines

