"""Object HalBench as RLHF-V / RLAIF-V score it (``eval/eval_gpt_obj_halbench.py``).

Data: ``obj_halbench_300_with_image.jsonl`` as it ships: one JSON object per line with
``image_id`` (a COCO 2014 id), ``question`` (a detailed-description instruction) and ``image``
(the base64 image). Ground truth: COCO 2014 train + val instances and the objects their human
captions mention (read with the words mode below), mapped through RLAIF-V's
``eval/data/synonyms_refine.txt`` (not shipped here: its data licence is CC BY-NC 4.0; pass its
path, or ``synonyms="coco"`` for visalign's packaged CHAIR table, which the result then names).

Object extraction, ``mode=``:

* ``judge`` (default, the reference's ``--use_gpt``): a response of more than three words goes to
  the judge with the reference's prompt verbatim (``resources/prompts/objhal_judge.txt``,
  ``{question}``/``{answer}`` replaced, one system message; temperature 0.2 and 512 tokens as
  its ``Chat`` sends). The reply is a JSON list (or a JSON list on its last line); each object
  ``o`` is read as ``"a " + o``: if its lemmas hold one of the double words, those; else its runs
  of nouns (NN, NNS, NNP, NNPS), lemmatised and joined. Then unique objects that are synonyms
  count (``"seat"`` dropped when ``"toilet"`` is among them). The reference parses the objects
  with spaCy ``en_core_web_trf`` (``nlp="spacy"``, default, needs ``pip install spacy`` and that
  model); ``nlp="nltk"`` uses NLTK's tagger and WordNet instead, an approximation the result
  labels as such.
* ``words``: no judge; the response's own words as the reference's non-judge path reads them
  (``nltk.word_tokenize`` of the lower-cased text, WordNet noun lemmas, double words merged,
  every synonym occurrence counted).

Metrics (RLAIF-V ``summarize_gpt_obj_halbench_review.py``): ``objhal_response_hall`` = responses
with a hallucinated object / responses naming at least one COCO object (``CHAIRs_refine``);
``objhal_object_hall`` = hallucinated objects / objects (``CHAIRi``); ``objhal_recall`` =
distinct correct categories / ground-truth categories, summed over responses; ``objhal_avg_len``
= mean number of space-separated words; ``objhal_chair_s`` = hallucinated responses / all.

Departures: a judge reply that is not a JSON list is not retried 100 times: it is counted in
``objhal_judge_unparsed`` and that response is left out of the metrics (the reference asserts
when it gives up); the reference samples 64 requests in parallel with no cache, visalign's judge
client caches and retries. Generation in RLAIF-V uses beam search (3 beams); visalign decodes
greedily (``max_new_tokens`` 1024 as there).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from visalign.eval.chair import _ANIMAL_WORDS, _VEHICLE_WORDS
from visalign.eval.nltk_data import (TAGGER, TOKENIZER, Lemmatizer, MissingResource, pos_tag,
                                     require_nltk, word_tokenize, wordnet_pos)
from visalign.io import DataError, read_jsonl

__all__ = ["OBJHAL_PROMPT", "OBJHAL_MODES", "read_objhal_file", "objhal_prompts",
           "objhal_messages", "parse_object_list", "ObjHalScorer", "load_nlp"]

OBJHAL_PROMPT = (resources.files("visalign") / "resources" / "prompts" / "objhal_judge.txt"
                 ).read_text(encoding="utf-8")
OBJHAL_MODES = ("judge", "words")
#: The judge's sampling in the reference (gpt4_grpc.Chat.chat_completion defaults).
JUDGE_PARAMS = {"temperature": 0.2, "max_tokens": 512}
_NOUN_TAGS = ("NNP", "NNPS", "NN", "NNS")


def read_objhal_file(path: str | os.PathLike) -> list[dict]:
    """The questions of ``obj_halbench_300_with_image.jsonl``, validated; ``id`` is the
    ``question_id`` when present, else the line's position (as RLAIF-V numbers answers)."""
    rows = read_jsonl(path)
    if not rows:
        raise DataError(path, "no questions")
    out, seen = [], set()
    for i, r in enumerate(rows):
        for f in ("image_id", "question"):
            if f not in r:
                raise DataError(path, "missing field", record=f"line {i + 1}", field=f)
        if "image" not in r and "image_path" not in r:
            raise DataError(path, "no image (base64 'image' or 'image_path')",
                            record=f"line {i + 1}", field="image")
        try:
            image_id = int(r["image_id"])
        except (TypeError, ValueError):
            raise DataError(path, f"image_id must be a COCO id, got {r['image_id']!r}",
                            record=f"line {i + 1}", field="image_id") from None
        rid = str(r.get("question_id", i))
        if rid in seen:
            raise DataError(path, f"duplicate id {rid}", record=f"line {i + 1}")
        seen.add(rid)
        out.append({**r, "id": rid, "image_id": image_id})
    return out


