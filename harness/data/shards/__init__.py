"""Webdataset tar shards of an image-text pool, and of a reference-feature table.

Layout (the webdataset convention: the members of one sample share a key, the part of a member's
name before the first dot of its base name; the rest is the field):

    shard-000000.tar   000000000.json  {"caption_label": 3, "index": 0, "label": 3, "noisy": false, "source": "shapes"}
                       000000000.png   the image, RGB, lossless (or 000000000.npy: uint8 [3, S, S], image_format="npy")
                       000000000.txt   the caption, UTF-8
                       000000001.json  ...
    shard-000001.tar   ...
    manifest.json      written last: its presence means the set is complete

The key is the sample's stable global index, zero-padded. Shards are written with fixed tar
metadata (mtime 0, uid/gid 0, no user names, mode 0644, USTAR), so the same pool always gives
byte-identical shards; each is written to a temporary file and renamed into place (harness.io).
Rewriting a directory first removes its manifest and, once the new shards are in place, any older
`<prefix>-NNNNNN.tar` the new set does not name.

Reading uses a small tar parser of its own rather than `tarfile` or the webdataset library:
`tarfile` ends a truncated archive silently when the cut falls between members, and both libraries
raise on a damaged sample; here every bad sample is skipped and counted in a `ReadStats` (reasons:
bad_image, bad_json, bad_text, bad_size, bad_label, bad_source, bad_index, missing_image,
missing_txt, missing_json, duplicate_member, truncated, lost, ...), and a stream never raises on
bad data. With a manifest, samples a shard promised but did not deliver (after a truncation, in an
unreadable shard, or in a shard that fails its SHA-256 with verify=True) are counted as "lost".
Gzipped shards (.tar.gz) are read too. Shards are local paths, file:// URLs or http(s):// URLs.
Images are read from png, jpg/jpeg, webp, ppm or bmp (with PIL) or npy members.

Feature shards (the reference-feature cache, harness.run.refcache) use the same container:
`<key>.image.npy` and `<key>.text.npy` (one row each, float) per sample index; reading them back
gives tables [num_indices, D] indexed by sample index, the layout of refcache's features.pt.

Modules: urls (specs, opening), tar (the container, read), manifest, write, decode, read (sample
streams, read_pool), features, stats. This package re-exports the API its users call; the helpers
its modules share are imported from the module that owns them.
"""
from harness.data.shards.features import FeatureTable, read_feature_shards, write_feature_shards
from harness.data.shards.manifest import MANIFEST, manifest_digest, shard_spec
from harness.data.shards.read import iterate_samples, read_pool
from harness.data.shards.stats import ReadStats
from harness.data.shards.urls import expand_urls
from harness.data.shards.write import IMAGE_FORMATS, write_folder_shards, write_shards

__all__ = ["FeatureTable", "IMAGE_FORMATS", "MANIFEST", "ReadStats", "expand_urls", "iterate_samples",
           "manifest_digest", "read_feature_shards", "read_pool", "shard_spec", "write_feature_shards",
           "write_folder_shards", "write_shards"]
