"""Grid files: YAML in, validated plain dataclasses out; every error names the file and key.

A grid names the data pool, the evaluation tasks, training defaults, an executor and a
list of stages; each stage sweeps methods x models x samples seen x seeds and may point
at an earlier stage (or a checkpoint, or an open_clip pretrained model) as its reference.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.data.poolconfig import EMBEDDED_FIELDS, PoolConfig
from harness.errors import ConfigError, check_int, closest, did_you_mean
from harness.grid.slurm_config import SlurmConfig, parse_slurm
from harness.grid.tuning import ON, TuneConfig, config_key
from harness.presets import check_model_name, preset_names
from harness.run.trainconfig import TrainConfig
from methods import REGISTRY, get_method, needs_reference

EXECUTORS = ("local", "debug", "slurm")
TOP_KEYS = {"name", "description", "data", "eval", "train", "executor", "stages"}
STAGE_KEYS = {"name", "methods", "models", "samples_seen", "budget", "seeds", "reference", "data", "train", "tune"}
# the keys that name a stage's reference: an earlier stage (whose single run it is), a checkpoint or a pretrained
# tag; in a run spec, a RunReference, CheckpointReference or PretrainedReference (harness.run.reference)
REFERENCE_KEYS = {"stage", "checkpoint", "pretrained"}
REFERENCE_FEATURES = ("online", "cached")


@dataclass(frozen=True)
class MethodConfig:
    """A method by registry name, and its parameters (in a run spec: all of them, defaults resolved)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecutorConfig:
    """How runs are launched: submitit's LocalExecutor (subprocesses), DebugExecutor (in-process) or
    Slurm (job arrays, one task per run, requeued on preemption; `slurm` holds its resources)."""

    kind: str = "local"
    max_parallel: int = 2
    cpus_per_job: int = 1
    timeout_min: int = 60
    tasks_per_job: int = 1  # local: processes per run, trained data-parallel (Slurm: slurm.tasks_per_node x nodes)
    slurm: SlurmConfig | None = None


@dataclass(frozen=True)
class ReferenceConfig:
    """A stage's reference model as the grid names it (one of REFERENCE_KEYS set): an earlier stage's single
    run, a local checkpoint, or a pretrained tag; its features computed on the fly or read from a cache (built by
    the sweep, or an explicit directory). harness.grid.spec turns it into the spec's Reference."""

    stage: str | None = None
    grid: str | None = None  # with `stage`: that stage of another grid file beside this one (its run is borrowed)
    checkpoint: str | None = None
    pretrained: str | None = None
    model: str | None = None
    features: str = "online"
    cache: str | None = None


@dataclass(frozen=True)
class StageConfig:
    name: str
    methods: tuple[MethodConfig, ...]
    models: tuple[str, ...]
    samples_seen: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    reference: ReferenceConfig | None = None
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    c_total: float | None = None  # `budget: {c_total: X}`: each run's samples seen resolved to spend X GFLOPs
    tune: TuneConfig | None = None  # a tuning stage (harness.grid.tuning): candidates scored on validation pairs


@dataclass(frozen=True)
class GridConfig:
    name: str
    source: str
    data: dict[str, Any]
    eval_tasks: tuple[str, ...]
    train: dict[str, Any]
    executor: ExecutorConfig
    stages: tuple[StageConfig, ...]
    description: str = ""


