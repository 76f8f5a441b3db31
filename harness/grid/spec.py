"""Expand a grid into run specs (harness.grid.runspec.RunSpec), each hashed into a stable run id.

A spec holds everything that determines a run's result (data, model, method with all its
parameters resolved, budget, seed, optimisation, evaluation tasks, reference). How it is
launched (executor, threads) is not part of it. Change anything in it and the id changes.
A shard-set pool enters with its spec made absolute and its manifest's SHA-256, which names
every shard's SHA-256: rewritten shards give other run ids.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from harness import io
from harness.data.poolconfig import embedded_pool_size
from harness.errors import ConfigError, did_you_mean
from harness.eval.tasks import SUITE_VERSION
from harness.grid import tuning
from harness.grid.config import (
    GridConfig,
    MethodConfig,
    ReferenceConfig,
    StageConfig,
    load_grid,
    other_grid_file,
    pool_config,
)
from harness.grid.runspec import RunSpec, identity
from harness.run.compute import samples_for_c_total
from harness.run.refcache import check_cache
from harness.run.reference import CheckpointReference, PretrainedReference, Reference, RunReference
from harness.run.trainconfig import TrainConfig
from methods import get_method, needs_reference


def run_id(spec: RunSpec) -> str:
    """A readable, stable id: stage-method-model-samples-seed plus 10 hex digits of the hash of the identity
    of the spec's JSON form."""
    return (f"{spec.stage}-{spec.method.name}-{spec.model}-n{spec.samples_seen}-s{spec.seed}-"
            f"{io.digest(identity(spec.to_json()))}")


def expand(grid: GridConfig, results: Path | None = None) -> list[RunSpec]:
    """All run specs of the grid, stage by stage, each with its run id (stable across calls). Runs whose
    method takes a value a tuning stage chooses are left out until that stage is done under `results`
    (harness.grid.tuning; `expand_waiting` names them)."""
    return expand_waiting(grid, results)[0]


def expand_waiting(grid: GridConfig, results: Path | None = None) -> tuple[list[RunSpec], list[str]]:
    """`expand`'s specs, and what it leaves out: one line per stage, method and model that waits for a tuning
    stage (one expansion for callers that need both)."""
    specs: list[RunSpec] = []
    stage_runs: dict[str, RunSpec] = {}
    seen: dict[str, str] = {}
    digests: dict[str, str] = {}  # shard spec -> its manifest's SHA-256, read once per expansion
    tuners: list[_Tuner] = []  # the tuning stages so far
    wait: list[str] = []
    for i, stage in enumerate(grid.stages):
        data_key = f"stages[{i}].data" if "shards" in stage.data else "data"
        waited = len(wait)
        stage_specs = list(_stage_specs(grid, stage, stage_runs, data_key, digests, f"stages[{i}].budget.c_total",
                                        tuners, wait))
        _check_caches(stage_specs, grid.source, f"stages[{i}].reference.cache")
        for spec in stage_specs:
            if spec.run_id in seen:
                raise ConfigError(grid.source, f"stages[{i}]", f"run {spec.run_id} appears twice (also in stage "
                                  f"{seen[spec.run_id]!r}): repeated seed, model, budget or method with the same parameters")
            seen[spec.run_id] = stage.name
        specs.extend(stage_specs)
        if len(stage_specs) == 1:
            stage_runs[stage.name] = stage_specs[0]
        if stage.tune is not None:
            tuners.append(_Tuner.of(stage, stage_specs, len(wait) > waited, results))
    return specs, wait


def _stage_specs(grid: GridConfig, stage: StageConfig, stage_runs: dict[str, RunSpec], data_key: str,
                 digests: dict[str, str], budget_key: str, tuners: list[_Tuner],
                 wait: list[str]) -> Iterator[RunSpec]:
    merged = {**grid.data, **stage.data}
    train = TrainConfig(**{**grid.train, **stage.train})
    if stage.tune is not None and not merged.get("validation"):
        merged["validation"] = tuning.default_validation(pool_config(merged))
    data = _plain(asdict(pool_config(merged)))
    left = embedded_pool_size(pool_config(data)) if data["validation"] and data["shards"] is None else None
    if left is not None and left < train.batch_size:
        raise ConfigError(grid.source, f"{data_key}.validation", f"{data['validation']} pairs held out of a pool of "
                          f"{left + data['validation']} leave less than a batch ({train.batch_size}) to train on")
    if data["shards"] is not None:
        data = _shard_data(data, grid.source, data_key, digests)
    reference = _reference(grid, stage.reference, stage_runs)
    for method in stage.methods:
        cls = get_method(method.name)
        for candidate in stage.tune.candidates() if stage.tune else [{}]:
            for model in stage.models:
                resolved, tuned = _tuned(MethodConfig(method.name, cls.check({**method.params, **candidate})),
                                         method, model, stage, tuners)
                if resolved is None:
                    wait.append(f"stage {stage.name}: {method.name} on {model} waits for tuning stage {tuned}")
                    continue
                base = RunSpec(grid=grid.name, stage=stage.name, method=resolved, model=model,
                               samples_seen=train.batch_size, seed=0, data=data, train=train,
                               eval_tasks=() if stage.tune else grid.eval_tasks, eval_suite=SUITE_VERSION,
                               reference=reference if needs_reference(cls) else None, run_id="",
                               tune=stage.tune.names if stage.tune else (), tuned=tuned)
                for samples in stage.samples_seen or (_budget_samples(stage.c_total, base, grid.source, budget_key),):
                    for seed in stage.seeds:
                        spec = replace(base, samples_seen=samples, seed=seed)
                        yield replace(spec, run_id=run_id(spec))


