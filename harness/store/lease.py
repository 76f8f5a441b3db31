"""Leases on run directories: at most one live process works on a run, and a dead owner's lease lapses.

A lease is `<run dir>/lease.json`: a random token, the owning processes (host, pid, process start time,
last heartbeat) and an expiry time that a heartbeat thread pushes forward. It is live while it has not
expired and one of its owners lives: on the owners' own host while its process still exists, on another
node while its own heartbeat is younger than TTL_S. So a lease of a SIGKILLed process on this host lapses
at once, one held from another node when its heartbeats stop. Every change happens under an flock on
`<run dir>/.lease.lock`, so two launchers never both take a run.

The launcher takes the lease before it submits a run and hands its token to the job, which joins it
(`adopt`); each owner lets go of it alone (`release`), and the lease goes only with its last live owner,
so a job whose launcher or controller died keeps the run, and a launcher whose job system lost track of
a job still alive does not free the run (`others_alive`). A process that is no longer an owner (its lease
released or taken over) stops before it writes again (`confirm`). A run submitted to Slurm is also owned
by its Slurm job (`hand_to_slurm`): it stays held while squeue lists the job, even after the launcher exits.
"""
from __future__ import annotations

import math
import os
import secrets
import socket
import subprocess
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import io
from harness.store.rundir import RunDir

TTL_S = 120.0  # a lease not renewed for this long is dead, whoever holds it
BEAT_S = TTL_S / 4
SQUEUE_TIMEOUT_S = 30
SQUEUE_CACHE_S = 10.0
_squeue_answers: dict[str, tuple[float, bool | None]] = {}  # job id -> (when asked, squeue's answer)
SLURM_QUEUED = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
                "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT"}


class LeaseLost(RuntimeError):
    """This process's lease on a run was released or taken over: it must not write the run's result."""


@dataclass(frozen=True)
class Lease:
    """A lease this process holds (or joined) on run directory `rdir`."""

    rdir: Path
    token: str


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid apart;
    None where /proc does not say, or for a zombie (a killed process nobody has reaped yet)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()), "beat": time.time()}


def _is_me(owner: dict[str, Any]) -> bool:
    return (owner.get("host"), owner.get("pid")) == (socket.gethostname(), os.getpid())


