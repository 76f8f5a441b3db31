"""Raw image sources: Fashion-MNIST, scikit-learn's 8x8 digits and procedurally drawn shapes.

Each source gives disjoint train and test `Split`s of uint8 images ([N, H, W] greyscale or
[N, H, W, 3] RGB), int64 labels and class names. Loaders are cached in-process and return
read-only arrays, so several pools built in one process share one copy.
"""
from __future__ import annotations

import functools
import gzip
import math
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from harness.data.poolconfig import SHAPES_TEST_COUNT, SHAPES_TRAIN_COUNT, SOURCE_NAMES
from harness.io import write_bytes, writing

FASHION_MNIST_ENV = "CLIPSTEER_FASHION_MNIST"
FASHION_MNIST_DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ("t-shirt", "trousers", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross")
SHAPE_COLOURS = {"red": (220, 40, 40), "yellow": (230, 210, 40), "green": (50, 180, 60),
                 "blue": (50, 90, 230), "purple": (150, 60, 200), "white": (235, 235, 235)}
SHAPE_SIZES = ("small", "large")
SHAPES_IMAGE_SIZE = 32

_SHAPES_STREAMS = {"train": 0, "test": 1, "grid": 2}  # disjoint random streams per split
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Split:
    """One split of a source; `attributes` holds per-image int arrays (shapes: colour, size)."""

    images: np.ndarray
    labels: np.ndarray
    classnames: tuple[str, ...]
    attributes: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes (the MNIST container format)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clipsteer" / "fashion-mnist"


def _fashion_mnist_root(root: str | Path | None) -> Path:
    """The first folder holding all four files: `root`, $CLIPSTEER_FASHION_MNIST, Debian's, the cache.

    When none has them, download them into the cache from Zalando's GitHub.
    """
    names = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
    explicit = root if root is not None else os.environ.get(FASHION_MNIST_ENV)
    candidates = [Path(explicit)] if explicit else [FASHION_MNIST_DEBIAN_ROOT]
    candidates.append(_cache_dir())
    for folder in candidates:
        if all((folder / name).is_file() for name in names):
            return folder
    try:
        with writing(_cache_dir()):  # one downloader at a time; a killed one's temporaries go first
            for name in names:
                if not (_cache_dir() / name).is_file():
                    with urllib.request.urlopen(FASHION_MNIST_URL + name, timeout=60) as response:
                        write_bytes(_cache_dir() / name, response.read())
    except OSError as err:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {', '.join(map(str, candidates))} and the download failed ({err}); "
            f"run `apt-get install dataset-fashion-mnist` or point ${FASHION_MNIST_ENV} at the four "
            "*-ubyte.gz files") from err
    return _cache_dir()


@functools.lru_cache(maxsize=4)
def _fashion_mnist_cached(root: Path) -> tuple[Split, Split]:
    splits = []
    for images_name, labels_name in FASHION_MNIST_FILES.values():
        images = _read_idx(root / images_name)
        labels = _read_idx(root / labels_name).astype(np.int64)
        if images.ndim != 3 or len(images) != len(labels):
            raise ValueError(f"{root}: {images_name} and {labels_name} do not match")
        splits.append(Split(_frozen(images), _frozen(labels), FASHION_MNIST_CLASSES))
    return splits[0], splits[1]


def fashion_mnist(root: str | Path | None = None) -> tuple[Split, Split]:
    """Fashion-MNIST (60k train / 10k test, 28x28 greyscale), from Debian's dataset-fashion-mnist."""
    return _fashion_mnist_cached(_fashion_mnist_root(root).resolve())


