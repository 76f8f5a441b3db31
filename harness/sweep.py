"""A sweep end to end: expand the grid, launch what is missing, write the report."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from harness import io, provenance
from harness.errors import ConfigError
from harness.grid.config import ExecutorConfig, GridConfig
from harness.grid.results import SPECS
from harness.grid.runspec import RunSpec
from harness.grid.spec import expand, expand_waiting
from harness.launch.launcher import LaunchReport, launch
from harness.launch.plan import pending
from harness.launch.status import orphans
from harness.report.configs import PARAMS
from harness.report.leaderboard import write_report
from harness.report.tuning import TUNE, TUNED, split
from harness.run import refcache
from harness.run.reference import RunReference
from harness.store import records


@dataclass
class SweepOutcome:
    launch: LaunchReport
    report_paths: dict[str, Path]


def cache_references(grid: GridConfig, results: Path, executor: ExecutorConfig) -> LaunchReport:
    """Build the reference-feature caches that `grid`'s runs read and that are not built yet."""
    specs = expand(grid, Path(results))
    check_borrowed(grid, specs, Path(results))
    units = refcache.cache_units(specs)
    if not units:
        named = any(s.reference is not None and s.reference.cache is not None for s in specs)
        raise ConfigError(grid.source, "stages", "every cache the grid reads is named by a 'cache' directory: "
                          "nothing to build" if named else "no stage reads cached reference features; set "
                          "'features: cached' in a stage's reference to use a cache")
    return launch(units, Path(results), executor)


def run(grid: GridConfig, results: Path, executor: ExecutorConfig, wait: bool = True) -> SweepOutcome:
    """Launch every run of `grid` that is not done under `results`, then write the report; with `wait=False`
    (Slurm) submit what is missing, each stage held by the scheduler until the one it reads is done, and
    return with them queued (no report: `clipsteer run` again, or `clipsteer report`, writes it later)."""
    results = Path(results)
    outcome, launched = LaunchReport(), set()
    while True:  # a pass per round of tuning: runs that wait for a tuning stage are expanded once it is done
        specs, waiting = expand_waiting(grid, results)
        check_borrowed(grid, specs, results)
        with io.writing(results):  # the report's writer lock: specs.json sits beside the report's files
            io.write_json(results / SPECS, {"grid": grid.name, "source": grid.source,
                                            "specs": [s.to_json() for s in specs]})
        ids = {s.run_id for s in specs}
        if ids <= launched:
            break
        _merge(outcome, launch(specs, results, executor, wait=wait), launched)
        launched |= ids
        if not wait:
            break
    outcome.waiting = waiting
    return SweepOutcome(launch=outcome, report_paths=report(results) if wait else {})


def _merge(total: LaunchReport, new: LaunchReport, earlier: set[str]) -> None:
    """Add a later pass's launch to `total`: runs skipped because an earlier pass ran them are not skipped."""
    total.done += new.done
    total.skipped += [r for r in new.skipped if r not in earlier]
    total.by_others += new.by_others
    total.failed.update(new.failed)
    total.queued.update(new.queued)


def check_borrowed(grid: GridConfig, specs: list[RunSpec], results: Path) -> None:
    """Refuse to launch runs still to do under `results` whose reference is another grid's run (in that grid's
    results directory beside `results`) that is not done or has no weights (it is not this sweep's to train): a
    ConfigError naming the run's directory and the command that makes it."""
    for spec in pending(specs, results):
        ref = spec.reference
        if not isinstance(ref, RunReference) or ref.borrowed is None:
            continue
        rdir = ref.run_dir(results)
        state = rdir.state()
        if state == "done" and not rdir.final_model.is_file():
            state = "done but without its weights (a committed results directory keeps records only)"
        if state != "done":
            grid_file = Path(grid.source).with_name(f"{ref.borrowed.split('/')[0]}.yaml")
            raise ConfigError(grid.source, f"stage {spec.stage}: reference", f"the borrowed reference run {rdir.path} "
                              f"is {state}: run its grid first, beside this one (`clipsteer run {grid_file} --results "
                              f"{rdir.path.parent.parent}`)")


EARLIER = " (earlier spec)"


def _saved_specs(results: Path, include_earlier: bool) -> tuple[str, list[RunSpec]]:
    """The grid name and specs recorded in `results` (with `include_earlier`, also the runs of specs the grid no
    longer names, their stage marked EARLIER)."""
    path = Path(results) / SPECS
    if not Path(results).is_dir():
        raise ConfigError(str(results), "", "no such directory")
    if not path.exists():
        raise ConfigError(str(results), "", f"not a results directory of `clipsteer run` (no {SPECS})")
    saved = io.read_json(path)
    specs = [RunSpec.from_json(s) for s in saved["specs"]]
    if include_earlier:
        specs = specs + [replace(s, stage=s.stage + EARLIER) for s in orphans(specs, Path(results))]
    return saved["grid"], specs


def _table(results: Path, specs: list[RunSpec]) -> pd.DataFrame:
    """The results table of `specs` with each run's method parameters as key-sorted JSON in column PARAMS (and,
    for a sweep with tuning stages, which runs tune and which use tuned values: harness.report.tuning)."""
    table = records.results_table(Path(results), specs, refcache.cache_shares(specs, Path(results)))
    if not len(table):
        return table
    params = {s.run_id: json.dumps(s.method.params, sort_keys=True) for s in specs}
    table = table.assign(**{PARAMS: table["run_id"].map(params)})
    if any(s.tune or s.tuned for s in specs):  # harness.report.tuning: which runs tune, which use tuned values
        tune = {s.run_id: ",".join(s.tune) for s in specs if s.tune}
        tuned = {s.run_id: json.dumps(s.tuned, sort_keys=True) for s in specs if s.tuned}
        table = table.assign(**{TUNE: table["run_id"].map(tune), TUNED: table["run_id"].map(tuned)})
    return table


def results_of(results: Path, include_earlier: bool = False) -> tuple[str, pd.DataFrame]:
    """The grid name and results table of the sweep whose runs live in `results` (with each run's method
    parameters as key-sorted JSON in column PARAMS; tuning runs, scored on validation pairs, left out); with
    `include_earlier`, also the runs of specs the grid
    no longer names (their stage marked EARLIER)."""
    name, specs = _saved_specs(results, include_earlier)
    return name, split(_table(results, specs))[0]


def report(results: Path, include_earlier: bool = False, out: Path | None = None) -> dict[str, Path]:
    """Write leaderboard, fit, plots and how the runs were made (harness.provenance) for the grid whose runs live
    in `results`, into `out` (default: `results` itself); with `include_earlier`, also the runs of earlier
    versions of the grid file, marked as such."""
    name, specs = _saved_specs(results, include_earlier)
    made = provenance.summarise(records.provenances(Path(results), specs))
    return write_report(_table(results, specs), Path(out or results), title=f"clipsteer: {name}",
                        runs_dir=Path(results), made=made)
