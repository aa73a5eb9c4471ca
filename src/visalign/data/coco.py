"""COCO annotation files: instances (as a pycocotools ``COCO``) and captions, validated.

Errors name the file, the record (``images[3]``, ``annotations[17]``) and the field, so a bad
annotation never silently shifts a CHAIR or POPE number.
"""

from __future__ import annotations

import contextlib
import io
import os
from numbers import Real
from collections.abc import Mapping
from typing import Any

from visalign.io import DataError, read_json


def _as_int_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _require_lists(data: Any, path: str | os.PathLike, keys: tuple[str, ...]) -> None:
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object at the top level, got "
                              f"{type(data).__name__}")
    for k in keys:
        if k not in data:
            raise DataError(path, "missing top-level key", field=k)
        if not isinstance(data[k], list):
            raise DataError(path, f"must be a list, got {type(data[k]).__name__}", field=k)


def _image_ids(data: dict, path: str | os.PathLike) -> set[int]:
    ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        rec = f"images[{i}]"
        if not isinstance(img, dict):
            raise DataError(path, "expected an object", record=rec)
        if "id" not in img:
            raise DataError(path, "missing", record=rec, field="id")
        if not _as_int_id(img["id"]):
            raise DataError(path, f"must be an integer, got {img['id']!r}", record=rec,
                            field="id")
        if img["id"] in ids:
            raise DataError(path, f"duplicate image id {img['id']}", record=rec, field="id")
        ids.add(img["id"])
    return ids


def validate_coco_instances(data: Any, path: str | os.PathLike) -> dict:
    """Check a COCO instances dict: images, categories, annotations with valid references."""
    _require_lists(data, path, ("images", "annotations", "categories"))
    img_ids = _image_ids(data, path)
    cat_ids: set[int] = set()
    for i, c in enumerate(data["categories"]):
        rec = f"categories[{i}]"
        if not isinstance(c, dict):
            raise DataError(path, "expected an object", record=rec)
        for f in ("id", "name"):
            if f not in c:
                raise DataError(path, "missing", record=rec, field=f)
        if not _as_int_id(c["id"]):
            raise DataError(path, f"must be an integer, got {c['id']!r}", record=rec, field="id")
        if not isinstance(c["name"], str) or not c["name"]:
            raise DataError(path, "must be a non-empty string", record=rec, field="name")
        if c["id"] in cat_ids:
            raise DataError(path, f"duplicate category id {c['id']}", record=rec, field="id")
        cat_ids.add(c["id"])
    ann_ids: set[int] = set()
    for i, a in enumerate(data["annotations"]):
        rec = f"annotations[{i}]"
        if not isinstance(a, dict):
            raise DataError(path, "expected an object", record=rec)
        for f in ("id", "image_id", "category_id", "bbox"):
            if f not in a:
                raise DataError(path, "missing", record=rec, field=f)
        if not _as_int_id(a["id"]) or a["id"] in ann_ids:
            raise DataError(path, f"must be a unique integer, got {a['id']!r}", record=rec,
                            field="id")
        ann_ids.add(a["id"])
        if a["image_id"] not in img_ids:
            raise DataError(path, f"image id {a['image_id']!r} is not in 'images'", record=rec,
                            field="image_id")
        if a["category_id"] not in cat_ids:
            raise DataError(path, f"category id {a['category_id']!r} is not in 'categories'",
                            record=rec, field="category_id")
        b = a["bbox"]
        if not (isinstance(b, list) and len(b) == 4
                and all(isinstance(v, Real) and not isinstance(v, bool) for v in b)
                and b[2] >= 0 and b[3] >= 0):
            raise DataError(path, f"must be [x, y, w, h] with w, h >= 0, got {b!r}",
                            record=rec, field="bbox")
    return data


def load_coco_instances(path: str | os.PathLike):
    """Load a COCO instances file into a ``pycocotools.coco.COCO`` (validated first)."""
    from pycocotools.coco import COCO

    data = validate_coco_instances(read_json(path), path)
    for a in data["annotations"]:
        # pycocotools' loadRes/eval expect these; fill the defaults COCO files usually carry.
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):   # createIndex prints progress lines
        coco.createIndex()
    return coco


def load_coco_captions(path: str | os.PathLike) -> dict[int, list[str]]:
    """``{image_id: [caption, ...]}`` for every image in the file (file order kept)."""
    data = read_json(path)
    _require_lists(data, path, ("images", "annotations"))
    _image_ids(data, path)   # validates images
    out: dict[int, list[str]] = {img["id"]: [] for img in data["images"]}
    for i, a in enumerate(data["annotations"]):
        rec = f"annotations[{i}]"
        if not isinstance(a, dict):
            raise DataError(path, "expected an object", record=rec)
        for f in ("image_id", "caption"):
            if f not in a:
                raise DataError(path, "missing", record=rec, field=f)
        if a["image_id"] not in out:
            raise DataError(path, f"image id {a['image_id']!r} is not in 'images'", record=rec,
                            field="image_id")
        if not isinstance(a["caption"], str):
            raise DataError(path, f"must be a string, got {type(a['caption']).__name__}",
                            record=rec, field="caption")
        out[a["image_id"]].append(a["caption"])
    return out


def norm_image_id(x: Any) -> Any:
    """Image ids compare as ints when they look like ints ("42" and 42 are the same image)."""
    if isinstance(x, str) and x.strip().lstrip("-").isdigit():
        return int(x)
    return x


def coco_json(source: Any, what: str) -> tuple[dict, Any]:
    """A COCO json dict from a path, a dict, or a pycocotools ``COCO`` object."""
    if isinstance(source, (str, os.PathLike)):
        data = read_json(source)
        path: Any = source
    elif isinstance(source, Mapping):
        data, path = source, None
    elif hasattr(source, "dataset"):
        data, path = source.dataset, None
    else:
        raise TypeError(f"{what}: expected a path, a dict or a pycocotools COCO, got {source!r}")
    if not isinstance(data, Mapping):
        raise DataError(path, "expected a COCO JSON object")
    return data, path
