"""COCO annotation files: instances (as a pycocotools ``COCO``) and captions, validated; COCO
file names (:func:`coco_image_id`) and a COCO directory as the COCO site ships it
(:class:`CocoRoot`).

Errors name the file, the record (``images[3]``, ``annotations[17]``) and the field, so a bad
annotation never silently shifts a CHAIR or POPE number.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from pathlib import Path, PurePath
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
    coco.source_path = str(path)   # so errors about its contents can name the file
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
        data, path = source.dataset, getattr(source, "source_path", None)
    else:
        raise TypeError(f"{what}: expected a path, a dict or a pycocotools COCO, got {source!r}")
    if not isinstance(data, Mapping):
        raise DataError(path, "expected a COCO JSON object")
    return data, path


# -- COCO file names and the COCO root -------------------------------------------------------

# COCO 2014/2015 names carry the split ("COCO_val2014_000000033471.jpg"), 2017 names do not
# ("000000033471.jpg"); both pad the image id to 12 digits.
_COCO_NAME = re.compile(r"^(?:COCO_((?:train|val|test)20\d\d)_)?(\d{12})\.(?:jpe?g|png)$",
                        re.IGNORECASE)
_COCO_SPLIT = re.compile(r"^(train|val|test)(2014|2015|2017)$")


def coco_image_id(image: str | os.PathLike) -> int | None:
    """The COCO image id in a file name or path (``000000033471.jpg``,
    ``COCO_val2014_000000033471.jpg``, ``coco/train2017/000000033471.jpg`` -> 33471); None for a
    name that is not a COCO image's."""
    m = _COCO_NAME.match(PurePath(str(image)).name)
    return int(m.group(2)) if m else None


def coco_split_of(image: str | os.PathLike) -> str | None:
    """The COCO split an image path names (``COCO_val2014_...`` or a ``train2017/`` folder)."""
    p = PurePath(str(image))
    m = _COCO_NAME.match(p.name)
    if m and m.group(1):
        return m.group(1)
    for part in reversed(p.parts[:-1]):
        if _COCO_SPLIT.match(part):
            return part
    return None


#: The ground truth of the CHAIR and Object HalBench references: COCO 2014 train + val.
GT_SPLITS = ("train2014", "val2014")
#: Where :meth:`CocoRoot.find_image` looks for an image, in order.
IMAGE_FOLDERS = ("val2014", "train2014", "train2017", "val2017")