def _owner_alive(owner: dict[str, Any]) -> bool:
    """Whether an owner process still runs: on this host, its process exists; on another, its own heartbeat
    is younger than TTL_S (an owner recorded without one counts as alive: the lease's expiry decides)."""
    if owner["host"] != socket.gethostname():
        return time.time() < owner.get("beat", math.inf) + TTL_S
    if owner.get("start") is not None:  # Linux: the same pid started at the same time, and not a zombie
        return _start_time(owner["pid"]) == owner["start"]
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _slurm_job_queued(job_id: str) -> bool | None:
    """Whether Slurm still has the job (or array task `<array>_<index>`) pending or running (squeue); None where
    squeue cannot say. One squeue call answers for every task of an array, and an answer is kept SQUEUE_CACHE_S
    seconds, so a launcher polling the runs of a 1,000-task array does not flood squeue."""
    now = time.monotonic()
    asked = _squeue_answers.get(job_id)
    if asked is not None and now - asked[0] < SQUEUE_CACHE_S:
        return asked[1]
    answers: dict[str, bool | None] = {}
    try:
        out = subprocess.run(["squeue", "-h", "--array", "-j", job_id.split("_")[0], "-o", "%i %T"],
                             capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
        if out.returncode != 0:
            answers[job_id] = False if "invalid job id" in out.stderr.lower() else None
        else:
            for line in out.stdout.splitlines():
                task, _, state = line.strip().partition(" ")
                answers[task] = answers.get(task, False) or state.strip() in SLURM_QUEUED
            answers.setdefault(job_id, False)
    except (OSError, subprocess.TimeoutExpired):
        answers[job_id] = None
    _squeue_answers.update({task: (now, answer) for task, answer in answers.items()})
    return answers[job_id]


def is_live(record: dict[str, Any] | None) -> bool:
    """Whether a lease record still holds its run: a Slurm job owning it is queued or running (as squeue
    says), or the lease has not expired and it has a Slurm owner or an owning process that lives."""
    if not record:
        return False
    jobs = [o["slurm_job"] for o in record["owners"] if "slurm_job" in o]
    if any(_slurm_job_queued(job) for job in jobs):
        return True
    return time.time() < record["expires"] and (bool(jobs) or any(_owner_alive(o) for o in record["owners"]
                                                                   if "slurm_job" not in o))


def read(rdir: Path) -> dict[str, Any] | None:
    """The lease record of a run directory, or None."""
    path = RunDir(rdir).lease
    try:
        return io.read_json(path)
    except FileNotFoundError:
        return None


def holder(rdir: Path) -> dict[str, Any] | None:
    """The live lease on a run, or None when nobody works on it."""
    record = read(rdir)
    return record if is_live(record) else None


def describe(record: dict[str, Any]) -> str:
    """'host:pid, slurm job N' of a lease's owners, for messages."""
    return ", ".join(f"slurm job {o['slurm_job']}" if "slurm_job" in o else f"{o['host']}:{o['pid']}"
                     for o in record["owners"])


def _locked(rdir: Path) -> AbstractContextManager[None]:
    return io.flocked(RunDir(rdir).lease_lock)


def acquire(rdir: Path) -> Lease | None:
    """Take the lease on a run, or None if a live process holds it (a dead owner's lease is taken over)."""
    with _locked(rdir):
        if is_live(read(rdir)):
            return None
        token = secrets.token_hex(8)
        now = time.time()
        io.write_json(RunDir(rdir).lease, {"token": token, "owners": [_me()], "since": now, "expires": now + TTL_S})
        return Lease(Path(rdir), token)


def adopt(rdir: Path, token: str) -> Lease:
    """Join the lease a launcher took for this process (LeaseLost if it is gone or another's)."""
    lease = Lease(Path(rdir), token)
    renew(lease)
    return lease


def renew(lease: Lease) -> None:
    """Push the lease's expiry forward and record this process among its owners."""
    with _locked(lease.rdir):
        record = read(lease.rdir)
        if record is None or record["token"] != lease.token:
            raise LeaseLost(f"the lease on {lease.rdir.name} was released or taken over")
        owners = [o for o in record["owners"] if not _is_me(o)] + [_me()]
        io.write_json(RunDir(lease.rdir).lease, {**record, "owners": owners, "expires": time.time() + TTL_S})


def hand_to_slurm(lease: Lease, job_id: str) -> None:
    """Make Slurm job `job_id` an owner of the lease: while squeue lists the job (pending behind its
    dependencies, running, requeued) the run stays held, whether or not the launcher still runs."""
    with _locked(lease.rdir):
        record = read(lease.rdir)
        if record is None or record["token"] != lease.token:
            raise LeaseLost(f"the lease on {lease.rdir.name} was released or taken over")
        io.write_json(RunDir(lease.rdir).lease, {**record, "owners": record["owners"] + [{"slurm_job": str(job_id)}]})


def _other_owners(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The owner processes of a lease record other than this process (Slurm jobs left out)."""
    return [o for o in record["owners"] if "slurm_job" not in o and not _is_me(o)]


def release(lease: Lease) -> None:
    """Let go of the lease: this process leaves its owners, and the lease goes once no other owner process
    lives (nothing happens if it is already gone or another's)."""
    with _locked(lease.rdir):
        record = read(lease.rdir)
        if record is None or record["token"] != lease.token:
            return
        others = _other_owners(record)
        if any(_owner_alive(o) for o in others):
            io.write_json(RunDir(lease.rdir).lease, {**record, "owners": others + [o for o in record["owners"]
                                                                                   if "slurm_job" in o]})
        else:
            RunDir(lease.rdir).lease.unlink()


def others_alive(lease: Lease) -> list[dict[str, Any]]:
    """The owner processes of this lease, other than this process, that still live (none if the lease is
    gone or another's): while one does, the run is being worked on, whatever a job system says."""
    with _locked(lease.rdir):
        record = read(lease.rdir)
    if record is None or record["token"] != lease.token:
        return []
    return [o for o in _other_owners(record) if _owner_alive(o)]


def confirm(rdir: Path) -> None:
    """Raise LeaseLost unless this process is an owner of the run's lease: one whose lease was released or
    taken over (its launcher or job system gave the run up) stops before it writes again."""
    record = read(rdir)
    if record is None or not any(_is_me(o) for o in record["owners"]):
        raise LeaseLost(f"this process no longer holds the lease on {Path(rdir).name}: it stops here")


class Heartbeat:
    """Renews a set of leases from a daemon thread every BEAT_S seconds until closed. A lease found
    released or taken over is dropped from the set and remembered in `lost`."""

    def __init__(self, leases: list[Lease] = ()) -> None:
        self._leases, self.lost = set(leases), set()
        self._stop, self._mutex = threading.Event(), threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lease-heartbeat")
        self._thread.start()

    def add(self, lease: Lease) -> None:
        with self._mutex:
            self._leases.add(lease)

    def discard(self, lease: Lease) -> None:
        with self._mutex:
            self._leases.discard(lease)

    def _run(self) -> None:
        while not self._stop.wait(BEAT_S):
            with self._mutex:
                leases = list(self._leases)
            for lease in leases:
                try:
                    renew(lease)
                except LeaseLost:
                    with self._mutex:
                        self._leases.discard(lease)
                        self.lost.add(lease)
                except OSError:
                    pass  # a full or flaky disk: try again at the next beat; the expiry leaves room for it

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Heartbeat":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
