"""Feature shards, the container of the reference-feature cache (harness.run.refcache): `<key>.image.npy` and
`<key>.text.npy` (one float row each) per sample index, read back as tables [num_indices, D] by sample index."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from harness.data.shards.decode import load_npy
from harness.data.shards.manifest import FEATURES_KIND, resolve_set
from harness.data.shards.read import check_read_args, stream_shards
from harness.data.shards.stats import ReadStats
from harness.data.shards.tar import DUPLICATE
from harness.data.shards.write import DEFAULT_SAMPLES_PER_SHARD, key_width, npy_bytes, write_set


def write_feature_shards(image: torch.Tensor, text: torch.Tensor, indices: torch.Tensor | Sequence[int],
                         out_dir: str | Path, samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD, *,
                         logit_scale: torch.Tensor | float | None = None, num_indices: int | None = None,
                         prefix: str = "features") -> list[Path]:
    """Write per-sample feature rows as tar shards (`<key>.image.npy`, `<key>.text.npy`, key = the
    zero-padded sample index, samples in index order) plus manifest.json; returns the shard paths.

    `image` and `text` are float [N, D] (D may differ between them), row i belonging to sample
    `indices[i]` (distinct, >= 0). `num_indices` (default: max index + 1) and `logit_scale` are
    recorded in the manifest so read_feature_shards can rebuild a refcache-style table. A full
    refcache table is written with indices = arange(num_indices)."""
    idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    if image.ndim != 2 or text.ndim != 2 or len(image) != len(idx) or len(text) != len(idx):
        raise ValueError(f"image and text must be [N, D] with N = len(indices) = {len(idx)}, "
                         f"got {tuple(image.shape)} and {tuple(text.shape)}")
    if not (image.is_floating_point() and text.is_floating_point()):
        raise ValueError("features must be floating point")
    if len(idx) and (int(idx.min()) < 0 or len(torch.unique(idx)) != len(idx)):
        raise ValueError("indices must be distinct and >= 0")
    bound = int(idx.max()) + 1 if len(idx) else 0
    if num_indices is None:
        num_indices = bound
    elif num_indices < bound:
        raise ValueError(f"num_indices {num_indices} is smaller than the largest index + 1 ({bound})")
    order = torch.argsort(idx)
    image, text = (x.float() if x.dtype == torch.bfloat16 else x for x in (image, text))  # numpy has no bfloat16
    image_np, text_np = image.detach().cpu()[order].numpy(), text.detach().cpu()[order].numpy()
    sorted_idx = idx[order].tolist()
    width = key_width(num_indices)

    def samples() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
        for row, index in enumerate(sorted_idx):
            yield f"{index:0{width}d}", [("image.npy", npy_bytes(image_np[row])), ("text.npy", npy_bytes(text_np[row]))]

    scale = None if logit_scale is None else float(torch.as_tensor(logit_scale).detach().cpu().reshape(()))
    manifest = {"kind": FEATURES_KIND, "num_indices": int(num_indices), "image_dim": int(image.shape[1]),
                "text_dim": int(text.shape[1]), "dtype": str(image_np.dtype), "logit_scale": scale}
    return write_set(Path(out_dir), samples(), samples_per_shard, prefix, manifest)



@dataclass
class FeatureTable:
    """Feature rows by sample index, the layout of a reference-feature cache (harness.run.refcache):
    image [num_indices, D_image] and text [num_indices, D_text], zero where `present` is false."""

    image: torch.Tensor
    text: torch.Tensor
    present: torch.Tensor          # bool [num_indices]
    logit_scale: torch.Tensor | None
    num_indices: int

    def cache_dict(self) -> dict[str, torch.Tensor]:
        """{"image", "text", "logit_scale"}: what refcache saves as features.pt (CachedReference's inputs)."""
        if self.logit_scale is None:
            raise ValueError("these feature shards carry no logit_scale")
        return {"image": self.image, "text": self.text, "logit_scale": self.logit_scale}


def read_feature_shards(urls: str | Path | Sequence[str | Path], manifest: Any = "auto", *,
                        num_indices: int | None = None, verify: bool = False,
                        stats: ReadStats | None = None) -> FeatureTable:
    """The feature table of feature shards (see write_feature_shards), rows by sample index.
    num_indices: the argument, else the manifest's, else largest index + 1. Damaged samples
    (bad_key, missing_image, missing_text, bad_array, bad_shape, bad_index, duplicate_index) are
    skipped and counted in `stats`; their rows stay zero and not present."""
    url_list, found = resolve_set(urls, manifest, FEATURES_KIND)
    stats = stats if stats is not None else ReadStats()
    meta = found.data if found else {}
    bound = num_indices if num_indices is not None else meta.get("num_indices")
    dims = {"image": meta.get("image_dim"), "text": meta.get("text_dim")}

    def decode(key: str, group: dict[str, bytes], error: str | None,
               url: str) -> tuple[int, np.ndarray, np.ndarray] | str:
        if error and not ("image.npy" in group and "text.npy" in group):
            return "truncated"
        if DUPLICATE in group:
            return "duplicate_member"
        base = key.rpartition("/")[2]
        if not base.isdigit() or len(base) > 18:
            return "bad_key"
        rows = []
        for name in ("image", "text"):
            if f"{name}.npy" not in group:
                return f"missing_{name}"
            try:
                row = load_npy(group[f"{name}.npy"])
            except Exception:  # noqa: BLE001 - reading .npy raises several kinds on damaged data
                return "bad_array"
            if row.ndim != 1 or row.dtype.kind != "f" or not len(row):
                return "bad_array"
            if dims[name] is None:
                dims[name] = len(row)
            if len(row) != dims[name]:
                return "bad_shape"
            rows.append(row)
        index = int(base)
        if bound is not None and index >= bound:
            return "bad_index"
        return index, rows[0], rows[1]

    check_read_args(0, 0, 0, verify, found)
    got: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for index, image_row, text_row in stream_shards(url_list, found, decode, stats, 0, 0, False, 0, False, verify):
        if index in got:
            stats.read -= 1
            stats.skip("duplicate_index", str(index))
            continue
        got[index] = (image_row, text_row)
    n = bound if bound is not None else (max(got) + 1 if got else 0)
    dtype = torch.from_numpy(next(iter(got.values()))[0][:0]).dtype if got else torch.float32
    image = torch.zeros((n, dims["image"] or 0), dtype=dtype)
    text = torch.zeros((n, dims["text"] or 0), dtype=dtype)
    present = torch.zeros(n, dtype=torch.bool)
    if got:
        idx = torch.tensor(sorted(got), dtype=torch.int64)
        image[idx] = torch.from_numpy(np.stack([got[i][0] for i in idx.tolist()])).to(dtype)
        text[idx] = torch.from_numpy(np.stack([got[i][1] for i in idx.tolist()])).to(dtype)
        present[idx] = True
    scale = meta.get("logit_scale")
    return FeatureTable(image=image, text=text, present=present,
                        logit_scale=None if scale is None else torch.tensor(float(scale)), num_indices=int(n))
