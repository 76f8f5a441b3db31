"""Shard-set manifests: manifest.json, written last beside the shards (format, kind, per-shard sample count and
SHA-256), and the shard URLs and manifest a spec, directory or manifest path names."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness import io
from harness.data.shards.urls import URL_TIMEOUT_S, expand_urls, is_url, local_path, normalized_url

MANIFEST = "manifest.json"
FORMAT = "clipsteer-shards"
VERSION = 1
POOL_KIND = "pool"
FEATURES_KIND = "features"


def shard_spec(out_dir: str | Path) -> str:
    """The brace spec naming every shard of the set in `out_dir`, from its manifest
    (e.g. "out/shard-{000000..000009}.tar")."""
    manifest = _load_manifest_file(Path(out_dir) / MANIFEST)
    return str(Path(out_dir) / manifest["pattern"])


def manifest_digest(source: str | Path) -> str:
    """The SHA-256 of a shard set's manifest (a directory, or its manifest.json): it names every
    shard's SHA-256, so it identifies the set's content (for cache and run identities)."""
    path = Path(source)
    path = path / MANIFEST if path.is_dir() else path
    return io.file_sha256(path)


@dataclass
class Manifest:
    """A shard set's manifest, and where the shards it names lie."""

    data: dict[str, Any]
    base: str  # the folder (or URL prefix) the shard names are relative to

    def url(self, name: str) -> str:
        return f"{self.base.rstrip('/')}/{name}" if is_url(self.base) else str(Path(self.base) / name)

    def urls(self) -> list[str]:
        return [self.url(e["name"]) for e in self.data["shards"]]

    def entries(self) -> dict[str, dict[str, Any]]:
        return {normalized_url(self.url(e["name"])): e for e in self.data["shards"]}


def _check_manifest(data: Any, where: str) -> dict[str, Any]:
    if (not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("shards"), list)
            or not all(isinstance(e, dict) and {"name", "count", "sha256"} <= set(e) for e in data["shards"])):
        raise ValueError(f"{where} is not a {FORMAT} manifest")
    if data.get("version") != VERSION:
        raise ValueError(f"{where}: manifest version {data.get('version')!r}, this reader knows {VERSION}")
    return data


def _load_manifest_file(path: Path) -> dict[str, Any]:
    try:
        data = io.read_json(path)
    except ValueError as e:
        raise ValueError(f"{path}: unreadable manifest ({e})") from None
    return _check_manifest(data, str(path))


def _sibling_manifest(url: str) -> str:
    if is_url(url):
        return url.rsplit("/", 1)[0] + "/" + MANIFEST
    return str(Path(local_path(url)).parent / MANIFEST)


def _fetch_manifest(where: str, required: bool) -> Manifest | None:
    base = where.rsplit("/", 1)[0] if is_url(where) else str(Path(local_path(where)).parent)
    if is_url(where):
        try:
            with urllib.request.urlopen(where, timeout=URL_TIMEOUT_S) as response:  # noqa: S310
                raw = response.read()
        except (OSError, urllib.error.URLError):
            if required:
                raise
            return None
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{where}: unreadable manifest ({e})") from None
        return Manifest(_check_manifest(data, where), base)
    path = Path(local_path(where))
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"no shard manifest at {path}")
        return None
    return Manifest(_load_manifest_file(path), base)


def resolve_set(urls: str | Path | Sequence[str | Path], manifest: Any, kind: str) -> tuple[list[str], Manifest | None]:
    """Shard URLs and the manifest describing them. `urls` may be a shard-set directory or its
    manifest.json (every shard it names), or a spec / list of shards. `manifest`: "auto" (the
    manifest.json beside the first shard, if there is one), None (none), a path/URL, or a dict."""
    if isinstance(urls, (str, Path)) and not (isinstance(urls, str) and ("{" in urls or "::" in urls)):
        local = Path(local_path(str(urls))) if not is_url(str(urls)) else None
        if local is not None and (local.is_dir() or (local.name == MANIFEST and local.is_file())):
            found = _fetch_manifest(str(local / MANIFEST if local.is_dir() else local), required=True)
            _check_kind(found, kind)
            return found.urls(), found
        if is_url(str(urls)) and str(urls).endswith("/" + MANIFEST):
            found = _fetch_manifest(str(urls), required=True)
            _check_kind(found, kind)
            return found.urls(), found
    url_list = [str(u) for u in expand_urls(urls)]
    if not url_list:
        raise ValueError(f"the shard spec {urls!r} names no shards")
    if manifest is None or isinstance(manifest, Manifest):
        found = manifest
    elif isinstance(manifest, dict):
        found = Manifest(_check_manifest(manifest, "the given manifest"), os.path.dirname(url_list[0]))
    elif isinstance(manifest, str) and manifest == "auto":
        found = _fetch_manifest(_sibling_manifest(url_list[0]), required=False)
    else:
        found = _fetch_manifest(str(manifest), required=True)
    _check_kind(found, kind)
    return url_list, found


def _check_kind(found: Manifest | None, kind: str) -> None:
    if found is not None and found.data.get("kind") != kind:
        raise ValueError(f"the shards at {found.base} hold {found.data.get('kind')!r}, not {kind!r}")