@functools.lru_cache(maxsize=4)
def digits(seed: int = 0, test_fraction: float = 0.2) -> tuple[Split, Split]:
    """scikit-learn's 8x8 digits (values 0..16 scaled to 0..255), split stratified by class."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes seconds to import
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.arange(len(images))
    train, test = train_test_split(order, test_size=test_fraction, random_state=seed,
                                   stratify=data.target)
    return tuple(Split(_frozen(images[idx]), _frozen(data.target[idx].astype(np.int64)), DIGIT_CLASSES)
                 for idx in (np.sort(train), np.sort(test)))


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of circumradius `r`, rotated by `angle`."""
    if shape == "square":
        polar = [(r, angle + math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif shape == "triangle":
        polar = [(r, angle + k * 2 * math.pi / 3) for k in range(3)]
    elif shape == "star":
        polar = [(r if k % 2 == 0 else 0.42 * r, angle + k * math.pi / 5) for k in range(10)]
    elif shape == "cross":
        w = 0.34 * r
        corners = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r),
                   (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
        polar = [(math.hypot(x, y), angle + math.atan2(y, x)) for x, y in corners]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    return [(cx + rho * math.cos(phi), cy + rho * math.sin(phi)) for rho, phi in polar]


def _render_shapes(shape: np.ndarray, colour: np.ndarray, size: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Draw one shape per row; `u` [N, 8] uniform numbers set radius, position, angle and tints."""
    s = SHAPES_IMAGE_SIZE * _SUPERSAMPLE
    out = np.empty((len(shape), SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE, 3), dtype=np.uint8)
    palette = np.array(list(SHAPE_COLOURS.values()), dtype=np.float64)
    for i in range(len(shape)):
        r = (5.0 + 1.5 * u[i, 0]) if size[i] == 0 else (10.0 + 2.5 * u[i, 0])
        cx = r + 1 + u[i, 1] * (SHAPES_IMAGE_SIZE - 2 * r - 2)
        cy = r + 1 + u[i, 2] * (SHAPES_IMAGE_SIZE - 2 * r - 2)
        fill = tuple(int(c) for c in np.clip(palette[colour[i]] + (u[i, 5:8] - 0.5) * 40, 0, 255))
        grey = int(u[i, 4] * 40)
        canvas = Image.new("RGB", (s, s), (grey, grey, grey))
        draw = ImageDraw.Draw(canvas)
        k = _SUPERSAMPLE
        name = SHAPE_CLASSES[shape[i]]
        if name == "circle":
            draw.ellipse([(cx - r) * k, (cy - r) * k, (cx + r) * k, (cy + r) * k], fill=fill)
        else:
            draw.polygon(_shape_polygon(name, cx * k, cy * k, r * k, u[i, 3] * 2 * math.pi), fill=fill)
        out[i] = np.asarray(canvas.reduce(_SUPERSAMPLE))
    return out


def _shapes_split(shape: np.ndarray, colour: np.ndarray, size: np.ndarray, u: np.ndarray) -> Split:
    images = _render_shapes(shape, colour, size, u)
    return Split(_frozen(images), _frozen(shape.astype(np.int64)), SHAPE_CLASSES,
                 {"colour": _frozen(colour.astype(np.int64)), "size": _frozen(size.astype(np.int64))})


def _random_shapes(stream: str, count: int, seed: int) -> Split:
    """`count` shapes with attributes and looks drawn from the random stream `stream` of `seed`."""
    u = np.random.default_rng([seed, _SHAPES_STREAMS[stream]]).random((count, 11))
    attributes = [(u[:, 8 + i] * n).astype(np.int64)
                  for i, n in enumerate((len(SHAPE_CLASSES), len(SHAPE_COLOURS), len(SHAPE_SIZES)))]
    return _shapes_split(*attributes, u[:, :8])


@functools.lru_cache(maxsize=8)
def shapes(train_count: int = SHAPES_TRAIN_COUNT, test_count: int = SHAPES_TEST_COUNT,
           seed: int = 0) -> tuple[Split, Split]:
    """Coloured shapes on a dark background (32x32 RGB), labelled by shape; train and test come
    from separate random streams of `seed`, and a longer split starts with the shorter one."""
    return _random_shapes("train", train_count, seed), _random_shapes("test", test_count, seed)


@functools.lru_cache(maxsize=4)
def shapes_grid(seed: int = 0) -> Split:
    """One shape per (shape, colour, size) combination, looks from a third stream (for retrieval)."""
    shape, colour, size = (a.ravel() for a in np.meshgrid(
        np.arange(len(SHAPE_CLASSES)), np.arange(len(SHAPE_COLOURS)), np.arange(len(SHAPE_SIZES)), indexing="ij"))
    u = np.random.default_rng([seed, _SHAPES_STREAMS["grid"]]).random((len(shape), 8))
    return _shapes_split(shape, colour, size, u)


SPLITS = ("train", "test")


def source_split(name: str, split: str, shapes_count: int) -> Split:
    """The `split` ("train" or "test") of source `name` (`shapes_count` train images for the generated shapes)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    which = SPLITS.index(split)
    if name == "fashion_mnist":
        return fashion_mnist()[which]
    if name == "digits":
        return digits()[which]
    if name == "shapes":
        return shapes(train_count=shapes_count)[which]
    raise ValueError(f"unknown source {name!r}; available: {', '.join(SOURCE_NAMES)}")
