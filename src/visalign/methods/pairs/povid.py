"""POVID pairs: the ground truth against itself with an injected hallucination (stage 1) and
against the model's answer on a noised image (stage 2).

POVID ("Aligning Modalities in Vision Large Language Models via Preference Fine-tuning") trains
DPO on two kinds of dispreferred response, tagged ``meta.stage`` 1 and 2 for sequential
training (:func:`build_povid_pairs`):

* stage 1: chosen = ground truth, rejected = the ground truth with one injected hallucination,
  by annotation-driven rules (:func:`rule_edit`: :func:`object_edit`, a present object word ->
  the absent category that co-occurs with it most often; :func:`attribute_edit`, a colour word
  -> another colour; :func:`relation_edit`, left<->right, above<->below, on<->under,
  behind<->in front of; a preceding "a"/"an" is fixed with the word), or rewritten by an LLM
  endpoint (:func:`povid_llm_edit` with :data:`POVID_PROMPT`, after POVID's prompt structure:
  object co-occurrence, logical relationships, attributes);
* stage 2: chosen = ground truth, rejected = the model's answer on the diffusion-noised image
  (:func:`visalign.methods.pairs.seva.diffusion_noise`), given here
  (:func:`visalign.methods.pairs.build.build_method_pairs` generates it).

Departures: the LLM prompt is our wording after the paper's structure, not its text; one
rule-based edit per record (POVID's GPT-4V rewrites could change several phrases at once); DPO
scores every response on the original image, also the noisy-image responses of stage 2 (POVID
scores them on the noised image).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence

from visalign.data.llava import first_exchange
from visalign.methods.pairs.common import (answer_map, check_record, make_pair,
                                           normalize_response, rejected_image_map)

__all__ = ["TextEdit", "object_edit", "attribute_edit", "relation_edit", "rule_edit",
           "POVID_PROMPT", "povid_llm_edit", "build_povid_pairs"]


@dataclasses.dataclass
class TextEdit:
    """One replacement ``text[start:end] = new`` of kind object/attribute/relation."""

    kind: str
    start: int
    end: int
    old: str
    new: str

    def apply(self, text: str) -> str:
        return text[: self.start] + self.new + text[self.end:]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _match_case(src: str, new: str) -> str:
    return new[:1].upper() + new[1:] if src[:1].isupper() else new


_WORD_RE = re.compile(r"[A-Za-z]+")


def object_edit(text: str, mentions: Sequence[Any], present: set[str], absent: Sequence[str],
                cooc: Mapping[str, Mapping[str, int]], rng: random.Random) -> TextEdit | None:
    """Replace one present object's word with the absent category that co-occurs with it most
    (ties and no co-occurrence data: random among the candidates). A preceding "a"/"an" is
    fixed in the same edit ("a cup" -> "an umbrella")."""
    from visalign.data.words import is_plural, plural, with_article

    cands = [m for m in mentions if m.category in present] if present else list(mentions)
    if not cands or not absent:
        return None
    m = rng.choice(cands)
    counts = cooc.get(m.category, {})
    best = max((counts.get(c, 0) for c in absent), default=0)
    pool = sorted(c for c in absent if counts.get(c, 0) == best and c != m.category)
    if not pool:
        return None
    new_cat = rng.choice(pool)
    surface = text[m.start:m.end]
    new = plural(new_cat) if is_plural(surface) else new_cat
    start = m.start
    art = re.search(r"\b(an?)\s+$", text[:m.start], re.I)
    if art and not is_plural(surface):
        start = art.start(1)
        new = f"{_match_case(art.group(1), with_article(new).split()[0])} {new}"
    else:
        new = _match_case(surface, new)
    return TextEdit("object", start, m.end, text[start:m.end], new)


def _article_fixed(text: str, start: int, end: int, new: str) -> tuple[int, str]:
    """(start, replacement) for replacing ``text[start:end]`` by ``new`` with a directly
    preceding "a"/"an" corrected for ``new`` ("a blue cube" -> "an orange cube")."""
    from visalign.data.words import with_article

    art = re.search(r"\b(an?)(\s+)$", text[:start], re.I)
    if not art:
        return start, new
    fixed = _match_case(art.group(1), with_article(new).split()[0])
    return art.start(1), f"{fixed}{art.group(2)}{new}"


def attribute_edit(text: str, colors: Sequence[str], rng: random.Random,
                   protected: Sequence[tuple[int, int]] = ()) -> TextEdit | None:
    """Swap one colour word for a different colour from ``colors`` (words inside the
    ``protected`` spans, e.g. object mentions such as "orange" the fruit, are left alone); a
    directly preceding "a"/"an" is fixed in the same edit."""
    vocab = {c.lower() for c in colors}
    cands = [w for w in _WORD_RE.finditer(text) if w.group().lower() in vocab
             and not any(s < w.end() and w.start() < e for s, e in protected)]
    if not cands or len(vocab) < 2:
        return None
    w = rng.choice(cands)
    new = _match_case(w.group(), rng.choice(sorted(vocab - {w.group().lower()})))
    start, new = _article_fixed(text, w.start(), w.end(), new)
    return TextEdit("attribute", start, w.end(), text[start:w.end()], new)


_RELATION_SWAPS = {"left": "right", "right": "left", "above": "below", "below": "above",
                   "on": "under", "under": "on", "behind": "in front of",
                   "in front of": "behind"}
_RELATION_RE = re.compile(r"\b(?:in\s+front\s+of|left|right|above|below|on|under|behind)\b",
                          re.I)
_NOT_AN_OBJECT = {"left", "right", "top", "bottom", "side", "center", "centre", "middle",
                  "other", "way", "front", "back"}


def relation_edit(text: str, rng: random.Random) -> TextEdit | None:
    """Swap one spatial relation: left<->right, above<->below, on<->under, behind<->in front
    of. "on"/"under" only before a determiner and an object word ("on the table", not "on
    the left"); "left"/"right" not in "left behind", "right now", "right away"."""
    cands = []
    for w in _RELATION_RE.finditer(text):
        lw = " ".join(w.group().lower().split())
        after = text[w.end():]
        if lw in ("on", "under"):
            nxt = re.match(r"\s+(?:the|a|an|its|their|his|her)\s+([A-Za-z]+)", after)
            if not nxt or nxt.group(1).lower() in _NOT_AN_OBJECT:
                continue
        if lw in ("left", "right") and re.match(r"\s+(?:behind|now|away|here|there)\b", after,
                                                re.I):
            continue
        cands.append(w)
    if not cands:
        return None
    w = rng.choice(cands)
    new = _RELATION_SWAPS[" ".join(w.group().lower().split())]
    return TextEdit("relation", w.start(), w.end(), w.group(), _match_case(w.group(), new))


def rule_edit(rec: Mapping, text: str, gt: Any, colors: Sequence[str], edits: Sequence[str],
              rng: random.Random) -> TextEdit | None:
    """One rule edit of ``text`` (record ``rec``'s ground truth), of a kind drawn at random
    among ``edits`` that apply; None when none does. Object edits need ``gt`` (a
    :class:`visalign.methods.nsft.GroundTruth`) and the record's image id; attribute
    edits leave words inside object mentions alone ("orange" the fruit)."""
    options: dict[str, Callable[[], TextEdit | None]] = {}
    mentions = list(gt.mentions(text)) if gt is not None else []
    spans = [(m.start, m.end) for m in mentions]
    if "object" in edits and gt is not None:
        iid = gt.image_id_for(rec)
        present = gt.present(iid) if iid is not None else set()
        absent = [c for c in gt.categories if c not in present]
        if iid is not None:
            options["object"] = lambda: object_edit(text, mentions, present, absent,
                                                    gt.cooccurrence(), rng)
    if "attribute" in edits:
        options["attribute"] = lambda: attribute_edit(text, colors, rng, spans)
    if "relation" in edits:
        options["relation"] = lambda: relation_edit(text, rng)
    kinds = [k for k in edits if k in options]
    rng.shuffle(kinds)
    for k in kinds:
        e = options[k]()
        if e is not None:
            return e
    return None


# Our wording after POVID's hallucination-injection prompt (object co-occurrence, logical
# relationships between entities, attributes), for an OpenAI-compatible endpoint.
POVID_PROMPT = """You are given the correct description of an image. Rewrite it so that it \
contains a few hallucinations, keeping everything else unchanged. Introduce them in these ways:
1. Object co-occurrence: add or substitute objects that often appear together with the \
described objects but are not in the image.
2. Logical relationships: change the relationships or relative positions between objects.
3. Attributes: change attributes of objects such as colour, shape, size or number.
Keep the style and length of the original and change only a few phrases. Output only the \
rewritten description.

Description: {description}"""


def povid_llm_edit(client: Any, description: str) -> str | None:
    """The endpoint's hallucinated rewrite of ``description`` (None when empty/unchanged)."""
    reply = client.chat([{"role": "user", "content": POVID_PROMPT.format(
        description=description.strip())}])
    text = (reply or "").strip()
    text = re.sub(r"^(?:rewritten|hallucinated|modified|new)?\s*description\s*:\s*", "", text,
                  flags=re.I).strip().strip('"').strip()
    if not text or normalize_response(text) == normalize_response(description):
        return None
    return text


def build_povid_pairs(records: Sequence[Mapping], gt: Any, rng: random.Random, *,
                      stages: Iterable[int] = (1, 2), editor: str = "rules",
                      edits: Sequence[str] = ("object", "attribute", "relation"),
                      client: Any = None, noisy_answers: Any = None,
                      noise_step: int | None = None,
                      rejected_images: Mapping[str, str] | None = None
                      ) -> tuple[list[dict], dict]:
    """POVID pairs: stage 1 (GT vs GT with one injected hallucination) and stage 2 (GT vs the
    model's answer on the noised image), tagged ``meta.stage``.

    ``gt``: a :class:`visalign.methods.nsft.GroundTruth` (rules editor: present/absent
    objects, co-occurrence, colours) or None (then object edits pick any absent category of
    no ground truth, i.e. none, and attribute edits use the basic colour list). ``editor``:
    ``"rules"`` or ``"llm"`` (``client.chat``, e.g. a JudgeClient). ``noisy_answers``: the
    model's answers on noised images, needed for stage 2.
    """
    from visalign.data.words import COLOR_WORDS

    stages = set(stages)
    unknown = [e for e in edits if e not in ("object", "attribute", "relation")]
    if unknown:
        raise ValueError(f"unknown POVID edit kind(s) {unknown}; valid: object, attribute, "
                         "relation")
    if editor not in ("rules", "llm"):
        raise ValueError(f"POVID editor must be 'rules' or 'llm', got {editor!r}")
    if editor == "llm" and 1 in stages and client is None:
        raise ValueError("POVID editor 'llm' needs a client (JudgeClient)")
    if 2 in stages and noisy_answers is None:
        raise ValueError("POVID stage 2 needs the model's answers on noised images")
    noisy = answer_map(noisy_answers, "noisy answers") if noisy_answers is not None else {}
    rej_img = rejected_image_map(noisy_answers, rejected_images)
    colors = list(gt.colors) if gt is not None and len(getattr(gt, "colors", [])) >= 2 else \
        [c for c in COLOR_WORDS if c != "grey"]
    pairs: list[dict] = []
    kinds: Counter = Counter()
    skipped: Counter = Counter()
    skipped_ids: dict[str, list[str]] = {}

    def skip(reason: str, rid: str) -> None:
        skipped[reason] += 1
        skipped_ids.setdefault(reason, []).append(rid)

    for i, rec in enumerate(records):
        check_record(rec, i)
        prompt, gt_answer = first_exchange(rec, i)
        rid = str(rec["id"])
        if 1 in stages and not gt_answer.strip():
            skip("empty_answer", rid)
        elif 1 in stages:
            if editor == "llm":
                rejected = povid_llm_edit(client, gt_answer)
                if rejected is None:
                    skip("llm_no_edit", rid)
                else:
                    kinds["llm"] += 1
                    pairs.append(make_pair(rec, prompt, gt_answer, rejected,
                                           {"method": "povid", "stage": 1,
                                            "edit": {"kind": "llm"}}, "_s1"))
            else:
                edit = rule_edit(rec, gt_answer, gt, colors, edits, rng)
                if edit is None:
                    skip("no_applicable_edit", rid)
                else:
                    kinds[edit.kind] += 1
                    pairs.append(make_pair(rec, prompt, gt_answer, edit.apply(gt_answer),
                                           {"method": "povid", "stage": 1,
                                            "edit": edit.to_dict()}, "_s1"))
        if 2 in stages:
            if rid not in noisy:
                skip("no_noisy_answer", rid)
            elif not noisy[rid].strip() or not gt_answer.strip():
                skip("empty_answer", rid)
            elif normalize_response(noisy[rid]) == normalize_response(gt_answer):
                skip("identical", rid)
            else:
                meta = {"method": "povid", "stage": 2}
                if noise_step is not None:
                    meta["noise_step"] = noise_step
                p = make_pair(rec, prompt, gt_answer, noisy[rid], meta, "_s2")
                if rid in rej_img and rej_img[rid] != rec["image"]:
                    p["rejected_image"] = rej_img[rid]
                pairs.append(p)
    return pairs, {"method": "povid", "n_records": len(records), "n_pairs": len(pairs),
                   "stage1_pairs": sum(p["meta"]["stage"] == 1 for p in pairs),
                   "stage2_pairs": sum(p["meta"]["stage"] == 2 for p in pairs),
                   "edit_kinds": dict(kinds), "editor": editor, "skipped": dict(skipped),
                   "skipped_ids": skipped_ids}
