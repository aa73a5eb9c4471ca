"""A file cache of CHAIR's ground-truth index, so scoring many caption files against the same
COCO annotations reads and parses those annotations once.

The index is what :meth:`visalign.eval.chair.Chair.from_coco` derives from the files: for every
image, its ground-truth categories (instance categories ∪ objects its human captions mention).
Reading COCO val2014's JSON and finding the objects of its 200k human captions takes seconds;
the index (a list of category numbers per image) loads in milliseconds.

A cache file is used only when its key matches: the SHA-256 of the instances and captions files'
bytes, the synonym table and the word rules (merges, protected words, tokenizer, the ``inflect``
version that singularises), and this format's version. A changed annotation file, another
synonym table or another visalign rule set therefore rebuilds the index; scores are identical
with and without the cache (tested). Files go to ``.visalign-cache/`` next to the instances
file, or, when that directory is not writable, to the user cache directory
(``$VISALIGN_CACHE_DIR``, else ``~/.cache/visalign``); they are written atomically, and a
damaged or foreign file is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "user_cache_dir", "cache_dirs", "index_key", "load_index", "save_index"]

FORMAT = 1
_DIR_NAME = ".visalign-cache"


def user_cache_dir() -> Path:
    """visalign's per-user cache directory, as the judge's cache uses it:
    ``$VISALIGN_CACHE_DIR``, else ``~/.cache/visalign``."""
    env = os.environ.get("VISALIGN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "visalign"


def cache_dirs(instances_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None
               ) -> list[Path]:
    """Where the index of ``instances_path`` is looked up and written, in order."""
    if cache_dir is not None:
        return [Path(cache_dir)]
    return [Path(instances_path).resolve().parent / _DIR_NAME, user_cache_dir() / "chair"]


def _file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def index_key(rules: Any, instances_path: str | os.PathLike,
              captions_path: str | os.PathLike | None) -> tuple[str, str]:
    """``(file name, content key)`` of the index for these files under ``rules`` (a JSON-able
    description of everything besides the files that the index depends on).

    The name depends on the files' locations and the rules, so a changed file replaces its old
    index instead of adding one; the key on their contents."""
    paths = [str(Path(instances_path).resolve()),
             str(Path(captions_path).resolve()) if captions_path is not None else None]
    name = "chair-index-" + _sha256_json([paths, rules])[:20] + ".json"
    digests = [_file_sha256(instances_path),
               _file_sha256(captions_path) if captions_path is not None else None]
    return name, _sha256_json([FORMAT, digests, rules])


def load_index(dirs: list[Path], name: str, key: str) -> tuple[dict, Path] | None:
    """The cached index payload and its path, or None when no valid file matches ``key``."""
    for d in dirs:
        path = d / name
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if (isinstance(data, dict) and data.get("format") == FORMAT and data.get("key") == key
                and isinstance(data.get("categories"), list)
                and isinstance(data.get("images"), list)):
            return data, path
    return None


def save_index(dirs: list[Path], name: str, key: str, payload: dict) -> Path | None:
    """Write the index to the first directory that takes it; None when none does (the score
    does not depend on the cache, so an unwritable cache is not an error)."""
    from visalign.io import atomic_write_text

    text = json.dumps({"format": FORMAT, "key": key, **payload}, ensure_ascii=False,
                      separators=(",", ":"))
    for d in dirs:
        try:
            return atomic_write_text(d / name, text)
        except OSError:
            continue
    return None
