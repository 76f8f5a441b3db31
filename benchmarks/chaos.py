"""python -m benchmarks.chaos [--trials N] [--seed S] [--out DIR]: seeded trials of SIGKILLs from outside.

Each trial runs real `clipsteer run` processes on a tiny sweep (a clip reference, then drrho steered by it;
tiny-s, a checkpoint every 2 steps) and SIGKILLs, at random moments, a launcher, a worker's submitit
controller, a worker task or a launch's whole process group, with relaunches, some of them concurrent. Then
one undisturbed launch must exit 0 and leave (`check`): metrics, scores and weights identical to an undisturbed
sweep's, no run trained to its last step twice, no temporary file, no live lease, no stray process. The chaos
test (tests/test_chaos.py) runs one trial; this script runs many and writes a trial table to
DIR/chaos.md and DIR/chaos.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GRID = """
name: chaos
data: {{sources: [shapes], shapes_count: 256, noise: 0.2}}
eval: {{tasks: [shapes_retrieval]}}
train: {{batch_size: 32, warmup_steps: 1, checkpoint_every: 2, log_every: 1}}
executor: {{kind: {kind}, max_parallel: 2, timeout_min: 10}}
stages:
  - name: ref
    methods: [clip]
    models: [tiny-s]
    samples_seen: [128]
  - name: steered
    reference: ref
    methods: [drrho]
    models: [tiny-s]
    samples_seen: [128]
"""
TARGETS = ("launcher", "controller", "task", "group")
ROLES = {"submitit.local._local": "controller", "submitit.core._submit": "task"}
LAUNCH_TIMEOUT_S = 600
STRAY_WAIT_S = 60
TARGET_WAIT_S = 15
DEFAULT_OUT = Path("results") / "benchmarks"


def write_grid(folder: Path, kind: str) -> Path:
    """The chaos sweep's grid file in `folder`, run by executor `kind` (local for trials, debug for the baseline)."""
    path = Path(folder) / f"chaos-{kind}.yaml"
    path.write_text(GRID.format(kind=kind))
    return path


def fingerprint(results: Path) -> dict[str, Any]:
    """Per run: its scores, its metrics lines (less their clock times) and a SHA-256 of its final weights; what
    a disturbed sweep must reproduce exactly."""
    import torch

    from harness import io
    from harness.store.rundir import RunDir
    prints = {}
    for rdir in RunDir.all(results):
        if not rdir.final_model.exists():  # a feature cache, or a run that never finished
            prints[rdir.path.name] = None
            continue
        weights = torch.load(rdir.final_model, weights_only=True)["state_dict"]
        digest = hashlib.sha256()
        for name in sorted(weights):
            digest.update(name.encode() + weights[name].cpu().contiguous().numpy().tobytes())
        prints[rdir.path.name] = {"eval": io.read_json(rdir.eval),
                                  "metrics": [{k: v for k, v in m.items() if k != "time_s"}
                                              for m in io.read_jsonl(rdir.metrics)],
                                  "weights": digest.hexdigest()}
    return prints


def baseline(folder: Path) -> dict[str, Any]:
    """The undisturbed sweep's fingerprint, run in this process (debug executor: the same runs, bit for bit;
    no report, which the fingerprint does not read)."""
    from harness.grid.config import load_grid
    from harness.grid.spec import expand
    from harness.launch.launcher import launch
    grid = load_grid(write_grid(folder, "debug"))
    report = launch(expand(grid), Path(folder) / "baseline", grid.executor, log=lambda *_: None)
    if report.failed:
        raise RuntimeError(f"the undisturbed sweep failed: {report.failed}")
    return fingerprint(Path(folder) / "baseline")


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (session id, command line)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if stat[0] != "Z":
            found[int(entry)] = (int(stat[3]), cmdline)
    return found


def _members(sessions: set[int]) -> dict[int, str]:
    """The live processes of the launches whose sessions are `sessions`, with their role: launcher,
    controller (submitit's, of a worker) or task (a worker)."""
    members = {}
    for pid, (session, cmdline) in _processes().items():
        if session in sessions:
            role = next((r for marker, r in ROLES.items() if marker in cmdline), None)
            members[pid] = role or ("launcher" if pid == session else "other")
    return members