@dataclass(frozen=True)
class _Tuner:
    """A tuning stage met so far in an expansion: its stage, the (method configuration, model) keys its runs tune,
    whether some of its runs still wait for an earlier tuning stage, and its choices once done."""

    stage: StageConfig
    keys: frozenset[tuple[str, str]]
    incomplete: bool
    chosen: dict[tuple[str, str], dict[str, Any]] | None

    @classmethod
    def of(cls, stage: StageConfig, specs: list[RunSpec], waited: bool, results: Path | None) -> _Tuner:
        keys = frozenset((tuning.config_key(s.method.name, s.method.params, stage.tune.names), s.model) for s in specs)
        return cls(stage, keys, waited, None if waited else tuning.choose(specs, stage.tune, results))


def _tuned(method: MethodConfig, raw: MethodConfig, model: str, stage: StageConfig,
           tuners: list[_Tuner]) -> tuple[MethodConfig | None, Any]:
    """`method` (resolved) with the values that earlier tuning stages chose for it on `model`, and which stage
    chose which parameter; (None, the tuning stage's name) while a stage that tunes it is not done. Parameters
    the method sets itself (`raw`) or that `stage` tunes are left alone."""
    params, tuned = dict(method.params), {}
    for tuner in tuners:
        names = tuner.stage.tune.names
        if any(p in raw.params for p in names) or (stage.tune and set(names) & set(stage.tune.names)):
            continue
        key = (tuning.config_key(method.name, params, names), model)
        if tuner.incomplete and any(m.name == method.name for m in tuner.stage.methods):
            return None, tuner.stage.name
        if key not in tuner.keys:
            continue
        if tuner.chosen is None:
            return None, tuner.stage.name
        params.update(tuner.chosen[key])
        tuned.update(dict.fromkeys(names, tuner.stage.name))
    return MethodConfig(method.name, params), tuned


def _borrowed(grid: GridConfig, ref: ReferenceConfig, how: dict[str, Any]) -> RunReference:
    """The single run of stage `ref.stage` of grid file `ref.grid`, borrowed: known by the id this grid would
    give it (the spec is the same but for the grid's name), loaded from that grid's results directory beside the
    sweep's (harness.run.reference.RunReference.borrowed)."""
    other = load_grid(other_grid_file(grid.source, ref.grid, "reference.grid"))
    runs = [s for s in expand(other) if s.stage == ref.stage]
    if len(runs) != 1:
        raise ConfigError(grid.source, "reference.stage", f"grid {other.source} has {len(runs)} runs in stage "
                          f"{ref.stage!r}{did_you_mean(ref.stage, [s.name for s in other.stages])}; a reference "
                          "stage has exactly one")
    theirs = runs[0]
    ours = replace(theirs, grid=grid.name)
    borrowed = f"{Path(other.source).stem}/{theirs.run_id}"
    return RunReference(run_id=run_id(ours), model=theirs.model, borrowed=borrowed, **how)


def _budget_samples(c_total: float, spec: RunSpec, src: str, key: str) -> int:
    """A `budget: {c_total: X}` stage's samples seen for the method and model of `spec` (harness.run.compute)."""
    try:
        return samples_for_c_total(c_total, spec, get_method(spec.method.name).for_accounting(spec.method.params))
    except ValueError as e:
        raise ConfigError(src, key, str(e)) from None


def _reference(grid: GridConfig, ref: ReferenceConfig | None, stage_runs: dict[str, RunSpec]) -> Reference | None:
    """The stage's reference as a spec names it: the single run of the stage the grid names, a checkpoint
    made absolute with its SHA-256, or a pretrained tag, or another grid's run (borrowed); with how its features
    are read."""
    if ref is None:
        return None
    how = {"features": ref.features, "cache": None if ref.cache is None else str(Path(ref.cache).resolve())}
    if ref.grid is not None:
        return _borrowed(grid, ref, how)
    if ref.stage is not None:
        target = stage_runs[ref.stage]
        return RunReference(run_id=target.run_id, model=target.model, **how)
    if ref.checkpoint is not None:
        path = Path(ref.checkpoint).resolve()
        return CheckpointReference(path=str(path), sha256=io.file_sha256(path), model=ref.model, **how)
    return PretrainedReference(tag=ref.pretrained, model=ref.model, **how)


def _shard_data(data: dict[str, Any], src: str, key: str, digests: dict[str, str]) -> dict[str, Any]:
    """A shard-set pool's data: its spec made absolute and its manifest's SHA-256 (which a grid may pin: it must
    match; found in `digests` or added to it); the embedded pool's fields, unused, are left out."""
    from harness.data.shardset import absolute_shards, shard_set  # reading shards needs torch: only for such a pool

    shards = absolute_shards(data["shards"])
    if shards not in digests:
        try:
            digests[shards] = shard_set(shards).sha256
        except ValueError as e:
            raise ConfigError(src, f"{key}.shards", str(e)) from None
    digest = digests[shards]
    if data["manifest_sha256"] not in (None, digest):
        raise ConfigError(src, f"{key}.manifest_sha256", f"the grid pins {data['manifest_sha256']}, but the manifest "
                          f"of {shards} has SHA-256 {digest}: the shard set changed")
    return {"lazy": data["lazy"], "manifest_sha256": digest, "shards": shards}


def _check_caches(specs: list[RunSpec], src: str, key: str) -> None:
    """Refuse an explicit feature cache that another reference, or another pool, made."""
    for spec in specs:
        if spec.reference is not None and spec.reference.cache is not None:
            try:
                check_cache(Path(spec.reference.cache), spec.reference, spec.data)
            except ValueError as e:
                raise ConfigError(src, key, str(e)) from None


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(d.items())}
