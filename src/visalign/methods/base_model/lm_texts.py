"""LM pre-training text for the base model: the world's answers, or each instruction turn with
the true scene written out in words (a pretrained LLM's language prior and context reading), and
the batches they make."""

from __future__ import annotations

from typing import Any, Iterator

from visalign.methods.base_model.clip_data import synonym_table
from visalign.world.vocab import KEYED_ORDERS


def answer_texts(records: list[dict]) -> list[str]:
    """Plain text for LM pre-training: every answer of the instruction data."""
    return [t["value"] for r in records for t in r["conversations"] if t["from"] == "gpt"]


def scene_text(theme: str, objects: list[dict], names: dict, rng: Any,
               order: str = "random", keys: dict[str, tuple] | None = None) -> str:
    """The true scene in words, where the image goes: "beach: large black person bottom left;
    large white chair top." Objects in random order (position in the list means nothing) or,
    with ``order="reading"``, by ``scenes.reading_key`` (the order of ``Scene.
    categories_in_reading_order``), or with ``order="category"|"rank"`` by ``keys`` (category
    name -> sort key, ``Vocab.order_keys``). The sorts are stable (instances of one category keep their annotation order) and the fixed
    orders draw nothing from ``rng``."""
    objs = list(objects)
    if order == "reading":
        objs.sort(key=_reading_key)
    elif order in KEYED_ORDERS:
        if keys is None:
            raise ValueError(f"scene order {order!r} needs the vocabulary's order keys")
        objs.sort(key=lambda a: keys[names[a["category_id"]]])
    elif order == "random":
        rng.shuffle(objs)
    else:
        raise ValueError(f"scene order {order!r} is not 'random', 'reading', 'category' or "
                         "'rank'")
    parts = [f"{a.get('size', '')} {a.get('color', '')} {names[a['category_id']]} "
             f"{a.get('region', '')}".strip() for a in objs]
    return f"{theme}: " + "; ".join(" ".join(p.split()) for p in parts) + "."


def _order_keys(world: Any, order: str) -> dict[str, tuple] | None:
    return world.vocab.order_keys(order) if order in KEYED_ORDERS else None


def _reading_key(a: dict) -> tuple[int, float]:
    from visalign.world.scenes import reading_key

    x, _, w, _ = a["bbox"]
    return reading_key(a["region"], x + w / 2)


def scene_lm_texts(world: Any, records: list[dict], lookup_per_image: int,
                   seed: int, pack: bool = False, order: str = "random") -> list:
    """(prompt, answer) chat texts for LM pre-training with the scene written out in words.

    A pretrained LLM brings two things to LLaVA: a language prior and the ability to read its
    context ("is X among the things mentioned?"). A tiny LM trained on answers alone gets only
    the first, and then never learns to look at the image tokens (on the micro-world its POPE
    answers did not change when the image was replaced by a blank one). Here every instruction
    turn is rendered with the true scene in place of ``<image>``, plus ``lookup_per_image``
    balanced existence questions per image (any category, synonyms included). The defects of
    the instruction data stay: a description that names an absent object still does so next to
    a scene that lacks it, which is the prior that makes the VLM hallucinate.

    Items are ``(prompt, answer)`` pairs; with ``pack`` each item is instead the list of one
    image's turns (the scene written once, in the first turn; records and lookups in a seeded
    random order), as :func:`visalign.data.llava.pack_by_image` does for the VLM stages.
    ``order`` is :func:`scene_text`'s object order.
    """
    import random

    from visalign.world.text import EXISTENCE_QUESTIONS
    from visalign.data.words import with_article

    if pack:
        return _packed_scene_lm_texts(world, records, lookup_per_image, seed, order)
    rng = random.Random(f"{seed}:scene-lm")
    by_file, names = _train_scenes(world)
    syn = synonym_table(world)
    keys = _order_keys(world, order)
    tmpl = world_chat_template()
    out = []
    for r in records:
        if r["image"] not in by_file:
            continue
        theme, anns = by_file[r["image"]]
        conv = r["conversations"]
        q = conv[0]["value"].replace("<image>", scene_text(theme, anns, names, rng, order, keys))
        out.append((tmpl[0].format(q=q), tmpl[1].format(a=conv[1]["value"])))
    for theme, anns in by_file.values():
        for noun, yes in _lookups(rng, anns, names, syn, lookup_per_image):
            q = (scene_text(theme, anns, names, rng, order, keys) + "\n"
                 + rng.choice(EXISTENCE_QUESTIONS).format(a=with_article(noun)))
            out.append((tmpl[0].format(q=q), tmpl[1].format(a="Yes" if yes else "No")))
    rng.shuffle(out)
    return out


