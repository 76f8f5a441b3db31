"""Raw sources, training captions and the image-text pool."""
from __future__ import annotations

import gzip
import urllib.request

import numpy as np
import pytest
import torch

from harness.data import captions, sources
from harness.data.build import build_pool
from harness.data.pool import PoolConfig
from harness.data.poolconfig import SOURCE_ROWS, embedded_pool_size
from harness.eval.embedded import embedded_tasks

CLASSNAMES = {"fashion_mnist": sources.FASHION_MNIST_CLASSES, "digits": sources.DIGIT_CLASSES,
              "shapes": sources.SHAPE_CLASSES}
SMALL = dict(sources=("digits", "shapes"), shapes_count=400)


def _class_of(pool) -> list[tuple[str, int]]:
    """(source, label in source) of each global class of `pool`."""
    return [(name, i) for name in pool.source_names for i in range(len(CLASSNAMES[name]))]


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


# --- sources -----------------------------------------------------------------------------------

def test_fashion_mnist_from_debian_package():
    train, test = sources.fashion_mnist()
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert len(train.classnames) == 10 and train.classnames[9] == "ankle boot"
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_fashion_mnist_root_from_env_parses_idx(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, (images_name, labels_name) in sources.FASHION_MNIST_FILES.items():
        arrays[split] = (rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7))
        _write_idx(tmp_path / images_name, arrays[split][0])
        _write_idx(tmp_path / labels_name, arrays[split][1])
    monkeypatch.setenv(sources.FASHION_MNIST_ENV, str(tmp_path))
    train, test = sources.fashion_mnist()
    assert np.array_equal(train.images, arrays["train"][0]) and np.array_equal(test.labels, arrays["test"][1])


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        sources.fashion_mnist(root=tmp_path / "empty")


def test_digits_split_is_stratified_and_disjoint():
    train, test = sources.digits()
    assert len(train) + len(test) == 1797 and train.images.max() == 255
    all_counts = np.bincount(train.labels) + np.bincount(test.labels)
    assert np.all(np.abs(np.bincount(test.labels) - 0.2 * all_counts) <= 1)
    train_bytes = {img.tobytes() for img in train.images}
    assert len(train_bytes) == len(train) and not train_bytes & {img.tobytes() for img in test.images}


def test_shapes_are_deterministic_and_splits_disjoint():
    make = sources.shapes.__wrapped__  # bypass the in-process cache: really generate twice
    a_train, a_test = make(300, 100, seed=3)
    b_train, b_test = make(300, 100, seed=3)
    c_train, _ = make(300, 100, seed=4)
    assert a_train.images.tobytes() == b_train.images.tobytes()
    assert a_test.images.tobytes() == b_test.images.tobytes()
    assert np.array_equal(a_train.attributes["colour"], b_train.attributes["colour"])
    assert a_train.images.tobytes() != c_train.images.tobytes()
    assert not {i.tobytes() for i in a_train.images} & {i.tobytes() for i in a_test.images}
    assert make(150, 10, seed=3)[0].images.tobytes() == a_train.images[:150].tobytes()  # prefix-stable


def test_shape_pixels_match_their_attributes():
    train, _ = sources.shapes(train_count=600, test_count=10, seed=0)
    palette = np.array(list(sources.SHAPE_COLOURS.values()), dtype=np.float64)
    images = train.images.astype(np.float64)
    background = images[:, :1, :1, :]  # corners are always background
    distance = np.linalg.norm(images - background, axis=-1).reshape(len(images), -1)
    pixels = images.reshape(len(images), -1, 3)[np.arange(len(images)), distance.argmax(1)]
    nearest = np.linalg.norm(pixels[:, None] - palette[None], axis=-1).argmin(1)
    assert np.array_equal(nearest, train.attributes["colour"])
    area = (distance > 60).sum(1)
    for shape in range(len(sources.SHAPE_CLASSES)):
        small = area[(train.labels == shape) & (train.attributes["size"] == 0)]
        large = area[(train.labels == shape) & (train.attributes["size"] == 1)]
        assert small.max() < large.min()


