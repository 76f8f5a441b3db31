"""The training loop on tiny real data: exact resume, schedules, batches, failure on NaN."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.models import build_model
from harness.run.features import OnlineReference
from harness.run.train import (
    CHECKPOINTS,
    FINAL_MODEL,
    KEPT_INDICES,
    METRICS,
    NonFiniteLoss,
    TrainConfig,
    batch_positions,
    lr_at,
    train,
)
from harness.store.rundir import checkpoint_files
from methods import get_method
from methods.base import LossOutput

POOL = PoolConfig(sources=("shapes",), shapes_count=256, noise=0.2)
CFG = TrainConfig(batch_size=32, lr=1e-3, warmup_steps=2, log_every=1)


@pytest.fixture(scope="module")
def pool():
    return build_pool(POOL)


def fresh(name="tiny-s", seed=0):
    torch.manual_seed(seed)
    return build_model(name)


class Killed(RuntimeError):
    pass


def interrupted(method, at_step):
    """Wrap a method so that training dies at `at_step`, as a killed process would."""
    inner = method.loss

    def loss(feats, ref, indices, progress):
        if progress.step == at_step:
            raise Killed(f"killed at step {at_step}")
        return inner(feats, ref, indices, progress)

    method.loss = loss
    return method


def metrics_without_time(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / METRICS).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


@pytest.mark.parametrize("method_name, kill_at", [("clip", 5), ("drrho", 4), ("jest", 6), ("filter", 4)])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(pool, tmp_path, method_name, kill_at):
    cfg = TrainConfig(**{**CFG.__dict__, "checkpoint_every": 3})
    reference = fresh("tiny-s", seed=1)
    reference.model.eval().requires_grad_(False)
    reference = OnlineReference(reference, "cpu")
    samples = 8 * cfg.batch_size  # jest draws 5x candidates per step from the 256-sample pool: several epochs

    straight = fresh()
    train(straight, get_method(method_name)({}, pool.num_indices), pool, samples, cfg, 0, tmp_path / "a",
          reference=reference, show_progress=False)

    broken = fresh()
    with pytest.raises(Killed):
        train(broken, interrupted(get_method(method_name)({}, pool.num_indices), kill_at), pool, samples, cfg, 0,
              tmp_path / "b", reference=reference, show_progress=False)
    last_checkpoint = kill_at // 3 * 3
    assert torch.load(checkpoint_files(tmp_path / "b")[0], weights_only=True)["step"] == last_checkpoint
    with open(tmp_path / "b" / METRICS, "a") as f:
        f.write('{"step": 7, "loss": 4.')  # a line the kill cut short
    resumed = fresh(seed=123)  # weights come from the checkpoint, not from this init
    summary = train(resumed, get_method(method_name)({}, pool.num_indices), pool, samples, cfg, 0, tmp_path / "b",
                    reference=reference, show_progress=False)

    assert summary.resumed_from_step == last_checkpoint and summary.steps == 8 and summary.samples_seen == samples
    assert math.isfinite(summary.final_loss)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert metrics_without_time(tmp_path / "a") == metrics_without_time(tmp_path / "b")


def test_a_resumed_static_selection_reads_its_kept_indices_back(pool, tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "checkpoint_every": 1})
    reference = fresh("tiny-s", seed=1)
    reference.model.eval().requires_grad_(False)
    with pytest.raises(Killed):
        train(fresh(), interrupted(get_method("filter")({}, pool.num_indices), 2), pool, 4 * 32, cfg, 0, tmp_path,
              reference=OnlineReference(reference, "cpu"), show_progress=False)
    kept = torch.load(tmp_path / KEPT_INDICES, weights_only=True)
    assert len(kept) == round(0.3 * len(pool)) and torch.isin(kept, pool.indices).all()

    class NoScoring:
        def pool(self, pool):
            raise AssertionError("the pool was scored again on resume")

    summary = train(fresh(), get_method("filter")({}, pool.num_indices), pool, 4 * 32, cfg, 0, tmp_path,
                    reference=NoScoring(), show_progress=False)
    assert summary.resumed_from_step == 2 and summary.pool_size == len(kept)
    assert torch.equal(torch.load(tmp_path / KEPT_INDICES, weights_only=True), kept)


def test_a_subset_smaller_than_a_batch_is_refused_naming_keep(pool, tmp_path):
    with pytest.raises(ValueError, match="keeps 3 of 256 pool samples, fewer than one batch of 32; raise 'keep'"):
        train(fresh(), get_method("random")({"keep": 0.01}, pool.num_indices), pool, 64, CFG, 0, tmp_path,
              show_progress=False)


def test_final_weights_load_through_open_clip_as_a_reference(pool, tmp_path):
    built = fresh()
    train(built, get_method("clip")({}, pool.num_indices), pool, 64, CFG, 0, tmp_path, show_progress=False)
    loaded = build_model("tiny-s", pretrained=str(tmp_path / FINAL_MODEL))  # open_clip's own loading path
    images, tokens = built.preprocess(pool.images[:4]), built.tokenizer(pool.captions[:4])
    built.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_image(images), built.model.encode_image(images))
        torch.testing.assert_close(loaded.model.encode_text(tokens), built.model.encode_text(tokens))


def test_every_epoch_is_a_permutation_cut_into_disjoint_batches():
    n, b = 100, 32  # 3 full batches per epoch; the 4 leftover samples wait for the next epoch's shuffle
    epoch0 = torch.cat([batch_positions(k, n, b, seed=5) for k in range(3)])
    assert len(set(epoch0.tolist())) == 96 and epoch0.max() < n
    assert not torch.equal(batch_positions(3, n, b, seed=5), batch_positions(0, n, b, seed=5))
    assert torch.equal(batch_positions(4, n, b, seed=5), batch_positions(4, n, b, seed=5))
    assert not torch.equal(batch_positions(0, n, b, seed=5), batch_positions(0, n, b, seed=6))
    with pytest.raises(ValueError, match="fewer than one batch"):
        batch_positions(0, 10, 32, seed=0)


def test_lr_schedule_warms_up_then_follows_a_cosine_to_zero():
    cfg = TrainConfig(lr=1.0, warmup_steps=4)
    assert [lr_at(s, 14, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 14, cfg) == 1.0
    assert lr_at(9, 14, cfg) == pytest.approx(0.5)
    assert lr_at(13, 14, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))


def test_wsd_warms_up_holds_then_decays_as_one_minus_sqrt_over_the_last_cooldown_share():
    cfg = TrainConfig(lr=2.0, warmup_steps=2, schedule="wsd", cooldown=0.25)  # 20 steps: the last 5 decay
    assert [lr_at(s, 20, cfg) for s in range(16)] == [1.0] + [2.0] * 15
    assert [lr_at(s, 20, cfg) for s in range(16, 20)] == pytest.approx(
        [2 * (1 - 0.2 ** 0.5), 2 * (1 - 0.4 ** 0.5), 2 * (1 - 0.6 ** 0.5), 2 * (1 - 0.8 ** 0.5)])
    assert [lr_at(s, 12, cfg) for s in range(9)] == [lr_at(s, 20, cfg) for s in range(9)]  # before 12's cooldown
    assert lr_at(9, 12, cfg) == 2.0 and lr_at(10, 12, cfg) < lr_at(10, 20, cfg)
    overlapping = TrainConfig(lr=1.0, warmup_steps=4, schedule="wsd", cooldown=0.5)  # warmup runs into the decay
    assert [lr_at(s, 4, overlapping) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1 - 0.5 ** 0.5])


@pytest.mark.parametrize("settings, message", [
    ({"schedule": "wds"}, "schedule must be one of cosine, wsd, got 'wds' (did you mean 'wsd'?)"),
    ({"schedule": "wsd", "cooldown": 0.0}, "cooldown must be in (0, 1]"),
    ({"schedule": "wsd", "cooldown": 1.5}, "cooldown must be in (0, 1]"),
    ({"cooldown": 0.3}, "cooldown applies to schedule 'wsd' only"),
])
def test_a_bad_schedule_is_refused(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**settings)


def test_non_finite_loss_stops_the_run_with_step_and_loss_parts(pool, tmp_path):
    method = get_method("clip")({}, pool.num_indices)
    real = method.loss

    def poisoned(feats, ref, indices, progress):
        out = real(feats, ref, indices, progress)
        return LossOutput(out.loss * float("nan"), out.logs) if progress.step == 2 else out

    method.loss = poisoned
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss nan at step 2; loss parts: \{'contrastive_loss'"):
        train(fresh(), method, pool, 5 * 32, CFG, 0, tmp_path, show_progress=False)


def test_budget_must_be_whole_batches_and_steering_needs_a_reference(pool, tmp_path):
    with pytest.raises(ValueError, match="not a multiple of batch_size 32"):
        train(fresh(), get_method("clip")({}, pool.num_indices), pool, 100, CFG, 0, tmp_path, show_progress=False)
    with pytest.raises(ValueError, match="needs a reference model"):
        train(fresh(), get_method("drrho")({}, pool.num_indices), pool, 64, CFG, 0, tmp_path, show_progress=False)


def test_training_lowers_the_loss_on_real_data(pool, tmp_path):
    cfg = TrainConfig(batch_size=32, lr=2e-3, warmup_steps=2, log_every=1)
    train(fresh(), get_method("clip")({}, pool.num_indices), pool, 24 * 32, cfg, 0, tmp_path, show_progress=False)
    losses = [r["loss"] for r in metrics_without_time(tmp_path)]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, still a zip a lenient reader might accept: the checksum catches it
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, damaged, resumed_at", [
    (_truncate, 1, 3), (_flip_a_byte, 1, 3), (_truncate, 2, 0)])
def test_a_damaged_checkpoint_is_set_aside_and_training_falls_back(pool, tmp_path, damage, damaged, resumed_at, capsys):
    cfg = TrainConfig(**{**CFG.__dict__, "checkpoint_every": 3})
    samples = 8 * cfg.batch_size
    straight = fresh()
    train(straight, get_method("clip")({}, pool.num_indices), pool, samples, cfg, 0, tmp_path / "a", show_progress=False)
    with pytest.raises(Killed):
        train(fresh(), interrupted(get_method("clip")({}, pool.num_indices), 7), pool, samples, cfg, 0, tmp_path / "b",
              show_progress=False)
    files = checkpoint_files(tmp_path / "b")
    assert [torch.load(f, weights_only=True)["step"] for f in files] == [6, 3]  # older ones are pruned
    for path in files[:damaged]:
        damage(path)

    resumed = fresh(seed=0 if resumed_at == 0 else 123)  # a restart from 0 starts from the seeded init, as a job does
    summary = train(resumed, get_method("clip")({}, pool.num_indices), pool, samples, cfg, 0, tmp_path / "b",
                    show_progress=False)
    assert summary.resumed_from_step == resumed_at
    assert len(summary.rejected_checkpoints) == damaged
    assert all(f.name in r for f, r in zip(files, summary.rejected_checkpoints))
    assert sorted(p.name for p in (tmp_path / "b" / CHECKPOINTS).glob("*.corrupt")) == sorted(
        f.name + ".corrupt" for f in files[:damaged])
    assert "is damaged" in capsys.readouterr().err
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert metrics_without_time(tmp_path / "a") == metrics_without_time(tmp_path / "b")


def test_checkpoints_follow_the_clock_as_well_as_the_step_count(pool, tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 100))  # every perf_counter call moves time on by 100 s
    monkeypatch.setattr("harness.run.train.time.perf_counter", lambda: next(clock))
    cfg = TrainConfig(**{**CFG.__dict__, "checkpoint_minutes": 3.0})
    train(fresh(), get_method("clip")({}, pool.num_indices), pool, 6 * 32, cfg, 0, tmp_path, show_progress=False)
    steps = sorted(torch.load(f, weights_only=True)["step"] for f in (tmp_path / CHECKPOINTS).glob("*.pt*"))
    assert steps and steps[-1] == 6


def test_speed_options_keep_the_math_and_bf16_stays_close(pool, tmp_path):
    """Gradient checkpointing and channels-last change memory and speed, not the trajectory; bf16 autocast
    changes the rounding only (the losses are computed in fp32)."""
    finals, losses = {}, {}
    for name, extra in (("fp32", {}), ("checkpointing", {"grad_checkpointing": True}),
                        ("channels_last", {"channels_last": True}), ("bf16", {"precision": "bf16"})):
        built = fresh()
        cfg = TrainConfig(**{**CFG.__dict__, **extra})
        losses[name] = train(built, get_method("clip")({}, pool.num_indices), pool, 4 * cfg.batch_size, cfg, 0,
                             tmp_path / name, show_progress=False).final_loss
        finals[name] = built.model.state_dict()
    for name in ("checkpointing", "channels_last"):
        assert losses[name] == losses["fp32"]
        for key, value in finals["fp32"].items():
            assert torch.allclose(finals[name][key], value, atol=1e-6), (name, key)
    assert losses["bf16"] != losses["fp32"] and losses["bf16"] == pytest.approx(losses["fp32"], abs=0.02)
    assert fresh().model.transformer.grad_checkpointing is False


def test_compiling_keeps_open_clips_weight_names():
    """The model is compiled in place (nn.Module.compile), so checkpoints and model.pt load into open_clip."""
    from harness.run.train import _prepare

    built = fresh()
    names = list(built.model.state_dict())
    model = _prepare(built.model, TrainConfig(device="cpu", compile=True, grad_checkpointing=True))
    assert model is built.model and list(model.state_dict()) == names
    assert model._compiled_call_impl is not None and model.transformer.grad_checkpointing is True


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp16")
