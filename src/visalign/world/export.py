"""Exporters: scenes and text into the files every other stage reads.

Layout under a world directory ``DIR`` (all paths in records are relative to ``DIR/images``):

* ``images/{split}/{image_id:06d}.png``
* ``annotations/instances_{split}.json``  COCO instances; ``images[].file_name`` is
  ``{split}/{image_id:06d}.png`` (relative to ``DIR/images``); annotations carry the extra fields
  ``color``, ``size`` ("small"/"large") and ``region``; images carry ``theme``.
* ``annotations/captions_{split}.json``   COCO captions, ``captions_per_image`` per image.
* ``synonyms.txt``                        CHAIR table: one line per category, name first.
* ``llava/{split}.json``                  LLaVA conversation records (JSON list).
* ``prompts/{split}_detail.jsonl``        one "Describe this image in detail." prompt per image.
* ``world.json``, ``config.yaml``         vocabulary, counts, resolved config.
"""

from __future__ import annotations

from visalign.world.scenes import Scene
from visalign.world.vocab import Vocab

COCO_INFO = {"description": "visalign micro-world (synthetic scenes)", "version": "1.0",
             "year": 2025, "contributor": "visalign", "url": "",
             # Fixed, so that the same seed gives byte-identical files.
             "date_created": "1970-01-01"}
COCO_LICENSES = [{"id": 1, "name": "Apache-2.0 (generated data)", "url": ""}]


def image_rel_path(split: str, image_id: int) -> str:
    """Image path relative to ``DIR/images`` (also the COCO ``file_name``)."""
    return f"{split}/{image_id:06d}.png"


def coco_categories(vocab: Vocab) -> list[dict]:
    return [{"id": c.id, "name": c.name, "supercategory": c.theme} for c in vocab.categories]


def coco_instances(scenes: list[Scene], vocab: Vocab) -> dict:
    """COCO instances dict; segmentation is the bbox polygon, area = w * h."""
    images, anns = [], []
    for s in scenes:
        images.append({"id": s.image_id, "file_name": image_rel_path(s.split, s.image_id),
                       "width": s.width, "height": s.height, "license": 1, "theme": s.theme})
        for o in s.objects:
            x, y, w, h = o.bbox
            anns.append({"id": len(anns) + 1, "image_id": s.image_id,
                         "category_id": vocab.category_id(o.category),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                         "color": o.color, "size": o.size, "region": o.region})
    return {"info": dict(COCO_INFO), "licenses": list(COCO_LICENSES), "images": images,
            "annotations": anns, "categories": coco_categories(vocab)}


def coco_captions(scenes: list[Scene], captions: dict[int, list[str]]) -> dict:
    """COCO captions dict (``annotations``: id, image_id, caption)."""
    images, anns = [], []
    for s in scenes:
        images.append({"id": s.image_id, "file_name": image_rel_path(s.split, s.image_id),
                       "width": s.width, "height": s.height, "license": 1})
        for c in captions[s.image_id]:
            anns.append({"id": len(anns) + 1, "image_id": s.image_id, "caption": c})
    return {"info": dict(COCO_INFO), "licenses": list(COCO_LICENSES), "images": images,
            "annotations": anns}


def synonyms_text(vocab: Vocab) -> str:
    """The CHAIR synonyms table as text (``name, synonym, ...`` per line)."""
    return "".join(", ".join(row) + "\n" for row in vocab.synonyms_table())


def prompt_records(scenes: list[Scene], prompt: str) -> list[dict]:
    """Evaluation prompts for ``visalign generate`` (no ``<image>`` token: the generator
    formats the turn for its model)."""
    return [{"id": f"{s.split}-{s.image_id:06d}", "image": image_rel_path(s.split, s.image_id),
             "image_id": s.image_id, "prompt": prompt} for s in scenes]


def cooccurrence_counts(scenes: list[Scene], vocab: Vocab) -> list[list[int]]:
    """(n_categories, n_categories) image-level co-occurrence counts; the diagonal counts the
    images that contain the category."""
    names = vocab.names
    n = len(names)
    m = [[0] * n for _ in range(n)]
    for s in scenes:
        idx = sorted(names.index(c) for c in s.present())
        for i in idx:
            for j in idx:
                m[i][j] += 1
    return m
