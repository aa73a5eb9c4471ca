"""What FiSAO rolls out on: (image, prompt) items from the model's own instruction data, in a
seeded order that does not depend on the number of processes (Algorithm 1, line 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visalign.data.llava import resolve_image
from visalign.io import DataError
from visalign.methods.fisao.config import FisaoConfig


def load_prompts(cfg: FisaoConfig, entities: Any = None) -> list[dict]:
    """(image, prompt) items from instruction records: first human turn without ``<image>``."""
    from visalign.data.llava import load_llava_records

    recs = load_llava_records(cfg.data)
    # Relative image paths start at image_root, else at the data file's directory (as in SFT).
    root = cfg.image_root or str(Path(cfg.data).parent)
    items = []
    if cfg.existence_reward and entities is None:
        from visalign.methods.fisao.rollout import load_entities

        entities = load_entities(cfg)
    for r in recs:
        existence = cfg.existence_reward and r.get("task") == "existence"
        if cfg.tasks and r.get("task") not in cfg.tasks and not existence:
            continue
        human = [t for t in r["conversations"] if t.get("from") == "human"]
        prompt = human[0]["value"].replace("<image>", "").strip()
        item = {"id": r["id"], "image": str(resolve_image(r["image"], root or None)), "prompt": prompt,
                "image_id": r.get("image_id")}
        if existence:
            item["asks"] = asked_object(prompt, entities)
            if item["asks"] is None:
                continue
        items.append(item)
    if cfg.limit:
        items = items[: cfg.limit]
    if not items:
        raise DataError(cfg.data, f"no prompts with task in {cfg.tasks}", field="task")
    for it in items:
        if not Path(it["image"]).is_file():
            raise DataError(cfg.data, f"image file not found: {it['image']} (relative paths "
                                      "start at image_root, else at the data file's dir)",
                            record=it["id"], field="image")
    return items


_IMAGE_WORDS = frozenset({"image", "images", "picture", "pictures", "photo", "photos",
                          "photograph", "photographs", "scene"})


def asked_object(prompt: str, entities: Any) -> str | None:
    """The canonical entity a yes/no existence question asks about ("Is there a dog in the
    image?" -> "dog"): the one entity of C in the question (the text up to its first '?'),
    words for the image itself aside; None when there is none or more than one."""
    question = prompt.split("?", 1)[0]
    found = {m.canonical for m in entities.find(question) if m.surface.lower() not in _IMAGE_WORDS}
    return found.pop() if len(found) == 1 else None


def yes_no_span(text: str) -> tuple[int, tuple[int, int] | None]:
    """(+1 for a response starting with "yes", -1 with "no", 0 otherwise; the word's character
    span, or None)."""
    import re

    m = re.match(r"\W*(yes|no)\b", text, re.IGNORECASE)
    if m is None:
        return 0, None
    return (1 if m.group(1).lower() == "yes" else -1), (m.start(1), m.end(1))


def sample_index(n: int, seed: int, g: int, _cache: dict | None = None) -> int:
    """Item index of global sample ``g``: a fresh permutation of the ``n`` items every epoch."""
    import torch

    epoch, i = divmod(g, n)
    cache = _cache if _cache is not None else {}
    if epoch not in cache:
        cache.clear()
        cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(
            seed * 1_000_003 + epoch)).tolist()
    return cache[epoch][i]


def rollout_seed(seed: int, g: int) -> int:
    """Sampling seed of global sample ``g``: independent of process count and batch layout."""
    return (seed * 2_654_435_761 + g * 40_503 + 12_345) % (2 ** 62)


def load_anchor_items(cfg: FisaoConfig) -> list[dict]:
    """(image, conversation) of the existence records of ``cfg.data`` (``anchor_weight``)."""
    from visalign.data.llava import load_llava_records

    root = cfg.image_root or str(Path(cfg.data).parent)
    items = [{"image": str(resolve_image(r["image"], root or None)), "conversation": r["conversations"][:2]}
             for r in load_llava_records(cfg.data) if r.get("task") == "existence"]
    if not items:
        raise DataError(cfg.data, "anchor_weight > 0 needs records with task 'existence'",
                        field="task")
    return items