def pool_config(data: dict[str, Any]) -> PoolConfig:
    """A grid's or spec's 'data' mapping (YAML/JSON lists allowed) as a PoolConfig."""
    return PoolConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def load_grid(path: str | Path) -> GridConfig:
    """Read and validate a grid file; raise ConfigError on anything wrong, before anything runs."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        match = closest(path.name, [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else [])
        hint = f" (did you mean {str(path.parent / match)!r}?)" if match else ""
        raise ConfigError(src, "", f"no such grid file{hint}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(src, "", f"not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(src, "", f"not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(src, "", f"cannot be read: {e.strerror}") from None
    return parse_grid(raw, src, default_name=path.stem)


def parse_grid(raw: Any, src: str, default_name: str = "grid") -> GridConfig:
    """Validate an already-parsed grid mapping (see load_grid)."""
    top = _mapping(raw, src, "")
    _known_keys(top, TOP_KEYS, src, "")
    for key in ("stages",):
        if key not in top:
            raise ConfigError(src, key, "required")
    name = _string(top.get("name", default_name), src, "name")
    data = _expand_env(_mapping(top.get("data", {}), src, "data"), src, "data")
    _check_pool(data, src, "data")
    train = _mapping(top.get("train", {}), src, "train")
    _check_train(train, src, "train")
    eval_cfg = _mapping(top.get("eval", {}), src, "eval")
    _known_keys(eval_cfg, {"tasks"}, src, "eval")
    names = tuple(_string(t, src, f"eval.tasks[{i}]")
                  for i, t in enumerate(_list(eval_cfg.get("tasks", []), src, "eval.tasks")))
    executor = _executor(top.get("executor", {}), src)
    stages_raw = _list(top["stages"], src, "stages")
    if not stages_raw:
        raise ConfigError(src, "stages", "at least one stage is required")
    stages = tuple(_stage(s, src, f"stages[{i}]", data, train) for i, s in enumerate(stages_raw))
    _check_stage_references(stages, src)
    tasks = _check_tasks(names, src)
    return GridConfig(name=name, source=src, data=data, eval_tasks=tasks, train=train, executor=executor,
                      stages=stages, description=str(top.get("description", "")))


def _stage(raw: Any, src: str, key: str, data: dict, train: dict) -> StageConfig:
    m = _mapping(raw, src, key)
    _known_keys(m, STAGE_KEYS, src, key)
    for req in ("name", "methods", "models"):
        if req not in m:
            raise ConfigError(src, f"{key}.{req}", "required")
    if ("samples_seen" in m) == ("budget" in m):
        raise ConfigError(src, f"{key}.samples_seen", "give exactly one of 'samples_seen' (budgets in samples) or "
                          "'budget: {c_total: GFLOPs}' (each method's samples seen resolved to that C_total)")
    stage_data = _expand_env(_mapping(m.get("data", {}), src, f"{key}.data"), src, f"{key}.data")
    _check_pool({**data, **stage_data}, src, f"{key}.data")
    stage_train = _mapping(m.get("train", {}), src, f"{key}.train")
    merged_train = {**train, **stage_train}
    _check_train(merged_train, src, f"{key}.train")
    methods = tuple(_method(x, src, f"{key}.methods[{i}]") for i, x in enumerate(_nonempty_list(m["methods"], src, f"{key}.methods")))
    models = tuple(_model(x, src, f"{key}.models[{i}]") for i, x in enumerate(_nonempty_list(m["models"], src, f"{key}.models")))
    batch = TrainConfig(**merged_train).batch_size
    c_total = _budget(m["budget"], src, f"{key}.budget") if "budget" in m else None
    samples = () if c_total else tuple(_samples(x, batch, src, f"{key}.samples_seen[{i}]") for i, x in
                                       enumerate(_nonempty_list(m["samples_seen"], src, f"{key}.samples_seen")))
    seeds = tuple(check_int(x, src, f"{key}.seeds[{i}]", minimum=0, maximum=2**31 - 1) for i, x in enumerate(_nonempty_list(m.get("seeds", [0]), src, f"{key}.seeds")))
    reference = _reference(m["reference"], src, f"{key}.reference") if m.get("reference") is not None else None
    if reference is None:
        for i, method in enumerate(methods):
            if needs_reference(get_method(method.name)):
                raise ConfigError(src, f"{key}.methods[{i}]", f"method {method.name!r} needs a reference model; "
                                  "give the stage a 'reference' (an earlier stage, a checkpoint or a pretrained model)")
    tune = _tune(m["tune"], methods, src, f"{key}.tune") if "tune" in m else None
    return StageConfig(name=_string(m["name"], src, f"{key}.name"), methods=methods, models=models,
                       samples_seen=samples, seeds=seeds, reference=reference, data=stage_data,
                       train=stage_train, c_total=c_total, tune=tune)


def _tune(raw: Any, methods: tuple[MethodConfig, ...], src: str, key: str) -> TuneConfig:
    """A stage's `tune: {param: [values], on: validation}`: each parameter one of every method's, set by none of
    them, with at least two distinct candidate values, every combination valid for every method."""
    # YAML 1.1 (PyYAML) reads an unquoted key `on` as the boolean true
    m = {"on" if k is True else k: v for k, v in _mapping(raw, src, key).items()}
    on = m.get("on", ON[0])
    if on not in ON:
        raise ConfigError(src, f"{key}.on", f"unknown {on!r}; allowed: {', '.join(ON)} (pool pairs held out of "
                          "training; a tuning stage never scores on the test tasks)")
    params = {p: v for p, v in m.items() if p != "on"}
    if not params:
        raise ConfigError(src, key, "name at least one method parameter and its candidate values, e.g. "
                          "'tune: {tau: [0.01, 0.03], on: validation}'")
    for p, values in params.items():
        values = _nonempty_list(values, src, f"{key}.{p}")
        if len(values) < 2 or len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(src, f"{key}.{p}", f"give at least two distinct candidate values, got {values!r}")
        for i, method in enumerate(methods):
            known = get_method(method.name).defaults
            if p not in known:
                raise ConfigError(src, f"{key}.{p}", f"method {method.name!r} has no parameter {p!r}"
                                  f"{did_you_mean(p, known)}; its parameters: {', '.join(sorted(known))}")
            if p in method.params:
                raise ConfigError(src, f"{key}.{p}", f"method {method.name!r} sets {p} itself (methods[{i}]); a "
                                  "tuned parameter is left to the candidates")
    tune = TuneConfig(params=tuple((p, tuple(v)) for p, v in params.items()), on=on)
    for method in methods:
        for values in tune.candidates():
            try:
                get_method(method.name).check({**method.params, **values})
            except ValueError as e:
                raise ConfigError(src, key, f"candidate {values} for method {method.name!r}: {e}") from None
    return tune


def _method(raw: Any, src: str, key: str) -> MethodConfig:
    if isinstance(raw, str):
        name, params = raw, {}
    else:
        m = _mapping(raw, src, key)
        if "name" not in m:
            raise ConfigError(src, f"{key}.name", "required (a method is a name or a mapping with 'name' and its parameters)")
        name, params = _string(m["name"], src, f"{key}.name"), {k: v for k, v in m.items() if k != "name"}
    if name not in REGISTRY:
        raise ConfigError(src, key, f"unknown method {name!r}{did_you_mean(name, REGISTRY)}; registered: {', '.join(sorted(REGISTRY))}")
    try:
        get_method(name).check(params)
    except ValueError as e:
        raise ConfigError(src, key, str(e)) from None
    return MethodConfig(name=name, params=params)


def _model(raw: Any, src: str, key: str) -> str:
    name = _string(raw, src, key)
    try:
        check_model_name(name)
    except ValueError as e:
        raise ConfigError(src, key, f"{e}{did_you_mean(name, preset_names())}") from None
    return name


def _samples(raw: Any, batch: int, src: str, key: str) -> int:
    n = check_int(raw, src, key, minimum=1)
    if n % batch:
        lo, hi = (n // batch) * batch, (n // batch + 1) * batch
        hint = f"use {lo} or {hi}" if lo else f"use {hi}"
        raise ConfigError(src, key, f"{n} is not a multiple of batch_size {batch} (samples seen are counted exactly); {hint}")
    return n


def _budget(raw: Any, src: str, key: str) -> float:
    """A stage's `budget: {c_total: X}`: X forward GFLOPs per run (harness.run.compute's C_total), a positive number."""
    m = _mapping(raw, src, key)
    _known_keys(m, {"c_total"}, src, key)
    x = m.get("c_total")
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < float("inf"):
        raise ConfigError(src, f"{key}.c_total", f"must be a positive number of forward GFLOPs per run, got {x!r}")
    return float(x)


def _reference(raw: Any, src: str, key: str) -> ReferenceConfig:
    if isinstance(raw, str):
        return ReferenceConfig(stage=raw)
    m = _mapping(raw, src, key)
    _known_keys(m, REFERENCE_KEYS | {"grid", "model", "features", "cache"}, src, key)
    kinds = [k for k in REFERENCE_KEYS if k in m]
    if len(kinds) != 1:
        raise ConfigError(src, key, "give exactly one of 'stage', 'checkpoint' (with 'model') or 'pretrained' (with 'model')")
    if "grid" in m:
        if kinds[0] != "stage":
            raise ConfigError(src, f"{key}.grid", "names the grid of a 'stage' (another grid's reference run)")
        other_grid_file(src, _string(m["grid"], src, f"{key}.grid"), f"{key}.grid")
    if kinds[0] == "stage" and "model" in m:
        raise ConfigError(src, f"{key}.model", "not allowed with 'stage': the model is the reference run's own")
    if kinds[0] != "stage":
        if "model" not in m:
            raise ConfigError(src, f"{key}.model", f"required with '{kinds[0]}'")
        _model(m["model"], src, f"{key}.model")
    if "pretrained" in m:
        import open_clip  # a pretrained reference's tags: only then is open_clip worth its import time

        tags = open_clip.list_pretrained_tags_by_model(m["model"])
        if m["pretrained"] not in tags:
            raise ConfigError(src, f"{key}.pretrained", f"open_clip has no pretrained tag {m['pretrained']!r} for "
                              f"{m['model']}{did_you_mean(str(m['pretrained']), tags)}; tags: {', '.join(tags) or 'none'}")
    if "checkpoint" in m:
        ckpt = Path(_string(m["checkpoint"], src, f"{key}.checkpoint"))
        if not ckpt.is_file():
            raise ConfigError(src, f"{key}.checkpoint", f"no such file: {ckpt}")
        _check_readable_checkpoint(ckpt, src, f"{key}.checkpoint")
    features = _string(m.get("features", "cached" if "cache" in m else "online"), src, f"{key}.features")
    if features not in REFERENCE_FEATURES:
        raise ConfigError(src, f"{key}.features", f"unknown {features!r}{did_you_mean(features, REFERENCE_FEATURES)}; "
                          f"allowed: {', '.join(REFERENCE_FEATURES)}")
    if "cache" in m:
        if features != "cached":
            raise ConfigError(src, f"{key}.cache", "a cache directory needs 'features: cached'")
        if not Path(_string(m["cache"], src, f"{key}.cache")).is_dir():
            raise ConfigError(src, f"{key}.cache", f"no such directory: {m['cache']}")
    return ReferenceConfig(features=features, **{k: _string(v, src, f"{key}.{k}") for k, v in m.items() if k != "features"})


def other_grid_file(src: str, name: str, key: str) -> Path:
    """The grid file `name` names beside grid file `src` (name.yaml or name.yml); ConfigError when there is none,
    both, or it is `src` itself."""
    folder = Path(src).parent
    found = [p for p in (folder / f"{name}.yaml", folder / f"{name}.yml") if p.is_file()]
    if not found:
        others = [p.stem for p in folder.glob("*.y*ml")]
        raise ConfigError(src, key, f"no grid file {name}.yaml in {folder}{did_you_mean(name, others)}")
    if len(found) > 1:
        raise ConfigError(src, key, f"ambiguous: both {found[0]} and {found[1]} exist")
    if found[0].resolve() == Path(src).resolve():
        raise ConfigError(src, key, "names this grid itself; use 'stage' alone for one of its own stages")
    return found[0]


def _check_readable_checkpoint(path: Path, src: str, key: str) -> None:
    """Refuse a reference checkpoint that cannot be opened as safetensors or as a weights-only torch file
    (memory-mapped, so a large checkpoint is not read into memory here)."""
    import torch  # only a grid naming a checkpoint pays for torch here
    from safetensors import safe_open

    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt"):
                pass
        else:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # any failure to open means the run could not load it either
        raise ConfigError(src, key, f"not a readable checkpoint: {path} ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else 'unreadable'})") from None


def _check_stage_references(stages: tuple[StageConfig, ...], src: str) -> None:
    seen: dict[str, StageConfig] = {}
    for i, stage in enumerate(stages):
        if stage.name in seen:
            raise ConfigError(src, f"stages[{i}].name", f"duplicate stage name {stage.name!r}")
        ref = stage.reference
        if ref is not None and ref.stage is not None and ref.grid is None:
            key = f"stages[{i}].reference"
            if ref.stage == stage.name:
                raise ConfigError(src, key, f"stage {stage.name!r} cannot be its own reference")
            if ref.stage not in seen:
                later = any(s.name == ref.stage for s in stages[i + 1:])
                why = "comes later (a reference stage must come first)" if later else \
                    f"does not exist{did_you_mean(ref.stage, seen)}; earlier stages: {', '.join(seen) or 'none'}"
                raise ConfigError(src, key, f"stage {ref.stage!r} {why}")
            target = seen[ref.stage]
            budgets = len(target.samples_seen) or 1  # a budget stage: one per method and model
            candidates = len(target.tune.candidates()) if target.tune else 1
            runs = len(target.methods) * len(target.models) * budgets * len(target.seeds) * candidates
            if runs != 1:
                raise ConfigError(src, key, f"stage {ref.stage!r} has {runs} runs; a reference stage must have exactly one")
        _check_tuned_models(stage, [s for s in seen.values() if s.tune], src, f"stages[{i}]")
        seen[stage.name] = stage


def _check_tuned_models(stage: StageConfig, tuners: list[StageConfig], src: str, key: str) -> None:
    """Refuse a method of `stage` that an earlier tuning stage tunes (harness.grid.tuning) on a model that stage
    did not tune it on: its value would be chosen on another model."""
    for i, method in enumerate(stage.methods):
        params = get_method(method.name).check(method.params)
        for tuner in tuners:
            names = tuner.tune.names
            if any(p in method.params for p in names):
                continue
            mine = config_key(method.name, params, names)
            if not any(config_key(m.name, get_method(m.name).check(m.params), names) == mine for m in tuner.methods):
                continue
            missing = [m for m in stage.models if m not in tuner.models]
            if missing:
                raise ConfigError(src, f"{key}.methods[{i}]", f"tuning stage {tuner.name!r} tunes {method.name}'s "
                                  f"{', '.join(names)} on {', '.join(tuner.models)}, not on {', '.join(missing)}: "
                                  f"add the model to that stage, or set {', '.join(names)} here")


_ENV_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _expand_env(data: dict, src: str, key: str) -> dict:
    """`data` with the environment variables in its shard spec ($NAME or ${NAME}) replaced by their values, so a
    grid names a shard set without a machine's paths; an unset or empty variable is a ConfigError naming it."""
    spec = data.get("shards")
    if not isinstance(spec, str):
        return data

    def value(match: re.Match) -> str:
        name = match[1] or match[2]
        if not os.environ.get(name):
            state = "empty" if name in os.environ else "not set"
            raise ConfigError(src, f"{key}.shards", f"environment variable {name} is {state} (the shard spec is "
                              f"{spec!r}); set it to where the shard set lies")
        return os.environ[name]

    return {**data, "shards": _ENV_VAR.sub(value, spec)}