def objhal_prompts(rows: Iterable[Mapping], image_dir: str | os.PathLike,
                   source: Any = None) -> list[dict]:
    """Generation records; base64 images are decoded once into ``image_dir``."""
    from PIL import Image, UnidentifiedImageError

    image_dir = Path(image_dir)
    out = []
    for r in rows:
        if "image" in r:
            path = image_dir / f"{r['id']}.png"
            if not path.exists():
                try:
                    raw = base64.b64decode(r["image"], validate=False)
                    with Image.open(io.BytesIO(raw)) as im:
                        image_dir.mkdir(parents=True, exist_ok=True)
                        im.convert("RGB").save(path)
                except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as e:
                    raise DataError(source, f"cannot decode the base64 image: {e}",
                                    record=r["id"], field="image") from None
        else:
            path = Path(r["image_path"])
        out.append({"id": r["id"], "image": str(path), "prompt": r["question"],
                    "question": r["question"], "image_id": r["image_id"]})
    return out


def objhal_messages(question: str, answer: str) -> list[dict]:
    """The reference's extraction request: the prompt, filled, as one system message."""
    text = OBJHAL_PROMPT.replace("{question}", question).replace("{answer}", answer)
    return [{"role": "system", "content": text}]


def parse_object_list(content: str) -> list[str] | None:
    """The reference's reading of a judge reply: JSON, else the last line as JSON when the
    reply contains ``["``; None when that fails or is not a list of strings."""
    try:
        value = json.loads(content)
    except (ValueError, TypeError):
        if '["' not in (content or ""):
            return None
        try:
            value = json.loads(content.strip().split("\n")[-1])
        except ValueError:
            return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value


class _Token:
    __slots__ = ("lemma_", "tag_")

    def __init__(self, lemma: str, tag: str):
        self.lemma_, self.tag_ = lemma, tag


def load_nlp(name: str, spacy_model: str = "en_core_web_trf"):
    """``text -> tokens with .lemma_ and .tag_``: spaCy's pipeline or NLTK's tagger + WordNet."""
    if name == "spacy":
        try:
            import spacy
        except ImportError:
            raise MissingResource("Object HalBench's object parsing needs spaCy: pip install "
                                  f"spacy && python -m spacy download {spacy_model}, or choose "
                                  "objhal_nlp=nltk (an approximation, labelled)") from None
        try:
            return spacy.load(spacy_model)
        except OSError:
            raise MissingResource(f"spaCy model {spacy_model!r} is not installed: python -m "
                                  f"spacy download {spacy_model}, or choose objhal_nlp=nltk "
                                  "(an approximation, labelled)") from None
    if name == "nltk":
        require_nltk(TOKENIZER, TAGGER)
        lemma = Lemmatizer()

        def nlp(text: str) -> list[_Token]:
            return [_Token(lemma(w.lower(), wordnet_pos(t)), t)
                    for w, t in pos_tag(word_tokenize(text))]
        return nlp
    raise ValueError(f"unknown objhal NLP {name!r}; choose spacy or nltk")