def _lookups(rng: Any, anns: list[dict], names: dict[int, str], syn: dict[str, list[str]],
             n: int) -> Iterator[tuple[str, bool]]:
    """``n`` balanced lookup targets of one image: (noun, present?), alternating present and
    absent categories (any category of the world, synonyms included). A generator, so the
    caller's own draws interleave with these in a fixed order."""
    all_names = sorted(syn) or sorted(names.values())
    present = {names[a["category_id"]] for a in anns}
    absent = [c for c in all_names if c not in present]
    for k in range(n):
        yes = (k % 2 == 0 and bool(present)) or not absent
        obj = rng.choice(sorted(present) if yes else absent)
        yield rng.choice(syn.get(obj, [obj])), yes


def _packed_scene_lm_texts(world: Any, records: list[dict], lookup_per_image: int,
                           seed: int, order: str = "random") -> list[list[tuple[str, str]]]:
    import random

    from visalign.world.text import EXISTENCE_QUESTIONS
    from visalign.data.words import with_article

    rng = random.Random(f"{seed}:scene-lm-packed")
    by_file, names = _train_scenes(world)
    syn = synonym_table(world)
    keys = _order_keys(world, order)
    turns: dict[str, list[tuple[str, str]]] = {f: [] for f in by_file}
    for r in records:
        if r["image"] in turns:
            conv = r["conversations"]
            turns[r["image"]].append((conv[0]["value"].replace("<image>", "").strip(),
                                      conv[1]["value"]))
    tmpl = world_chat_template()
    out = []
    for file, (theme, anns) in by_file.items():
        qa = turns[file]
        for noun, yes in _lookups(rng, anns, names, syn, lookup_per_image):
            qa.append((rng.choice(EXISTENCE_QUESTIONS).format(a=with_article(noun)),
                       "Yes" if yes else "No"))
        if not qa:
            continue
        rng.shuffle(qa)
        qa[0] = (scene_text(theme, anns, names, rng, order, keys) + "\n" + qa[0][0], qa[0][1])
        out.append([(tmpl[0].format(q=q), tmpl[1].format(a=a)) for q, a in qa])
    rng.shuffle(out)
    return out


def _train_scenes(world: Any) -> tuple[dict[str, tuple[str, list[dict]]], dict[int, str]]:
    """file name -> (theme, annotations) of the training split, and category id -> name."""
    from visalign.data.coco import load_coco_instances

    coco = load_coco_instances(world.instances_path("train"))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    by_file: dict[str, tuple[str, list[dict]]] = {}
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        by_file[info["file_name"]] = (str(info.get("theme", "scene")),
                                      coco.loadAnns(coco.getAnnIds(imgIds=img_id)))
    return by_file, names


def world_chat_template() -> tuple[str, str]:
    """(prompt, answer) formats of the micro-world's chat template for a text-only user turn
    (``models.tiny``: "USER: {text} ASSISTANT: {answer}</s>")."""
    return "USER: {q} ASSISTANT:", " {a}</s>"


def text_collate(tok: Any, max_length: int = 256):
    """Batch of (prompt, answer) texts: loss on the answer only (on everything if no prompt
    split is given, i.e. answer == ""). Items that are lists of such pairs (packed turns) get
    the loss on every answer."""
    def collate(items: list) -> dict:
        if items and isinstance(items[0], list):
            return _multi_turn_batch(tok, items, max_length)
        full = [p + a if a else p + tok.eos_token for p, a in items]
        enc = tok(full, padding=True, truncation=True, max_length=max_length,
                  return_tensors="pt")
        labels = enc["input_ids"].clone()
        split = [i for i, (_, a) in enumerate(items) if a]
        if split:
            prompts = tok([items[i][0] for i in split], truncation=True, max_length=max_length)
            for i, ids in zip(split, prompts["input_ids"]):
                labels[i, :len(ids)] = -100
        labels[enc["attention_mask"] == 0] = -100
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": labels}
    return collate


def _multi_turn_batch(tok: Any, items: list[list[tuple[str, str]]], max_length: int) -> dict:
    """Right-padded batch of multi-turn texts, labels on the tokens inside each answer."""
    import torch

    texts, spans = [], []
    for turns in items:
        text, sp = "", []
        for p, a in turns:
            text += p
            sp.append((len(text), len(text) + len(a)))
            text += a
        texts.append(text)
        spans.append(sp)
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
              return_offsets_mapping=True)
    offsets = enc.pop("offset_mapping")
    labels = torch.full_like(enc["input_ids"], -100)
    for i, sp in enumerate(spans):
        start, end = offsets[i, :, 0], offsets[i, :, 1]
        inside = torch.zeros_like(start, dtype=torch.bool)
        for s0, s1 in sp:
            inside |= (start >= s0) & (end <= s1) & (start < s1)  # incl. a bare " " token
        inside &= enc["attention_mask"][i].bool()
        labels[i][inside] = enc["input_ids"][i][inside]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": labels}