# --- captions ----------------------------------------------------------------------------------

def test_caption_sets_of_classes_are_disjoint_and_not_eval_prompts():
    eval_prompts = {p for task in embedded_tasks() for p in task.prompts()}
    seen: set[str] = set()
    for source, names in CLASSNAMES.items():
        for label in range(len(names)):
            options = captions.all_captions(source, label)
            assert len(options) >= 8
            assert not options & seen and not options & eval_prompts
            seen |= options


def test_caption_depends_only_on_key_and_seed():
    labels, keys = np.arange(200) % 10, np.arange(1000, 1200)
    caps, ids = captions.write_captions("fashion_mnist", labels, keys, seed=5)
    part_caps, part_ids = captions.write_captions("fashion_mnist", labels[50:60], keys[50:60], seed=5)
    assert [caps[i] for i in ids[50:60]] == [part_caps[i] for i in part_ids]
    other_caps, other_ids = captions.write_captions("fashion_mnist", labels, keys, seed=6)
    assert [caps[i] for i in ids] != [other_caps[i] for i in other_ids]
    assert len(set(caps)) == len(caps) > 20  # unique strings, and several per class


def test_shapes_captions_describe_colour_shape_and_size():
    attrs = {"colour": np.array([0, 4]), "size": np.array([0, 1])}
    caps, ids = captions.write_captions("shapes", np.array([0, 3]), np.array([0, 1]), seed=0, attributes=attrs)
    assert caps[ids[0]] in captions.all_captions("shapes", 0) and "red" in caps[ids[0]]
    assert any(w in caps[ids[0]] for w in ("small", "little", "tiny"))
    assert any(w in caps[ids[1]] for w in ("purple", "violet")) and "star" in caps[ids[1]]
    with pytest.raises(ValueError, match="attributes"):
        captions.write_captions("shapes", np.array([0]), np.array([0]), seed=0)


# --- pool --------------------------------------------------------------------------------------