class ObjHalScorer:
    """Ground truth, synonym mapping and metrics of the reference (module docstring)."""

    def __init__(self, synonyms: str | os.PathLike, *, mode: str = "judge", nlp: Any = "spacy",
                 spacy_model: str = "en_core_web_trf"):
        if mode not in OBJHAL_MODES:
            raise ValueError(f"unknown Object HalBench mode {mode!r}; choose judge or words")
        self.mode = mode
        if str(synonyms) == "coco":
            text = (resources.files("visalign") / "resources" / "coco_synonyms.txt").read_text(
                encoding="utf-8")
            self.synonyms_source = "packaged COCO CHAIR table (not the refined table)"
        else:
            p = Path(synonyms)
            if not p.exists():
                raise DataError(p, "synonym table not found (RLAIF-V's "
                                   "eval/data/synonyms_refine.txt)")
            text = p.read_text(encoding="utf-8")
            self.synonyms_source = str(p)
        self.inverse: dict[str, str] = {}
        for line in text.splitlines(keepends=True):
            words = [s.strip() for s in line.strip().split(", ")]
            for s in words:
                self.inverse[s] = words[0]
        self.objects = set(self.inverse)
        doubles = [w for w in self.inverse if len(w.strip().split(" ")) >= 2]
        self.double = {w: w for w in doubles + ["home plate", "train track"]}
        for a in _ANIMAL_WORDS:
            self.double[f"baby {a}"] = a
            self.double[f"adult {a}"] = a
        for v in _VEHICLE_WORDS:
            self.double[f"passenger {v}"] = v
        self.double.update({"bow tie": "tie", "toilet seat": "toilet",
                            "wine glas": "wine glass"})
        self.nlp_name = nlp if isinstance(nlp, str) else getattr(nlp, "__name__", "custom")
        self._nlp = (load_nlp(nlp, spacy_model) if isinstance(nlp, str) else nlp
                     ) if mode == "judge" else None
        if mode == "judge" and nlp == "spacy":
            self.nlp_name = f"spacy:{spacy_model}"
        require_nltk(TOKENIZER)
        self._lemma = Lemmatizer()
        self.gt: dict[int, set[str]] = {}

    # -------------------------------------------------------------- words
    def _merge(self, words: list[str], keep_single: bool) -> list[str]:
        out, i = [], 0
        while i < len(words):
            pair = " ".join(words[i:i + 2])
            if pair in self.double:
                out.append(self.double[pair])
                i += 2
            else:
                if keep_single:
                    out.append(words[i])
                i += 1
        return out

    def caption_words(self, caption: str) -> list[str]:
        """Synonyms mentioned in ``caption`` (the reference's non-judge reading)."""
        merged = self._merge([self._lemma(w) for w in word_tokenize(caption.lower())], True)
        return self._to_coco(merged)

    def _to_coco(self, words: list[str]) -> list[str]:
        if "toilet" in words and "seat" in words:
            words = [w for w in words if w != "seat"]
        return [w for w in words if w in self.objects]

    def refine(self, objects: Sequence[str]) -> list[str]:
        """Judge-extracted objects -> unique object names (double words, else noun runs)."""
        refined: list[str] = []
        for text in objects:
            doc = self._nlp(f"a {text}")
            found = self._merge([t.lemma_ for t in doc], False)
            if not found:
                run: list[str] = []
                for t in list(doc) + [None]:
                    if t is not None and t.tag_ in _NOUN_TAGS:
                        run.append(t.lemma_)
                    elif run:
                        found.append(" ".join(run).strip())
                        run = []
            refined += found
        unique: list[str] = []
        for o in refined:
            if o not in unique:
                unique.append(o)
        return unique

    # -------------------------------------------------------------- ground truth
    def load_ground_truth(self, instances: Mapping, captions: Mapping,
                          image_ids: Iterable[int]) -> None:
        """Objects of each image: instance categories + synonyms its human captions name."""
        ids = {int(i) for i in image_ids}
        gt: dict[int, set[str]] = {i: set() for i in ids}
        names = {c["id"]: c["name"] for c in instances.get("categories") or []}
        for a in instances.get("annotations") or []:
            if a.get("image_id") in gt:
                name = names.get(a.get("category_id"))
                if name not in self.inverse:
                    raise DataError(None, f"COCO category {name!r} is not in the synonym table "
                                          f"({self.synonyms_source})", record=a.get("id"))
                gt[a["image_id"]].add(self.inverse[name])
        for a in captions.get("annotations") or []:
            if a.get("image_id") in gt:
                gt[a["image_id"]].update(self.inverse[w]
                                         for w in self.caption_words(a.get("caption", "")))
        self.gt = gt

    # -------------------------------------------------------------- scoring
    def score(self, items: Sequence[Mapping], client: Any = None, *,
              workers: int | None = None) -> dict:
        """Score ``items`` (``id``, ``image_id``, ``question``, ``answer``); ``client`` is a
        :class:`~visalign.eval.judge.JudgeClient` (judge mode)."""
        caps = []
        for it in items:
            image_id = int(it["image_id"])
            if image_id not in self.gt:
                raise DataError(None, f"image_id {image_id} has no ground truth loaded",
                                record=it.get("id"), field="image_id")
            caps.append({**it, "caption": str(it["answer"]).replace("Assistant:", "").strip()})
        unparsed = 0
        if self.mode == "judge":
            if client is None:
                raise ValueError("Object HalBench judge mode needs a judge client "
                                 "(or mode=words)")
            asks = [c for c in caps if len(c["caption"].strip().split()) > 3]
            replies = client.chat_many([objhal_messages(c["question"], c["caption"])
                                        for c in asks], workers=workers, **JUDGE_PARAMS)
            for c, reply in zip(asks, replies):
                c["judge_reply"] = reply
                c["extracted"] = parse_object_list(reply)
            for c in caps:
                c.setdefault("extracted", [])
                if c["extracted"] is None:
                    unparsed += 1
                    continue
                c["objects"] = self.refine(c["extracted"])
                c["words"] = self._to_coco(c["objects"])
        else:
            for c in caps:
                c["words"] = self.caption_words(c["caption"])
        return self._metrics(caps, unparsed)

    def _metrics(self, caps: list[dict], unparsed: int) -> dict:
        n = n_coco = n_hal_caps = n_words = n_hal = n_correct = n_gt = total_len = 0
        details = []
        for c in caps:
            if "words" not in c:
                details.append({"id": c.get("id"), "image_id": c["image_id"],
                                "caption": c["caption"], "judge_reply": c.get("judge_reply"),
                                "parsed": False})
                continue
            gt = self.gt[int(c["image_id"])]
            cats = [self.inverse[w] for w in c["words"]]
            hal = [(w, k) for w, k in zip(c["words"], cats) if k not in gt]
            n += 1
            total_len += len(c["caption"].strip().split(" "))
            n_words += len(cats)
            n_hal += len(hal)
            n_hal_caps += bool(hal)
            n_coco += bool(cats)
            n_correct += len({k for k in cats if k in gt})
            n_gt += len(gt)
            d = {"id": c.get("id"), "image_id": c["image_id"], "caption": c["caption"],
                 "words": c["words"], "categories": cats, "hallucinated": hal,
                 "gt_objects": sorted(gt)}
            if self.mode == "judge":
                d.update(extracted=c.get("extracted"), objects=c.get("objects"),
                         judge_reply=c.get("judge_reply"), parsed=True)
            details.append(d)
        if n == 0:
            raise DataError(None, "no Object HalBench response could be scored "
                                  f"({unparsed} judge replies unparsed)")
        metrics = {
            "objhal_response_hall": n_hal_caps / n_coco if n_coco else 0.0,
            "objhal_object_hall": n_hal / n_words if n_words else 0.0,
            "objhal_recall": n_correct / n_gt if n_gt else 0.0,
            "objhal_avg_len": total_len / n,
            "objhal_chair_s": n_hal_caps / n,
            "objhal_n": n,
            "objhal_coco_responses": n_coco,
            "objhal_judge_unparsed": unparsed,
        }
        return {"metrics": metrics, "responses": details,
                "protocol": {"mode": self.mode, "synonyms": self.synonyms_source,
                             "nlp": self.nlp_name if self.mode == "judge" else None}}