def _check_pool(data: dict, src: str, key: str) -> None:
    _known_keys(data, {f.name for f in dataclasses.fields(PoolConfig)}, src, key)
    if data.get("shards") is not None:
        mixed = [k for k in data if k in EMBEDDED_FIELDS]
        if mixed:
            raise ConfigError(src, key, f"'shards' reads the pool from a shard set; {', '.join(mixed)} describe "
                              "the embedded pool and cannot be mixed with it (leave them out)")
    try:
        pool_config(data)
    except (TypeError, ValueError) as e:
        raise ConfigError(src, key, str(e)) from None


def _check_train(train: dict, src: str, key: str) -> None:
    _known_keys(train, {f.name for f in dataclasses.fields(TrainConfig)}, src, key)
    try:
        TrainConfig(**train)
    except (TypeError, ValueError) as e:
        raise ConfigError(src, key, str(e)) from None


def _check_tasks(tasks: tuple[str, ...], src: str) -> tuple[str, ...]:
    """The grid's tasks with task set names expanded (a task listed twice is kept once), through the evaluation
    registry. Every name must be known, and every on-disk task's data must be there now, not after hours of training.
    The registry loads torch and clip_benchmark, so parse_grid checks the tasks after everything else."""
    from harness.eval.tasks import MissingData, UnknownTask, check_data, resolve

    try:
        expanded = resolve(tasks)
        check_data(expanded)
    except UnknownTask as e:
        raise ConfigError(src, "eval.tasks" if e.index is None else f"eval.tasks[{e.index}]", str(e)) from None
    except MissingData as e:
        first = next(i for i, t in enumerate(tasks) if e.task in resolve([t]))
        raise ConfigError(src, f"eval.tasks[{first}]", str(e)) from None
    return tuple(expanded)