class CocoRoot:
    """A COCO directory as the COCO site ships it::

        ROOT/annotations/instances_{split}.json, captions_{split}.json
        ROOT/{split}/<image files>        (split: train2014, val2014, train2017, val2017, ...)

    Paths are checked when asked for: a missing file or folder raises a one-line
    :class:`~visalign.io.DataError` naming it (and the archive it comes in). Annotation files
    load once per root (:meth:`instances`, :meth:`captions`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise DataError(self.path, "COCO root not found: expected a directory holding "
                                       "annotations/ and image folders such as val2014/")
        # the annotations folder itself is accepted too (no image folders then)
        self.annotations_dir = (self.path / "annotations"
                                if (self.path / "annotations").is_dir()
                                or not any(self.path.glob("instances_*.json")) else self.path)
        self._instances: dict[str, Any] = {}
        self._captions: dict[str, dict[int, list[str]]] = {}

    def __repr__(self) -> str:
        return f"CocoRoot({str(self.path)!r})"

    @staticmethod
    def _split(split: str) -> str:
        if not isinstance(split, str) or not _COCO_SPLIT.match(split):
            raise ValueError(f"unknown COCO split {split!r}: expected train2014, val2014, "
                             "train2017, val2017 (or test2014/2015/2017)")
        return split

    def _annotation(self, kind: str, split: str) -> Path:
        self._split(split)
        p = self.annotations_dir / f"{kind}_{split}.json"
        if not p.is_file():
            year = split[-4:]
            raise DataError(p, f"COCO annotation file not found (the COCO root {self.path} needs "
                               f"annotations/{kind}_{split}.json, from annotations_trainval"
                               f"{year}.zip)")
        return p

    def instances_path(self, split: str) -> Path:
        """``ROOT/annotations/instances_{split}.json`` (must exist)."""
        return self._annotation("instances", split)

    def captions_path(self, split: str) -> Path:
        """``ROOT/annotations/captions_{split}.json`` (must exist)."""
        return self._annotation("captions", split)

    def image_dir(self, split: str) -> Path:
        """``ROOT/{split}`` (must exist)."""
        p = self.path / self._split(split)
        if not p.is_dir():
            raise DataError(p, f"COCO image folder not found (the COCO root {self.path} needs "
                               f"{split}/, from {split}.zip)")
        return p

    def file_name(self, split: str, image_id: int) -> str:
        """The COCO file name of an image: ``COCO_val2014_%012d.jpg`` (2014, 2015) or
        ``%012d.jpg`` (2017)."""
        self._split(split)
        if split.endswith("2017"):
            return f"{int(image_id):012d}.jpg"
        return f"COCO_{split}_{int(image_id):012d}.jpg"

    def image_path(self, split: str, image: int | str) -> Path:
        """The file of an image, given its id or its file name (a path keeps its last part:
        mix665k's ``coco/train2017/000000033471.jpg`` works); it must exist."""
        if isinstance(image, bool) or not isinstance(image, (int, str)):
            raise TypeError(f"image must be an image id or a file name, got {image!r}")
        if isinstance(image, str) and not image.strip().isdigit():
            name, image_id = PurePath(image).name, coco_image_id(image)
        else:
            image_id = int(image)
            name = self.file_name(split, image_id)
        p = self.image_dir(split) / name
        if not p.is_file():
            what = f" (image id {image_id})" if image_id is not None else ""
            raise DataError(p, f"COCO image not found{what} in the {split} folder of {self.path}")
        return p

    def instances(self, split: str):
        """The split's instances as a ``pycocotools`` ``COCO`` (validated, loaded once)."""
        if split not in self._instances:
            self._instances[split] = load_coco_instances(self.instances_path(split))
        return self._instances[split]

    def captions(self, split: str) -> dict[int, list[str]]:
        """``{image_id: [caption, ...]}`` of the split (loaded once)."""
        if split not in self._captions:
            self._captions[split] = load_coco_captions(self.captions_path(split))
        return self._captions[split]

    def image_ids(self, split: str) -> list[int]:
        """Every image id of the split's instances file, in file order."""
        return [img["id"] for img in self.instances(split).dataset["images"]]

    def splits(self) -> list[str]:
        """The splits this root has an instances file or an image folder for."""
        found = {p.name for p in self.path.iterdir() if p.is_dir() and _COCO_SPLIT.match(p.name)}
        ann = self.path / "annotations"
        if ann.is_dir():
            for f in ann.glob("instances_*.json"):
                s = f.stem.split("_", 1)[1]
                if _COCO_SPLIT.match(s):
                    found.add(s)
        return sorted(found)

    def merged(self, splits: Sequence[str] = GT_SPLITS,
               image_ids: Iterable[Any] | None = None) -> tuple[dict, dict]:
        """(instances, captions) dicts of ``splits`` merged, as the CHAIR and Object HalBench
        references merge COCO 2014 train and val; with ``image_ids`` only those images (and their
        annotations) are kept, so memory stays small. An id in none of them is an error."""
        keep = None if image_ids is None else {int(i) for i in image_ids}
        inst: dict[str, Any] = {"images": [], "annotations": [], "categories": None}
        caps: dict[str, Any] = {"images": [], "annotations": []}
        seen: set[int] = set()
        for split in splits:
            data = read_json(self.instances_path(split))
            if inst["categories"] is None:
                inst["categories"] = data.get("categories") or []
            images = [im for im in data.get("images") or []
                      if keep is None or im.get("id") in keep]
            seen.update(im.get("id") for im in images)
            inst["images"] += images
            inst["annotations"] += [a for a in data.get("annotations") or []
                                    if keep is None or a.get("image_id") in keep]
            del data
            cdata = read_json(self.captions_path(split))
            caps["images"] += [im for im in cdata.get("images") or []
                               if keep is None or im.get("id") in keep]
            caps["annotations"] += [a for a in cdata.get("annotations") or []
                                    if keep is None or a.get("image_id") in keep]
        if keep is not None and keep - seen:
            missing = sorted(keep - seen)
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise DataError(self.annotations_dir, f"{len(missing)} image ids are in none of "
                                                  f"{', '.join(splits)} ({shown})")
        return inst, caps

    def find_image(self, image_id: int, folders: Sequence[str] = IMAGE_FOLDERS) -> Path:
        """The file of image ``image_id`` in the first of ``folders`` that has it (2014 names in
        val2014/ and train2014/, 2017 names in train2017/ and val2017/)."""
        tried = []
        for folder in folders:
            p = self.path / folder / self.file_name(folder, image_id)
            if p.is_file():
                return p
            tried.append(f"{folder}/{p.name}")
        raise DataError(self.path, f"image {image_id} not found (tried {', '.join(tried)})")

    def check_image_ids(self, records: Sequence[Mapping], split: str,
                        source: str | os.PathLike | None = None) -> None:
        """Raise unless every record's ``image_id`` is an image of the split's instances file
        (the error names ``source``, the record and the field)."""
        known = {img["id"] for img in self.instances(split).dataset["images"]}
        ann = self.instances_path(split)
        for i, rec in enumerate(records):
            where = rec.get("id", i) if isinstance(rec, Mapping) else i
            image_id = rec.get("image_id") if isinstance(rec, Mapping) else None
            if image_id is None:
                raise DataError(source, "missing (the COCO image id; a COCO file name in "
                                        "'image' gives it)", record=where, field="image_id")
            if norm_image_id(image_id) not in known:
                raise DataError(source, f"image id {image_id!r} is not in {ann}", record=where,
                                field="image_id")
