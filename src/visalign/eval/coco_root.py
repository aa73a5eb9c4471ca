"""A COCO root as the COCO site ships it, for the real-data benchmarks.

``ROOT/annotations/{instances,captions}_{train2014,val2014,...}.json`` and the image folders
``ROOT/val2014/COCO_val2014_000000000042.jpg``, ``ROOT/train2017/000000000042.jpg``, ... The
CHAIR and Object HalBench references take their ground truth from the 2014 train and val files
together (the 2017 images are the same images under the same ids), which :func:`merged_coco`
reads, kept to the images a run evaluates so memory stays small.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from visalign.io import DataError, read_json

__all__ = ["annotation_path", "merged_coco", "image_path", "GT_SPLITS"]

#: The ground-truth splits of the CHAIR / Object HalBench references.
GT_SPLITS = ("train2014", "val2014")
_IMAGE_DIRS = ("val2014", "train2014", "train2017", "val2017")


def _ann_dir(root: str | os.PathLike) -> Path:
    root = Path(root)
    if (root / "annotations").is_dir():
        return root / "annotations"
    if root.is_dir() and any(root.glob("instances_*.json")):
        return root  # the annotations folder itself
    raise DataError(root, "not a COCO root: no annotations/ folder (expected "
                          "annotations/instances_val2014.json, ...)")


def annotation_path(root: str | os.PathLike, kind: str, split: str) -> Path:
    """``ROOT/annotations/{kind}_{split}.json``; a missing file is a one-line error."""
    p = _ann_dir(root) / f"{kind}_{split}.json"
    if not p.exists():
        raise DataError(p, f"COCO {kind} annotations for {split} not found (download "
                           f"annotations_trainval{split[-4:]}.zip from the COCO site)")
    return p


def merged_coco(root: str | os.PathLike, splits: Iterable[str] = GT_SPLITS,
                image_ids: Iterable[Any] | None = None) -> tuple[dict, dict]:
    """(instances, captions) dicts of ``splits`` merged, as the references merge them; with
    ``image_ids`` only those images (and their annotations) are kept."""
    keep = None if image_ids is None else {int(i) for i in image_ids}
    inst: dict[str, Any] = {"images": [], "annotations": [], "categories": None}
    caps: dict[str, Any] = {"images": [], "annotations": []}
    seen: set[int] = set()
    for split in splits:
        ip = annotation_path(root, "instances", split)
        data = read_json(ip)
        if inst["categories"] is None:
            inst["categories"] = data.get("categories") or []
        images = [im for im in data.get("images") or []
                  if keep is None or im.get("id") in keep]
        for im in images:
            seen.add(im.get("id"))
        inst["images"] += images
        inst["annotations"] += [a for a in data.get("annotations") or []
                                if keep is None or a.get("image_id") in keep]
        del data
        cdata = read_json(annotation_path(root, "captions", split))
        caps["images"] += [im for im in cdata.get("images") or []
                           if keep is None or im.get("id") in keep]
        caps["annotations"] += [a for a in cdata.get("annotations") or []
                                if keep is None or a.get("image_id") in keep]
    if keep is not None:
        missing = sorted(keep - seen)
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise DataError(_ann_dir(root), f"{len(missing)} image ids are in none of "
                                            f"{', '.join(splits)} ({shown})")
    return inst, caps


def image_path(root: str | os.PathLike, image_id: int,
               folders: Iterable[str] = _IMAGE_DIRS) -> Path:
    """The file of COCO image ``image_id`` under ``root`` (2014 names in val2014/ and
    train2014/, 2017 names in train2017/ and val2017/); none found is a one-line error."""
    root = Path(root)
    tried = []
    for folder in folders:
        name = (f"COCO_{folder}_{int(image_id):012d}.jpg" if folder.endswith("2014")
                else f"{int(image_id):012d}.jpg")
        p = root / folder / name
        if p.exists():
            return p
        tried.append(f"{folder}/{name}")
    raise DataError(root, f"image {image_id} not found (tried {', '.join(tried)})")
