"""Where shards lie: brace specs expanded into shard paths or URLs, and local paths, file:// and http(s):// URLs
opened for reading."""
from __future__ import annotations

import os
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterable

URL_TIMEOUT_S = 60


def expand_urls(spec: str | Path | Iterable[str | Path]) -> list[str]:
    """Shard paths or URLs of a spec: brace expansion of each pattern; several patterns separated by
    "::" (as webdataset does); a list of patterns is expanded element by element.

    Braces: numeric ranges `{0..9}`, `{000000..000009}` (zero-padded to the wider end when either end
    has a leading zero), with a step `{0..10..5}` or descending `{3..1}`; letter ranges `{a..e}`;
    lists `{a,b,c}` (nested, empty alternatives allowed); several braces multiply, left first.
    A brace group with neither comma nor range, such as `{x}`, stays literal; an unclosed "{" is an
    error. No backslash escapes.
    """
    if isinstance(spec, Path):
        return [str(spec)]
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split("::")]
        out = [url for part in parts if part for url in _brace(part)]
    else:
        out = [url for item in spec for url in expand_urls(item)]
    return out


def _brace(s: str) -> list[str]:
    pos = 0
    while True:
        start = s.find("{", pos)
        if start < 0:
            return [s]
        end, commas = _closing(s, start)
        body = s[start + 1:end]
        if commas:
            bounds = [start] + commas + [end]
            alternatives = [s[a + 1:b] for a, b in zip(bounds, bounds[1:])]
        else:
            alternatives = _range(body)
            if alternatives is None:  # literal brace group: look for braces inside or after it
                pos = start + 1
                continue
        head, tail = s[:start], s[end + 1:]
        return [url for alt in alternatives for url in _brace(head + alt + tail)]


def _closing(s: str, start: int) -> tuple[int, list[int]]:
    """The position of the "}" closing s[start] and of the commas at its top level."""
    depth, commas = 0, []
    for i in range(start, len(s)):
        c = s[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i, commas
        elif c == "," and depth == 1:
            commas.append(i)
    raise ValueError(f"unbalanced brace at position {start} in shard spec {s!r}")


_NUM_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.(-?\d+))?$")


def _range(body: str) -> list[str] | None:
    m = _NUM_RANGE.match(body)
    if m:
        a, b = int(m[1]), int(m[2])
        step = abs(int(m[3])) if m[3] else 1
        if step == 0:
            raise ValueError(f"zero step in range {{{body}}}")
        digits = [x.lstrip("-") for x in (m[1], m[2])]
        width = max(len(m[1]), len(m[2])) if any(len(d) > 1 and d[0] == "0" for d in digits) else 0
        values = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
        return [f"{v:0{width}d}" for v in values]
    m = _CHAR_RANGE.match(body)
    if m:
        a, b = ord(m[1]), ord(m[2])
        step = abs(int(m[3])) if m[3] else 1
        if step == 0:
            raise ValueError(f"zero step in range {{{body}}}")
        values = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
        return [chr(v) for v in values]
    return None


def is_url(url: str) -> bool:
    """Whether `url` is read over the network (http or https); a file:// URL is a local path."""
    return url.startswith(("http://", "https://"))


def has_scheme(location: str) -> bool:
    """Whether `location` is a URL of any scheme (file:// included) rather than a plain path, which a spec
    keeps as written and a lazy pool cannot seek in."""
    return "://" in location


def local_path(url: str) -> str:
    """The path a file:// URL names; a path as it is."""
    if url.startswith("file://"):
        return urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    return url


def open_url(url: str) -> BinaryIO:
    """The bytes of a local path, a file:// URL or an http(s):// URL, as a binary stream."""
    if is_url(url):
        return urllib.request.urlopen(url, timeout=URL_TIMEOUT_S)  # noqa: S310 - http(s) only
    return open(local_path(url), "rb")


def normalized_url(url: str) -> str:
    """A shard's URL as manifests are matched against it: URLs as given, local paths absolute and normalised."""
    return url if is_url(url) else os.path.normpath(os.path.abspath(local_path(url)))