def test_pool_is_stable_and_indices_unique():
    a = build_pool(PoolConfig(**SMALL, noise=0.2))
    b = build_pool(PoolConfig(**SMALL, noise=0.2))
    assert torch.equal(a.indices, torch.arange(len(a))) and torch.equal(a.indices, b.indices)
    assert torch.equal(a.images, b.images) and a.captions == b.captions and torch.equal(a.caption_ids, b.caption_ids)
    assert a.images.shape == (1437 + 400, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.num_indices == len(a) and len(set(a.captions)) == len(a.captions)


def test_sample_keeps_its_caption_across_configs():
    both = build_pool(PoolConfig(**SMALL))
    alone = build_pool(PoolConfig(sources=("shapes",), shapes_count=400))
    in_both = both.source == both.source_names.index("shapes")
    assert [both.captions[i] for i in both.caption_ids[in_both]] == [alone.captions[i] for i in alone.caption_ids]


def test_noise_is_exact_and_captions_name_another_class():
    pool = build_pool(PoolConfig(per_source=300, shapes_count=300, noise=0.3, seed=2))
    assert len(pool) == 900 and int(pool.noisy.sum()) == round(0.3 * 900)
    assert torch.equal(pool.noisy, pool.caption_labels != pool.labels)
    class_of = _class_of(pool)
    for i in range(len(pool)):
        caption = pool.captions[pool.caption_ids[i]]
        assert caption in captions.all_captions(*class_of[pool.caption_labels[i]])
        assert (caption in captions.all_captions(*class_of[pool.labels[i]])) == (not pool.noisy[i])
    assert len({int(c) for c in pool.caption_labels[pool.noisy]}) > 10  # noise spreads over classes


def test_greyscale_sources_are_replicated_and_resized():
    pool = build_pool(PoolConfig(sources=("fashion_mnist", "digits"), per_source=50, image_size=16))
    assert pool.images.shape == (100, 3, 16, 16)
    assert torch.equal(pool.images[:, 0], pool.images[:, 1]) and torch.equal(pool.images[:, 0], pool.images[:, 2])
    assert pool.images.float().std() > 20


def test_per_source_cap_nests():
    small = build_pool(PoolConfig(sources=("digits",), per_source=100))
    large = build_pool(PoolConfig(sources=("digits",), per_source=200))
    large_images = {img.numpy().tobytes() for img in large.images}
    assert len(small) == 100 and all(img.numpy().tobytes() in large_images for img in small.images)


def test_clean_subset_keeps_original_indices():
    full = build_pool(PoolConfig(**SMALL, noise=0.25, seed=7))
    clean = build_pool(PoolConfig(**SMALL, noise=0.25, seed=7, subset="clean"))
    keep = ~full.noisy
    assert torch.equal(clean.indices, full.indices[keep]) and not clean.noisy.any()
    assert clean.num_indices == full.num_indices == len(full)
    assert torch.equal(clean.images, full.images[keep]) and torch.equal(clean.labels, full.labels[keep])
    assert [clean.captions[i] for i in clean.caption_ids] == [full.captions[i] for i in full.caption_ids[keep]]
    assert sorted(clean.captions) == sorted({full.captions[i] for i in full.caption_ids[keep].tolist()})


def test_default_pool_has_every_source_and_no_eval_prompt():
    pool = build_pool(PoolConfig(noise=0.1))
    assert len(pool) == 60000 + 1437 + 5000 and len(pool.classnames) == 25
    assert torch.equal(torch.unique(pool.labels), torch.arange(25))
    eval_prompts = {p for task in embedded_tasks() for p in task.prompts()}
    assert not set(pool.captions) & eval_prompts


def test_tokenize_rows_follow_captions():
    from harness.models import build_model

    pool = build_pool(PoolConfig(sources=("digits",), per_source=40))
    built = build_model("tiny-s")
    tokens = pool.tokenize(built.tokenizer)
    assert tokens.shape == (len(pool.captions), built.context_length)
    assert torch.equal(tokens[3], built.tokenizer([pool.captions[3]])[0])


@pytest.mark.parametrize("preset", ["tiny-s", "tiny-m", "tiny-l"])
def test_every_text_fits_the_tiny_context_untruncated(preset):
    from harness.models import build_model

    texts = [c for source, names in CLASSNAMES.items() for label in range(len(names))
             for c in captions.all_captions(source, label)]
    texts += [p for task in embedded_tasks() for p in task.prompts()]
    tokens = build_model(preset).tokenizer(texts)
    assert (tokens[:, -1] == 0).all()  # a truncated text would fill the last position


@pytest.mark.parametrize("field, value", [
    ("sources", ("mnist",)), ("sources", "digits"), ("sources", ("digits", "digits")), ("sources", ()),
    ("per_source", 0), ("per_source", True), ("shapes_count", 0), ("noise", 1.0), ("noise", -0.1),
    ("noise", "0.1"), ("subset", "dirty"), ("seed", -1), ("seed", 1.5), ("image_size", 4),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PoolConfig(**{field: value})


@pytest.mark.parametrize("cfg, split", [
    (PoolConfig(), "test"),
    (PoolConfig(sources=("digits", "shapes"), shapes_count=300, noise=0.3, subset="clean"), "train"),
    (PoolConfig(sources=("fashion_mnist", "digits"), per_source=500, noise=0.25, subset="clean", seed=3), "train"),
    (PoolConfig(sources=("shapes",), per_source=50, shapes_count=40), "test"),
])
def test_embedded_pool_size_is_the_size_of_the_pool_built(cfg, split):
    # the dry run's estimate sizes a pool from its config alone (no torch); building it must agree
    assert embedded_pool_size(cfg, split) == len(build_pool(cfg, split))


def test_source_rows_are_the_sources_split_sizes():
    for name, rows in SOURCE_ROWS.items():
        assert {split: len(sources.source_split(name, split, 1)) for split in rows} == rows
