"""Training captions: several templates and synonyms per class, unlike the evaluation prompts.

A caption is chosen by hashing (seed, sample key, field), so it depends only on the sample's
stable index, its class (and shape attributes) and the seed: never on which other samples
are in the pool. Evaluation prompts ("a photo of a {c}.") are never produced here.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping

import numpy as np

from harness.data.sources import SHAPE_COLOURS, SHAPE_SIZES, SOURCE_NAMES

_FASHION = (
    ("t-shirt", "tee", "short-sleeved top", "crew-neck tee", "basic top"),
    ("pair of trousers", "pair of jeans", "pair of slacks", "pair of chinos"),
    ("pullover", "sweater", "jumper", "knitted jumper", "wool sweater"),
    ("dress", "summer dress", "sundress", "frock", "evening gown"),
    ("coat", "jacket", "overcoat", "parka", "winter jacket"),
    ("sandal", "flip-flop", "strappy sandal", "slide sandal"),
    ("shirt", "button-down shirt", "blouse", "collared shirt", "flannel shirt"),
    ("sneaker", "running shoe", "trainer", "canvas shoe", "athletic shoe"),
    ("bag", "handbag", "purse", "tote bag", "shoulder bag"),
    ("ankle boot", "chelsea boot", "leather boot", "short boot", "heeled boot"),
)
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SHAPE_WORDS = (("circle", "disc", "round dot"), ("square", "square tile"), ("triangle", "triangular sign"),
                ("star", "five-pointed star"), ("cross", "plus sign"))
_COLOUR_WORDS = {"red": ("red",), "yellow": ("yellow",), "green": ("green",), "blue": ("blue",),
                 "purple": ("purple", "violet"), "white": ("white",)}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}

# Per source: templates, and for each template field the options per class (or per attribute value).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": (
        "product shot: {item}",
        "{item} on a plain background",
        "a grey picture of a {item}",
        "a low-resolution greyscale image of a {item}",
        "catalogue image, {item}",
        "{item} for sale",
        "my new {item}",
        "a {item}, isolated",
        "thumbnail of a {item} from an online shop",
        "{item}, black and white",
    ),
    "digits": (
        "the digit {digit}",
        "a handwritten {word}",
        "handwritten number {digit}",
        "the number {word}, written by hand",
        "a scanned digit: {digit}",
        "{digit} written in pen, low resolution",
        "8x8 pixel scan of the digit {word}",
        "someone wrote the number {word}",
    ),
    "shapes": (
        "a {size} {colour} {shape}",
        "{colour} {shape}, {size}",
        "a {size} {colour} {shape} on a dark background",
        "clip art of a {colour} {shape}, {size}",
        "a drawing of a {size} {colour} {shape}",
        "{size} {colour} {shape} icon",
        "a {colour} {shape} ({size})",
    ),
}
# Per source, the template fields: (name, what picks the option list: "label" or an attribute, lists).
_FIELDS: dict[str, tuple[tuple[str, str, tuple[tuple[str, ...], ...]], ...]] = {
    "fashion_mnist": (("item", "label", _FASHION),),
    "digits": (("digit", "label", tuple((str(d),) for d in range(10))),
               ("word", "label", tuple((w,) for w in _NUMBER_WORDS))),
    "shapes": (("shape", "label", _SHAPE_WORDS),
               ("colour", "colour", tuple(_COLOUR_WORDS[c] for c in SHAPE_COLOURS)),
               ("size", "size", tuple(_SIZE_WORDS[s] for s in SHAPE_SIZES))),
}
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")
_MASK64 = (1 << 64) - 1


def sample_hash(seed: int, keys: np.ndarray, salt: int) -> np.ndarray:
    """A well-mixed uint64 per key (splitmix64 of seed, key and salt): a random draw per sample
    that does not depend on the other samples."""
    z = np.asarray(keys).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = z + np.uint64((seed * 0x632BE59BD9B4E019 + salt * 0x85EBCA77C2B2AE63 + 1) & _MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _format(source: str, template: int, choices: Mapping[str, str]) -> str:
    return _ARTICLE.sub(r"\1n ", TEMPLATES[source][template].format(**choices))


def _check_source(source: str) -> None:
    if source not in TEMPLATES:
        raise ValueError(f"unknown source {source!r}; available: {', '.join(SOURCE_NAMES)}")


def _attribute_names(source: str) -> list[str]:
    return [by for _, by, _ in _FIELDS[source] if by != "label"]


def write_captions(source: str, labels: np.ndarray, keys: np.ndarray, seed: int,
                   attributes: Mapping[str, np.ndarray] | None = None) -> tuple[list[str], np.ndarray]:
    """Captions for samples of `source` with class `labels` and stable `keys`.

    Returns the unique caption strings and, per sample, the index of its caption in them;
    each unique caption is formatted once (a 60k-sample source has a few hundred).
    Shapes need `attributes` "colour" and "size" (ints per sample).
    """
    _check_source(source)
    attributes = attributes or {}
    missing = [name for name in _attribute_names(source) if name not in attributes]
    if missing:
        raise ValueError(f"{source} captions need attributes {missing}")
    keys = np.asarray(keys, dtype=np.int64)
    selectors = {"label": np.asarray(labels, dtype=np.int64),
                 **{k: np.asarray(v, dtype=np.int64) for k, v in attributes.items()}}
    columns = [sample_hash(seed, keys, 0) % np.uint64(len(TEMPLATES[source]))]
    for salt, (_, by, options) in enumerate(_FIELDS[source], start=1):
        counts = np.array([len(o) for o in options], dtype=np.uint64)[selectors[by]]
        columns += [selectors[by].astype(np.uint64), sample_hash(seed, keys, salt) % counts]
    codes, ids = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)
    captions = []
    for template, *picks in codes.tolist():
        choices = {name: options[picks[2 * i]][picks[2 * i + 1]]
                   for i, (name, _, options) in enumerate(_FIELDS[source])}
        captions.append(_format(source, template, choices))
    return captions, ids.reshape(-1).astype(np.int64)


def random_attributes(source: str, keys: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Uniformly drawn caption attributes for `keys` (for noisy captions of another class)."""
    _check_source(source)
    return {by: (sample_hash(seed, keys, 100 + i) % np.uint64(len(options))).astype(np.int64)
            for i, (_, by, options) in enumerate(_FIELDS[source]) if by != "label"}


def all_captions(source: str, label: int) -> set[str]:
    """Every caption `write_captions` can produce for class `label` of `source`."""
    _check_source(source)
    words = [options[label] if by == "label" else sorted({w for option in options for w in option})
             for _, by, options in _FIELDS[source]]
    names = [name for name, _, _ in _FIELDS[source]]
    return {_format(source, t, dict(zip(names, pick)))
            for t in range(len(TEMPLATES[source])) for pick in itertools.product(*words)}
