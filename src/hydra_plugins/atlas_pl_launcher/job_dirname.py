"""The `atlas_dirname` OmegaConf resolver: a sweep job's directory name is one path component.

`hydra.sweep.subdir` is built from `hydra.job.override_dirname`, which holds the override values as typed,
so `data.glue_dir=/some/path` used to put the job three directories deep, where nothing that lists a sweep's
job directories (or `resume=true`, which finds a job again by its directory) would look for it. File
systems also refuse names over 255 bytes, which a sweep over a few long values reaches.

The name must stay the same from run to run, so that a sweep re-run with `resume=true` finds the
directories of the first run: a name without a slash is returned unchanged (so directories written before
this resolver existed are still found), and a long name is cut and ends in a hash of the whole name
(sha256, not Python's per-process `hash()`), so two long names that share their beginning still differ.

Registered on import. Both processes that compose a job's config import this module: Hydra's plugin scan
imports every module under `hydra_plugins` before it composes anything, and a job process spawned by the
launcher receives the parent's resolvers through Hydra's `Singleton.get_state()`.
"""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

RESOLVER_NAME = "atlas_dirname"
# 255 bytes is the usual limit for one path component; the `<job num>_` prefix needs room too
MAX_NAME_BYTES = 200
HASH_CHARS = 16
_ESCAPES = {"/": "%2F", "\\": "%5C"}


def safe_dirname(name: object) -> str:
    """`name` as one path component of at most MAX_NAME_BYTES bytes (UTF-8), the same on every run."""
    text = str(name)
    safe = text
    for char, escape in _ESCAPES.items():
        safe = safe.replace(char, escape)
    encoded = safe.encode("utf-8")
    if len(encoded) <= MAX_NAME_BYTES:
        return safe
    # the hash is of the original text: `a/b` and a literal `a%2Fb` must not share a directory
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_CHARS]
    head = encoded[: MAX_NAME_BYTES - HASH_CHARS - 1].decode("utf-8", errors="ignore")  # whole characters
    return f"{head}~{digest}"


def register() -> None:
    """Idempotent: Hydra's plugin scan executes this module again after it was imported."""
    if not OmegaConf.has_resolver(RESOLVER_NAME):
        OmegaConf.register_new_resolver(RESOLVER_NAME, safe_dirname)


register()
