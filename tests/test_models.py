"""Model presets: open_clip's factory, FLOPs by FlopCounterMode, the torchvision guard, `clipsteer models`."""
import json
import subprocess
import sys

import pytest
import torch

from harness.models import build_model, count_profile
from harness.presets import TINY_PRESETS, check_model_name, preset_names
from harness.profiles import PROFILES, model_profile


def test_stored_profiles_are_exactly_what_flopcountermode_counts_for_every_preset():
    # the estimate, the reports and `clipsteer models` read the stored profiles (no torch); recounting each one
    # here keeps them from drifting when a config or open_clip changes (if this fails: store the counted dict)
    stored = json.loads(PROFILES.read_text(encoding="utf-8"))
    assert sorted(stored) == sorted(preset_names())
    for name in preset_names():
        assert stored[name] == count_profile(name), name
        assert model_profile(name) == stored[name]


def test_vit_b_32_flops_match_open_clips_published_profile():
    # open_clip's model profile: ViT-B-32 at 224 px is 14.78 GFLOPs per pair (8.82 image + 5.96 text)
    profile = model_profile("ViT-B-32")
    assert profile["gflops"] == pytest.approx(14.78, rel=0.05)
    assert profile["image_gflops"] == pytest.approx(8.82, rel=0.05)
    assert profile["mparams"] == pytest.approx(151.28, rel=0.01)


@pytest.mark.parametrize("name, published", [("ViT-B-16", 41.09), ("ViT-L-14", 175.33)])
def test_larger_architectures_match_too(name, published):
    assert model_profile(name)["gflops"] == pytest.approx(published, rel=0.05)


def test_tiny_presets_grow_and_count_flops_of_a_real_forward():
    flops = [model_profile(n)["gflops"] for n in ("tiny-s", "tiny-m", "tiny-l")]
    assert set(TINY_PRESETS) == {"tiny-s", "tiny-m", "tiny-l", "tiny16-s", "tiny16-m"}
    assert flops[0] < flops[1] < flops[2]
    assert model_profile("tiny16-s")["gflops"] < min(model_profile("tiny16-m")["gflops"], flops[0])  # 4 patches, 1+1 layers
    # independent count: 2 FLOPs per multiply-add of every Linear/attention matmul in a real forward
    built = build_model("tiny-s")
    macs = 0

    def count(module, inputs, output):
        nonlocal macs
        macs += inputs[0].shape[:-1].numel() * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in built.model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        built.model.encode_image(torch.zeros(1, 3, 32, 32))
        built.model.encode_text(torch.zeros(1, built.context_length, dtype=torch.long))
    for h in hooks:
        h.remove()
    # Linear layers are most of the work; the rest is attention matmuls, patch conv and projections
    assert 0.6 < 2 * macs / 1e9 / flops[0] < 1.0


def test_preprocess_resizes_and_normalises_uint8_batches():
    built = build_model("tiny-s")
    x = built.preprocess(torch.full((2, 3, 28, 28), 255, dtype=torch.uint8))
    assert x.shape == (2, 3, 32, 32)
    expected = (1 - torch.tensor(built.mean)) / torch.tensor(built.std)
    torch.testing.assert_close(x[0, :, 5, 5], expected)


def test_unknown_model_names_the_presets():
    with pytest.raises(ValueError, match="unknown model 'tiny-xl'; presets: tiny-l, tiny-m, tiny-s, tiny16-m, tiny16-s, ViT-B-32"):
        check_model_name("tiny-xl")


def test_models_command_lists_every_preset(clipsteer):
    out = clipsteer("models")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name in preset_names():
        (row,) = [line for line in lines if line.startswith(name + " ")]
        params, gflops = map(float, row.split()[1:3])
        assert params == pytest.approx(model_profile(name)["mparams"], abs=0.01)
        assert gflops == pytest.approx(model_profile(name)["gflops"], rel=1e-3)


def test_open_clip_imports_in_a_fresh_interpreter_after_harness():
    code = "import harness, harness.compat as c; import open_clip, torchvision; print(c.MODE, open_clip.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] in {"native", "loaded", "defined"}


def test_help_explains_the_commands(clipsteer):
    out = clipsteer("run", "--help")
    assert out.returncode == 0
    for flag in ("--results", "--dry-run", "--executor", "--max-parallel"):
        assert flag in out.stdout
