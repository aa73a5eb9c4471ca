"""Dataset items and batches of LLaVA conversations: the step shared by supervised fine-tuning
(cont-SFT, nSFT) and the micro-world base model's instruction stages."""

from __future__ import annotations

from typing import Any

from visalign.data.llava import resolve_image
from visalign.io import DataError


def conversation_items(records: list[dict], image_root: str) -> list[dict]:
    """Dataset items (image path + conversation) from validated LLaVA records; relative image
    paths start at ``image_root`` (as given when it is '')."""
    return [{"image": str(resolve_image(r["image"], image_root or None)),
             "conversations": r["conversations"], "id": r["id"]} for r in records]


def open_image(item: dict, source: Any = None):
    """The item's image as RGB; an unreadable file is a :class:`DataError` naming the record."""
    from PIL import Image

    try:
        with Image.open(item["image"]) as im:
            return im.convert("RGB")
    except OSError as e:  # missing, unreadable or truncated file
        raise DataError(source, f"cannot read image {item['image']}: {e}", record=item["id"],
                        field="image") from None


def make_collate(vlm: Any, max_length: int = 0, source: Any = None):
    """``collate(items) -> batch``: the items' images and conversations through ``VLM.encode``
    (labels only on answer tokens)."""
    def collate(items: list[dict]) -> dict:
        images = [open_image(it, source) for it in items]
        return vlm.encode(images, [it["conversations"] for it in items],
                          max_length=max_length or None)
    return collate
