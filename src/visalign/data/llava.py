"""LLaVA conversation records: loading and validation.

A record is ``{"id": str | int, "image": str, "conversations": [{"from": "human" | "gpt",
"value": str}, ...]}``: turns alternate human/gpt starting with human and ending with gpt, and
the first human turn holds the ``<image>`` placeholder exactly once (no other turn has one).
Other fields (``image_id``, ``task``, ...) pass through untouched. Files are a JSON list or JSONL.
:func:`load_llava_records` also reads LLaVA's released files (shared ids, text-only records, no
``task`` or ``image_id``; see :mod:`visalign.data.instruct`).

Every problem raises :class:`visalign.io.DataError` naming the file, the record (index and id)
and the field, never a silent skip: a dropped record would quietly change a training set or a
metric. (Text-only records, which no image task can use, are skipped and counted aloud.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from visalign.io import DataError, read_records

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")


def _where(index: int | None, rec: Any) -> str | int | None:
    rid = rec.get("id") if isinstance(rec, dict) else None
    if index is None:
        return None if rid is None else f"id {rid!r}"
    return index if rid is None else f"{index} (id {rid!r})"


def validate_llava_record(rec: Any, path: str | os.PathLike | None = None,
                          index: int | None = None) -> dict:
    """Check one record; returns it unchanged or raises DataError (file, record, field)."""
    where = _where(index, rec)
    if not isinstance(rec, dict):
        raise DataError(path, f"expected a JSON object, got {type(rec).__name__}",
                        record=index)
    if "id" not in rec:
        raise DataError(path, "missing", record=where, field="id")
    rid = rec["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise DataError(path, f"must be a non-empty string or an integer, got {rid!r}",
                        record=where, field="id")
    if "image" not in rec:
        raise DataError(path, "missing", record=where, field="image")
    if not isinstance(rec["image"], str) or not rec["image"]:
        raise DataError(path, f"must be a non-empty string, got {rec['image']!r}",
                        record=where, field="image")
    conv = rec.get("conversations")
    if conv is None:
        raise DataError(path, "missing", record=where, field="conversations")
    if not isinstance(conv, list) or not conv:
        raise DataError(path, "must be a non-empty list of turns", record=where,
                        field="conversations")
    for t, turn in enumerate(conv):
        f = f"conversations[{t}]"
        if not isinstance(turn, dict):
            raise DataError(path, "turn must be an object with 'from' and 'value'",
                            record=where, field=f)
        expected = ROLES[t % 2]
        if turn.get("from") != expected:
            raise DataError(path, f"expected {expected!r} (turns alternate human/gpt, starting "
                                  f"with human), got {turn.get('from')!r}",
                            record=where, field=f"{f}.from")
        value = turn.get("value")
        if not isinstance(value, str):
            raise DataError(path, f"must be a string, got {type(value).__name__}",
                            record=where, field=f"{f}.value")
        n_img = value.count(IMAGE_TOKEN)
        if t == 0 and n_img != 1:
            raise DataError(path, f"the first human turn must contain {IMAGE_TOKEN} exactly "
                                  f"once, found {n_img}", record=where, field=f"{f}.value")
        if t > 0 and n_img:
            raise DataError(path, f"{IMAGE_TOKEN} may only appear in the first human turn",
                            record=where, field=f"{f}.value")
    if len(conv) % 2:
        raise DataError(path, "the conversation ends with a human turn (no gpt answer)",
                        record=where, field=f"conversations[{len(conv) - 1}]")
    return rec


def resolve_image(image: str, image_root: str | os.PathLike | None,
                  records_path: str | os.PathLike | None = None) -> Path:
    """Absolute image path: absolute as is, else under ``image_root`` (default: the records
    file's directory)."""
    p = Path(image)
    if p.is_absolute():
        return p
    if image_root is not None:
        return Path(image_root) / p
    if records_path is not None:
        return Path(records_path).parent / p
    return p


def check_image(img_path: Path, path: str | os.PathLike | None, where: Any) -> None:
    """Raise DataError unless ``img_path`` exists and PIL can open and verify it."""
    from PIL import Image

    if not img_path.is_file():
        raise DataError(path, f"image file not found: {img_path}", record=where, field="image")
    try:
        with Image.open(img_path) as im:
            im.verify()
    except Exception as e:   # PIL raises many types for corrupt files
        raise DataError(path, f"unreadable image {img_path}: {type(e).__name__}: {e}",
                        record=where, field="image") from None


def load_llava_records(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                       check_images: bool = False, *, text_only: str = "skip",
                       shared_ids: str = "key", infer: bool = True,
                       quiet: bool = False) -> list[dict]:
    """Load and validate a LLaVA JSON list / JSONL file, as visalign writes it or as LLaVA ships
    it (llava_instruct_150k.json, detail_23k.json, llava_v1_5_mix665k.json).

    - ``text_only="skip"`` leaves out records with no image (no ``image`` field, no ``<image>``
      in any turn: mix665k's ShareGPT records) and prints how many; ``"error"`` rejects them.
    - ``shared_ids="key"`` keeps records that share an id: the first keeps it, the k-th repeat
      gets ``ID#k`` with the original in ``source_id``
      (:func:`~visalign.data.instruct.unique_keys`); ``"error"`` rejects a repeated id.
    - ``infer`` fills a missing ``task`` from the prompts
      (:func:`~visalign.data.instruct.recognise_task`) and a missing ``image_id`` from a COCO
      file name (:func:`~visalign.data.coco.coco_image_id`). Fields a record has are kept.

    A file whose records are all text-only is an error (an empty file gives ``[]``, which each
    caller judges). With ``check_images`` every referenced image must
    exist and open (each distinct file is checked once); relative paths resolve under
    ``image_root`` (default: the records file's directory). Records that need no change are
    returned as read (visalign's own files come back unchanged).
    """
    import sys

    from visalign.data.coco import coco_image_id
    from visalign.data.instruct import is_text_only, recognise_task, unique_keys

    if text_only not in ("skip", "error") or shared_ids not in ("key", "error"):
        raise ValueError(f"text_only must be 'skip' or 'error' and shared_ids 'key' or 'error', "
                         f"got {text_only!r}, {shared_ids!r}")
    records = read_records(path)
    kept: list[tuple[int, dict]] = []
    for i, rec in enumerate(records):
        if text_only == "skip" and isinstance(rec, dict) and is_text_only(rec):
            continue
        kept.append((i, validate_llava_record(rec, path, i)))
    n_text_only = len(records) - len(kept)
    if records and not kept:
        raise DataError(path, f"no usable records: all {len(records)} records are text-only "
                              "(no image)")
    keys = unique_keys(rec["id"] for _, rec in kept)
    first: dict[str, int] = {}
    out: list[dict] = []
    n_repeats = 0
    checked: set[Path] = set()
    for (i, rec), key in zip(kept, keys):
        base = str(rec["id"])
        first.setdefault(base, i)
        if key != base:
            if shared_ids == "error":
                raise DataError(path, f"duplicate id (first used by record {first[base]})",
                                record=_where(i, rec), field="id")
            rec = {**rec, "id": key, "source_id": rec["id"]}
            n_repeats += 1
        if infer:
            extra: dict[str, Any] = {}
            if rec.get("task") is None:
                extra["task"] = recognise_task(rec["conversations"])
            if rec.get("image_id") is None:
                image_id = coco_image_id(rec["image"])
                if image_id is not None:
                    extra["image_id"] = image_id
            if extra:
                rec = {**rec, **extra}
        if check_images:
            img = resolve_image(rec["image"], image_root, path)
            if img not in checked:
                check_image(img, path, _where(i, rec))
                checked.add(img)
        out.append(rec)
    if not quiet and (n_text_only or n_repeats):
        said = []
        if n_text_only:
            said.append(f"skipped {n_text_only} text-only records (no image)")
        if n_repeats:
            said.append(f"kept {n_repeats} records that repeat an earlier record's id as ID#k "
                        "(original id in source_id)")
        print(f"[visalign] {path}: {'; '.join(said)}; {len(out)} records loaded",
              file=sys.stderr, flush=True)
    return out


def pack_by_image(records: list[dict], seed: int = 0) -> list[dict]:
    """Merge the records of each image into one multi-turn conversation.

    LLaVA-665K holds several QA turns per image in one conversation; the micro-world (and many
    derived sets) write one record per question. Training on the packed form encodes each image
    (and, in text-only pre-training, each scene) once instead of once per question. The turns
    of an image come in a seeded random order, so every task is sometimes the first turn, the
    position evaluation asks from. ``<image>`` is moved to the new first turn. The packed
    record keeps ``image``, takes the first record's ``image_id`` if any, lists its source ids
    in ``packed_ids`` and its tasks in ``tasks``; images keep their first-seen order.
    """
    import random

    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(rec["image"], []).append(rec)
    out = []
    for image, recs in groups.items():
        recs = list(recs)
        random.Random(f"{seed}:pack:{image}").shuffle(recs)
        conv: list[dict] = []
        for rec in recs:
            for turn in rec["conversations"]:
                value = turn["value"]
                if turn["from"] == "human":
                    value = value.replace(IMAGE_TOKEN, "").strip()
                    if not conv:
                        value = f"{IMAGE_TOKEN}\n{value}"
                conv.append({"from": turn["from"], "value": value})
        packed = {"id": f"packed-{recs[0]['id']}", "image": image, "conversations": conv,
                  "packed_ids": [r["id"] for r in recs], "tasks": [r.get("task") for r in recs]}
        if "image_id" in recs[0]:
            packed["image_id"] = recs[0]["image_id"]
        out.append(validate_llava_record(packed))
    return out


def strip_image(text: str) -> str:
    """A turn's text without the ``<image>`` placeholder (whitespace folded where it stood)."""
    return " ".join(text.replace("<image>", " ").split()) if "<image>" in text else text.strip()


def first_exchange(record: Mapping, index: Any = None, path: Any = None) -> tuple[str, str]:
    """(question without ``<image>``, ground-truth answer) of a record's first exchange."""
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise DataError(path, "missing or empty 'conversations'", record=record.get("id", index),
                        field="conversations")
    q = a = None
    for turn in conv:
        if not isinstance(turn, Mapping) or not isinstance(turn.get("value"), str):
            raise DataError(path, "turns must be {'from', 'value'} objects",
                            record=record.get("id", index), field="conversations")
        if q is None and turn.get("from") == "human":
            q = strip_image(turn["value"])
        elif q is not None and turn.get("from") == "gpt":
            a = turn["value"].strip()
            break
    if q is None or a is None:
        raise DataError(path, "needs a human turn followed by a gpt turn",
                        record=record.get("id", index), field="conversations")
    return q, a
