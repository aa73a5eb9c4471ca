"""Per-image ground truth for nSFT and the pair builders (:class:`GroundTruth`, from COCO-format
annotations; the micro-world's add colour, size, region and theme) and the image regions its
annotations and the templates speak of ("top left", "on the left side")."""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from visalign.io import DataError
from visalign.methods.nsft.words import COLOR_NORM

# ---------------------------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------------------------

def norm_region(r: str) -> str:
    """Canonical region words: "Upper-Left" -> "top left", "centre"/"middle" -> "center"."""
    r = re.sub(r"[\s-]+", " ", r.lower().strip())
    r = r.replace("upper", "top").replace("lower", "bottom").replace("centre", "center")
    return "center" if r == "middle" else r


def region_compatible(claimed: str, actual: str) -> bool:
    """Whether an answer's region word fits an annotated region.

    Regions may be a 3x3 grid ("top left", "left", ...): "on the left" fits an object in the
    "top left" cell and "in the top left corner" fits one annotated "left" (the words of one
    are a subset of the other's); "top" never fits "bottom"/"center".
    """
    c, a = set(norm_region(claimed).split()), set(norm_region(actual).split())
    return c <= a or a <= c


def region_contains(region: str, actual: str) -> bool:
    """Whether an object annotated in ``actual`` lies in ``region`` (for statements the
    templates make, stricter than :func:`region_compatible`): "left" holds objects in
    "top left", "left" and "bottom left", but "top left" holds only "top left" ones."""
    return set(norm_region(region).split()) <= set(norm_region(actual).split())


def region_phrase(region: str) -> str:
    """Short answer naming a region: "On the left side.", "In the top left corner."."""
    r = norm_region(region)
    if r in ("left", "right"):
        return f"On the {r} side."
    if r in ("top", "bottom"):
        return f"At the {r}."
    if r == "center":
        return "In the center."
    if len(r.split()) == 2:
        return f"In the {r} corner."
    return f"In the {r} part of the image."


def region_question(region: str) -> str:
    """Question asking what a region holds: "What is on the left side of the image?"."""
    r = norm_region(region)
    if r in ("left", "right"):
        return f"What is on the {r} side of the image?"
    if r in ("top", "bottom"):
        return f"What is at the {r} of the image?"
    if r == "center":
        return "What is in the center of the image?"
    return f"What is in the {r} corner of the image?"


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GTObject:
    """One annotated instance: COCO category name (CHAIR table name), bbox ``[x, y, w, h]``,
    and the micro-world's extra fields when present (``color``, ``size``, ``region``)."""

    category: str
    bbox: tuple[float, float, float, float] | None = None
    color: str | None = None
    size: str | None = None
    region: str | None = None
    iscrowd: bool = False

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.bbox  # type: ignore[misc]
        return x + w / 2.0, y + h / 2.0


def _world_themes(instances_path: str | os.PathLike) -> list:
    """The ``vocab.themes`` of the micro-world whose ``annotations/`` holds ``instances_path``
    (its images carry only the theme *name*, e.g. "living", whose text word is "living
    room"); [] when the file is not part of a world."""
    meta = Path(instances_path).resolve().parent.parent / "world.json"
    if not meta.is_file():
        return []
    try:
        import json
        themes = json.loads(meta.read_text(encoding="utf-8")).get("vocab", {}).get("themes")
    except (OSError, ValueError, AttributeError):
        return []
    return themes if isinstance(themes, list) else []