def _kill(target: str, launches: list[subprocess.Popen], rng: random.Random) -> str | None:
    """SIGKILL one process of kind `target` (or a whole launch's group) among the live launches, waiting up to
    TARGET_WAIT_S for one to exist (workers start seconds after their launcher); what was killed."""
    live = [p for p in launches if p.poll() is None]
    if target == "group":
        if not live:
            return None
        victim = rng.choice(live)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()  # reaped: counted as dead when the trial decides whether to relaunch
        return f"group {victim.pid}"
    deadline = time.monotonic() + TARGET_WAIT_S
    while not (pids := sorted(pid for pid, role in _members({p.pid for p in launches}).items() if role == target)):
        if time.monotonic() > deadline or not any(p.poll() is None for p in launches):
            return None
        time.sleep(0.2)
    pid = rng.choice(pids)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    for launch in launches:
        if launch.pid == pid:
            launch.wait()
    return f"{target} {pid}"


def _launch(grid: Path, results: Path, log: Path) -> subprocess.Popen:
    """`clipsteer run` in a session of its own (so its group, workers included, can be killed at once)."""
    out = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "harness", "run", str(grid), "--results", str(results)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()


@dataclass
class Trial:
    """What one trial did and found: its kills (what, seconds after the trial began), its launches (the most
    that ran at once), the final launch's exit code, and every check that failed (empty: it passed)."""

    seed: int
    kills: list[str] = field(default_factory=list)
    launches: int = 0
    concurrent: int = 0
    final_exit: int | None = None
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)