def _executor(raw: Any, src: str) -> ExecutorConfig:
    m = _mapping(raw, src, "executor")
    _known_keys(m, {f.name for f in dataclasses.fields(ExecutorConfig)}, src, "executor")
    kind = _string(m.get("kind", "local"), src, "executor.kind")
    if kind not in EXECUTORS:
        raise ConfigError(src, "executor.kind", f"unknown executor {kind!r}{did_you_mean(kind, EXECUTORS)}; allowed: {', '.join(EXECUTORS)}")
    if "slurm" in m and kind != "slurm":
        raise ConfigError(src, "executor.slurm", f"only with 'kind: slurm' (the kind is {kind!r})")
    if kind == "slurm" and "timeout_min" in m:
        raise ConfigError(src, "executor.timeout_min", "with 'kind: slurm' the time limit is executor.slurm.time_min")
    if kind != "local" and "tasks_per_job" in m:
        where = "executor.slurm.tasks_per_node (and nodes)" if kind == "slurm" else "the local executor"
        raise ConfigError(src, "executor.tasks_per_job", f"only with 'kind: local' (for {kind!r} use {where})")
    slurm = parse_slurm(m.get("slurm"), src, "executor.slurm") if kind == "slurm" else None
    return ExecutorConfig(kind=kind, slurm=slurm, **{k: check_int(m[k], src, f"executor.{k}", minimum=1)
                                                     for k in ("max_parallel", "cpus_per_job", "timeout_min",
                                                               "tasks_per_job") if k in m})


def _known_keys(m: dict, allowed: set[str], src: str, key: str) -> None:
    for k in m:
        if k not in allowed:
            where = f"{key}.{k}" if key else str(k)
            raise ConfigError(src, where, f"unknown key{did_you_mean(str(k), allowed)}; allowed: {', '.join(sorted(allowed))}")


def _mapping(raw: Any, src: str, key: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(src, key, f"must be a mapping, got {type(raw).__name__}")
    return raw


def _list(raw: Any, src: str, key: str) -> list:
    if not isinstance(raw, list):
        raise ConfigError(src, key, f"must be a list, got {type(raw).__name__}")
    return raw


def _nonempty_list(raw: Any, src: str, key: str) -> list:
    items = _list(raw, src, key)
    if not items:
        raise ConfigError(src, key, "must not be empty")
    return items


def _string(raw: Any, src: str, key: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(src, key, f"must be a non-empty string, got {raw!r}")
    return raw