class GroundTruth:
    """Per-image ground truth for nSFT and the pair builders, from COCO-format annotations.

    Gives, per image: the annotated objects (:class:`GTObject`), the CHAIR ground-truth object
    set (instances ∪ objects named in reference captions, as :class:`visalign.eval.chair.Chair`
    defines it), reference captions, the image's theme/scene (micro-world images carry one) and
    its size. Works on real COCO too: there ``color``/``size``/``region``/theme are absent and
    ``has_field`` tells the judge which checks to skip.

    ``instances``/``captions`` are paths (loaded with pycocotools), pycocotools ``COCO`` objects
    or plain dicts; ``synonyms`` a CHAIR table (list of rows), a path, or None (packaged COCO).
    ``theme_words`` maps a theme name to the words that name it in text (default: a top-level
    ``themes`` list in the instances file with ``name``/``short``, else the themes of the
    micro-world's ``world.json`` when the instances file sits in a world's ``annotations/``,
    else the theme name).
    """

    THEME_KEYS = ("theme", "scene")

    def __init__(self, instances: Any, captions: Any = None, synonyms: Any = None, *,
                 theme_words: Mapping[str, Sequence[str]] | None = None):
        from visalign.data.coco import coco_json, norm_image_id
        from visalign.eval.chair import Chair, load_synonyms

        self._norm = norm_image_id
        self.source = instances if isinstance(instances, (str, os.PathLike)) else None
        inst = coco_json(instances, "instances")[0] if isinstance(
            instances, (str, os.PathLike)) else instances
        caps = coco_json(captions, "captions")[0] if isinstance(
            captions, (str, os.PathLike)) else captions
        if synonyms is None or isinstance(synonyms, (str, os.PathLike)):
            synonyms = load_synonyms(synonyms)
        self.chair = Chair.from_coco(inst, caps, synonyms=synonyms)
        data = inst.dataset if hasattr(inst, "dataset") else inst
        if not isinstance(data, Mapping):
            raise DataError(self.source, "expected a COCO instances JSON object")
        w2c = self.chair.word_to_category

        cats: dict[Any, str] = {}
        for c in data.get("categories") or []:
            name = " ".join(str(c.get("name", "")).lower().split())
            cats[c.get("id")] = w2c.get(name, name)
        self.categories: list[str] = sorted(set(cats.values()))
        self.images: dict[Any, dict] = {}
        self._by_file: dict[str, Any] = {}
        for i, img in enumerate(data.get("images") or []):
            if "id" not in img:
                raise DataError(self.source, "image without 'id'", record=f"images[{i}]",
                                field="id")
            iid = norm_image_id(img["id"])
            self.images[iid] = img
            if img.get("file_name"):
                self._by_file[os.path.basename(str(img["file_name"]))] = iid
        self._objects: dict[Any, list[GTObject]] = defaultdict(list)
        seen_fields: set[str] = set()
        for i, ann in enumerate(data.get("annotations") or []):
            where = f"annotations[{i}]"
            if ann.get("category_id") not in cats:
                raise DataError(self.source, f"unknown category_id {ann.get('category_id')!r}",
                                record=where, field="category_id")
            bbox = ann.get("bbox")
            if bbox is not None:
                if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                        and all(isinstance(v, (int, float)) for v in bbox)):
                    raise DataError(self.source, f"bbox must be [x, y, w, h], got {bbox!r}",
                                    record=where, field="bbox")
                bbox = tuple(float(v) for v in bbox)
            obj = GTObject(
                category=cats[ann["category_id"]], bbox=bbox,
                color=COLOR_NORM.get(str(ann["color"]).lower(), str(ann["color"]).lower())
                if ann.get("color") else None,
                size=str(ann["size"]).lower() if ann.get("size") else None,
                region=norm_region(str(ann["region"])) if ann.get("region") else None,
                iscrowd=bool(ann.get("iscrowd", 0)))
            for f in ("color", "size", "region", "bbox"):
                if getattr(obj, f) is not None:
                    seen_fields.add(f)
            self._objects[norm_image_id(ann.get("image_id"))].append(obj)
        self.fields = frozenset(seen_fields)
        self._captions: dict[Any, list[str]] = defaultdict(list)
        if caps is not None:
            cdata = caps.dataset if hasattr(caps, "dataset") else caps
            for ann in cdata.get("annotations") or []:
                self._captions[norm_image_id(ann["image_id"])].append(str(ann["caption"]))
        # Themes: image-level field; words naming each theme.
        self._theme: dict[Any, str] = {}
        for iid, img in self.images.items():
            for k in self.THEME_KEYS:
                if img.get(k):
                    self._theme[iid] = str(img[k])
                    break
        if theme_words is None:
            themes = data.get("themes") or (_world_themes(self.source) if self.source else [])
            theme_words = {}
            for t in themes or []:
                if isinstance(t, Mapping) and t.get("name"):
                    theme_words[str(t["name"])] = [str(t.get("short") or t["name"])]
        tw = {str(k): [w.lower() for w in v] for k, v in theme_words.items()}
        for t in set(self._theme.values()):
            tw.setdefault(t, [t.lower()])
        self.theme_words: dict[str, list[str]] = tw
        self.colors = sorted({o.color for objs in self._objects.values() for o in objs
                              if o.color})
        self._cooc: dict[str, Counter] | None = None

    @classmethod
    def from_files(cls, instances: str | os.PathLike, captions: str | os.PathLike | None = None,
                   synonyms: str | os.PathLike | None = None, **kw) -> "GroundTruth":
        """Ground truth from COCO ``instances_*.json`` (+ ``captions_*.json``, + synonyms)."""
        return cls(instances, captions, synonyms, **kw)

    # -- lookups ---------------------------------------------------------------------------
    def has_field(self, name: str) -> bool:
        """Whether any annotation carries ``name`` (``color``, ``size``, ``region``, ``bbox``)."""
        return name in self.fields

    @property
    def has_themes(self) -> bool:
        return bool(self._theme)

    def image_id_for(self, record: Mapping) -> Any | None:
        """The record's COCO image id: its ``image_id`` if known, else by image file name."""
        if record.get("image_id") is not None:
            iid = self._norm(record["image_id"])
            if iid in self.images or iid in self._objects:
                return iid
        name = os.path.basename(str(record.get("image", "")))
        return self._by_file.get(name)

    def objects(self, image_id: Any) -> list[GTObject]:
        return list(self._objects.get(self._norm(image_id), ()))

    def annotated(self, image_id: Any) -> set[str]:
        """Categories with instance annotations in the image."""
        return {o.category for o in self.objects(image_id)}

    def present(self, image_id: Any) -> set[str]:
        """CHAIR ground-truth objects: instances ∪ objects named by the reference captions."""
        return self.chair.gt_objects(image_id)

    def captions(self, image_id: Any) -> list[str]:
        return list(self._captions.get(self._norm(image_id), ()))

    def theme(self, image_id: Any) -> str | None:
        return self._theme.get(self._norm(image_id))

    def image_size(self, image_id: Any) -> tuple[float, float] | None:
        img = self.images.get(self._norm(image_id)) or {}
        if img.get("width") and img.get("height"):
            return float(img["width"]), float(img["height"])
        return None

    def mentions(self, text: str) -> list:
        """CHAIR object mentions (``Mention(word, category, start, end)``) of ``text``."""
        return self.chair.mentions(text)

    def cooccurrence(self) -> dict[str, Counter]:
        """``{category: Counter(other category -> images where both are annotated)}``."""
        if self._cooc is None:
            cooc: dict[str, Counter] = defaultdict(Counter)
            for objs in self._objects.values():
                cs = sorted({o.category for o in objs})
                for a in cs:
                    for b in cs:
                        if a != b:
                            cooc[a][b] += 1
            self._cooc = dict(cooc)
        return self._cooc