def trial(seed: int, folder: Path, expected: dict[str, Any], max_kills: int = 4) -> Trial:
    """One seeded trial in `folder`: 2 to `max_kills` kills among 2 to 5 launches (up to 3 at once, relaunching
    after each kill), then an undisturbed launch, then the checks against `expected` (a baseline fingerprint)."""
    rng, folder, record = random.Random(seed), Path(folder), Trial(seed)
    grid, results, log = write_grid(folder, "local"), folder / "results", folder / "launches.log"
    start, launches, sessions = time.monotonic(), [], set()

    def relaunch(count: int) -> None:
        for _ in range(count):
            launches.append(_launch(grid, results, log))
            sessions.add(launches[-1].pid)
        record.launches += count
        record.concurrent = max(record.concurrent, sum(p.poll() is None for p in launches))

    relaunch(rng.randint(1, 2))
    for _ in range(rng.randint(2, max_kills)):
        time.sleep(rng.uniform(0.5, 10.0))
        target = rng.choice(TARGETS)
        killed = _kill(target, launches, rng)
        record.kills.append(f"{killed or target + ' (none alive)'} @ {time.monotonic() - start:.0f}s")
        if rng.random() < 0.6 or not any(p.poll() is None for p in launches):
            relaunch(rng.randint(1, 2) if sum(p.poll() is None for p in launches) < 3 else 0)
    for p in launches:
        try:
            p.wait(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            record.problems.append(f"launch {p.pid} still ran after {LAUNCH_TIMEOUT_S} s")
            os.killpg(p.pid, signal.SIGKILL)
    final = _launch(grid, results, log)
    sessions.add(final.pid)
    record.final_exit = final.wait(timeout=LAUNCH_TIMEOUT_S)
    record.launches += 1
    record.problems += check(results, expected, sessions)
    record.wall_s = time.monotonic() - start
    if record.final_exit != 0:
        record.problems.insert(0, f"the final launch exited {record.final_exit}: {log.read_text()[-2000:]}")
    return record


def check(results: Path, expected: dict[str, Any], sessions: set[int]) -> list[str]:
    """What is wrong with a sweep's results after its final launch: differences from `expected`, runs trained
    to the end twice, temporary files, live leases, and processes of the trial's launches still alive."""
    from harness import io
    from harness.store import lease
    from harness.store.rundir import RunDir
    problems = []
    deadline = time.monotonic() + STRAY_WAIT_S  # workers of killed launches finish their task, then leave
    while (stray := _members(sessions)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if stray:
        problems.append(f"processes still alive: {stray}")
        for pid in stray:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    got = fingerprint(results)
    problems += [f"{run_id}: {'missing' if run_id not in got else 'differs from the undisturbed sweep'}"
                 for run_id in expected if got.get(run_id) != expected[run_id]]
    for rdir in RunDir.all(results):
        trained = [a for a in io.read_jsonl(rdir.attempts) if "trained" in a and a["resumed_from"] < a["trained"]]
        if len(trained) > 1:
            problems.append(f"{rdir.path.name} trained to its last step {len(trained)} times")
        if lease.holder(rdir.path) is not None:
            problems.append(f"{rdir.path.name} has a live lease: {lease.read(rdir.path)}")
    temporaries = sorted(str(p.relative_to(results)) for p in results.rglob(f".*{io.TMP_SUFFIX}"))
    spools = sorted(str(p.relative_to(results)) for p in results.glob("submitit/*workers-*"))
    problems += [f"temporary file left: {t}" for t in temporaries] + [f"worker spool left: {s}" for s in spools]
    return problems


def table(trials: list[Trial]) -> str:
    """The trial table in Markdown."""
    lines = ["| seed | launches | most at once | kills | final exit | wall (s) | result |",
             "|---|---|---|---|---|---|---|"]
    for t in trials:
        result = "pass" if not t.problems else "FAIL: " + "; ".join(t.problems).replace("|", "/")[:300]
        lines.append(f"| {t.seed} | {t.launches} | {t.concurrent} | {', '.join(t.kills)} | {t.final_exit} | "
                     f"{t.wall_s:.0f} | {result} |")
    return "\n".join(lines)


def write(out: Path, command: str, trials: list[Trial], wall_s: float, planned: int) -> int:
    """chaos.json and chaos.md under `out` (rewritten after each trial, so a cut-short run keeps what it did);
    how many trials passed."""
    passed = sum(not t.problems for t in trials)
    doc = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "cpu_count": os.cpu_count(), "wall_time_s": wall_s, "planned": planned, "passed": passed,
           "trials": [asdict(t) for t in trials]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "chaos.md").write_text(
        f"# Chaos trials\n\n`{command}` on {doc['date']}, a {doc['cpu_count']}-core CPU machine shared with "
        f"other work ({wall_s:.0f} s in all): {passed} of {len(trials)} trials passed"
        f"{'' if len(trials) == planned else f' ({planned} planned; cut short)'}. Each trial SIGKILLs launchers, "
        "worker controllers, worker tasks and whole launch groups of real `clipsteer run` processes from outside "
        "at random moments, relaunching (some launches concurrent), then runs one undisturbed launch and checks: "
        "exit 0, metrics, scores and weights identical to an undisturbed sweep, no run trained to its last step "
        "twice, no temporary file, no live lease, no stray process (benchmarks/chaos.py). A kill of a kind with "
        "no live process when it came is shown as `(none alive)`.\n\n" + table(trials) + "\n", encoding="utf-8")
    return passed


def main(argv: list[str]) -> int:
    """Run the trials (seeds S, S+1, ...), print each row and write the table; exit 1 if any trial failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="how many trials (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="the first trial's seed (default 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    command, begun, trials = " ".join(["python -m benchmarks.chaos", *argv]), time.monotonic(), []
    with tempfile.TemporaryDirectory(prefix="clipsteer-chaos-") as scratch:
        expected = baseline(Path(scratch))
        for seed in range(args.seed, args.seed + args.trials):
            (Path(scratch) / str(seed)).mkdir()
            trials.append(trial(seed, Path(scratch) / str(seed), expected))
            print(table(trials[-1:]).splitlines()[-1], flush=True)
            passed = write(args.out, command, trials, time.monotonic() - begun, args.trials)
    print(f"{passed}/{len(trials)} trials passed; wrote {args.out / 'chaos.md'}")
    return 0 if passed == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
