"""Preference-pair builders for the DPO baselines (GT-DPO, SeVa, SIMA, POVID) and the pair file.

The trainer (:mod:`visalign.methods.dpo`) reads one format, whatever produced it, so external
preference datasets (VLFeedback, RLHF-V, ...) can be converted into it and trained the same way.

Pair file format
----------------
A JSON list, or JSONL (one object per line), of::

    {
      "id": "coco_42_q0",              # unique string (ints are accepted and stringified)
      "image": "images/000042.png",    # the ORIGINAL image: absolute, or relative to the
                                       #   trainer's image_root (default: the pair file's
                                       #   directory); `visalign pairs` keeps the data's paths
      "prompt": "Describe the image.", # the question; an "<image>" placeholder is removed on
                                       #   load (the trainer places the image itself)
      "chosen": "A red cup ...",       # preferred response (non-empty)
      "rejected": "A blue cup ...",    # dispreferred response (non-empty, != chosen)
      "image_id": 42,                  # optional: COCO image id
      "rejected_image": "noised/x.png",# optional, informative only: the corrupted image the
                                       #   rejected response was generated from (SeVa, POVID
                                       #   stage 2); DPO trains both responses on "image"
      "meta": {"method": "seva", "stage": 1, ...}   # optional object; "stage" (int >= 1)
                                       #   tags POVID's two stages for sequential training
    }

:func:`load_pairs` validates every record and raises :class:`visalign.io.DataError` naming the
file, the record (index and id) and the field; :func:`write_pairs` validates and writes
atomically (``.jsonl`` -> JSONL, otherwise a JSON list). Other fields pass through untouched.
Train a pair file with ``visalign train dpo --pairs FILE [--preset gt-dpo|seva|sima|povid]``.

Builders (each returns ``(pairs, stats)``; stats count what was skipped and why)
-------------------------------------------------------------------------------
They take the responses as given; :func:`visalign.methods.pair_sources.build_method_pairs`
generates them with a model first (``visalign pairs <method>`` from Python).

* :func:`build_gt_dpo_pairs` — chosen = ground-truth answer, rejected = the model's greedy
  answer (nSFT paper's GT-DPO baseline). Pairs identical after normalisation are skipped.
* :func:`build_seva_pairs` — SeVa: chosen = the model's answer on the original image, rejected
  = its answer on the diffusion-noised image (:func:`visalign.methods.image_noise
  .diffusion_noise`: SeVa/VCD's sigmoid schedule, step 500 by default). Identical pairs
  skipped.
* :func:`build_sima_pairs` — SIMA: k sampled responses per prompt, ranked by the model itself
  used in context as a critic (:class:`SimaRanker`: given the ground truth and SIMA's three
  visual critic metrics — object description accuracy, relationship accuracy, attribute
  accuracy — it says which of two responses is better). We rank by a round-robin pairwise
  tournament (each pair compared once, or in both orders with ``both_orders`` to cancel
  position bias), scoring wins − losses; best vs worst become the pair. The verdict is the
  critic's generated reply (:func:`parse_critic_choice`); with ``critic_verdict=auto`` (the
  default) a reply that names neither response is replaced by the model's forced choice (the
  more likely of the replies "Response 1" / "Response 2"), so a model too weak to follow the
  instruction (every micro-world model) still ranks; ``generate`` scores unparseable replies
  as nothing. Records whose responses all tie are skipped (``tied``), not paired at random.
* :func:`build_povid_pairs` — POVID stage 1: chosen = ground truth, rejected = the ground
  truth with one injected hallucination, by annotation-driven rules (object edit: a present
  object word -> the absent category that co-occurs with it most often; attribute edit: a
  colour word -> another colour; relation edit: left<->right, above<->below, on<->under,
  behind<->in front of; a preceding "a"/"an" is fixed with the word), or
  rewritten by an LLM endpoint (``POVID_PROMPT``, after POVID's prompt structure: object
  co-occurrence, logical relationships, attributes). Stage 2: chosen = ground truth, rejected
  = the model's answer on the noised image. Pairs carry ``meta.stage`` 1 or 2.

Departures: SIMA's critic prompt and POVID's LLM prompt are our wording after the papers'
structure, not their text; the tournament and the likelihood fallback (vs SIMA's comparison
against the greedy response) are ours and documented above; one rule-based POVID edit per
record (POVID's GPT-4V rewrites could change several phrases at once); DPO scores every
response on the original image, also POVID's noisy-image responses (POVID scores them on the
noised image).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from visalign.config import field
from visalign.eval.judge import JudgeConfig
from visalign.io import DataError, read_records, write_json, write_jsonl
from visalign.data.llava import first_exchange, strip_image

__all__ = [
    "PairsConfig", "load_pairs", "validate_pairs", "write_pairs", "build_gt_dpo_pairs",
    "build_seva_pairs", "build_sima_pairs", "build_povid_pairs", "SimaRanker",
    "SimaRankError", "SIMA_CRITIC_PROMPT", "POVID_PROMPT", "parse_critic_choice", "TextEdit",
    "object_edit", "attribute_edit", "relation_edit", "povid_llm_edit", "normalize_response",
]

METHODS = ("gt-dpo", "seva", "sima", "povid")


@dataclasses.dataclass
class PairsConfig:
    """Settings of ``visalign pairs <method>``."""

    seed: int = field(0, help="seed (noise, sampling, POVID edits)")
    max_new_tokens: int = field(256, help="generation length")
    batch_size: int = field(8, help="generation batch size")
    dtype: str = field("float32", help="model dtype")
    device: str = field("cpu", help="model device")
    noise_step: int = field(500, help="diffusion noise step t in [0, 999] (SeVa/VCD sigmoid "
                                      "schedule; SeVa's default 500)")
    num_samples: int = field(4, help="SIMA: responses sampled per prompt (k)")
    temperature: float = field(1.0, help="SIMA: sampling temperature")
    top_p: float = field(1.0, help="SIMA: nucleus sampling p")
    critic_max_new_tokens: int = field(16, help="SIMA: generation length of a critic verdict")
    critic_verdict: str = field("auto", help="SIMA: 'generate' (parse the critic's reply), "
                                             "'likelihood' (the more likely of 'Response 1'/"
                                             "'Response 2'), 'auto' (parse, else likelihood)")
    both_orders: bool = field(False, help="SIMA: compare every pair in both orders")
    noise_resize: int = field(0, help="SeVa/POVID: resize images so the shorter side is N "
                                      "before noising (the vision tower's input size, e.g. "
                                      "336 for LLaVA-1.5); 0 = noise at the stored size")
    povid_editor: str = field("rules", help="POVID stage 1 editor: 'rules' or 'llm'")
    povid_edits: list[str] = field(["object", "attribute", "relation"],
                                   help="POVID rule edit kinds to choose from")
    povid_stages: list[int] = field([1, 2], help="POVID stages to build")
    llm: JudgeConfig = dataclasses.field(
        default_factory=JudgeConfig,
        metadata={"help": "JudgeClient settings for povid_editor=llm"})


# ---------------------------------------------------------------------------------------------
# Pair file
# ---------------------------------------------------------------------------------------------

def normalize_response(text: str) -> str:
    """Comparison form of a response: lower case, single spaces, no trailing punctuation."""
    return " ".join(str(text).lower().split()).strip(" .!?")


def validate_pairs(pairs: Sequence[Any], path: Any = None) -> list[dict]:
    """Check pair records (see the module docstring); returns normalised copies."""
    out: list[dict] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(pairs):
        if not isinstance(p, Mapping):
            raise DataError(path, "expected a JSON object", record=i)
        if "id" not in p or not isinstance(p["id"], (str, int)) or isinstance(p["id"], bool) \
                or str(p["id"]) == "":
            raise DataError(path, "missing or invalid id (string expected)", record=i,
                            field="id")
        rid = str(p["id"])
        where = f"{i} (id {rid!r})"
        for k in ("image", "prompt", "chosen", "rejected"):
            v = p.get(k)
            if not isinstance(v, str) or not v.strip():
                raise DataError(path, "missing or empty (non-empty string expected)",
                                record=where, field=k)
        if rid in seen:
            raise DataError(path, f"duplicate id (also record {seen[rid]})", record=where,
                            field="id")
        seen[rid] = i
        if normalize_response(p["chosen"]) == normalize_response(p["rejected"]):
            raise DataError(path, "chosen and rejected are identical: the pair teaches nothing",
                            record=where, field="rejected")
        if "image_id" in p and p["image_id"] is not None and (
                not isinstance(p["image_id"], (int, str)) or isinstance(p["image_id"], bool)):
            raise DataError(path, "image_id must be an integer or a string", record=where,
                            field="image_id")
        if "rejected_image" in p and p["rejected_image"] is not None and \
                not isinstance(p["rejected_image"], str):
            raise DataError(path, "rejected_image must be a path string", record=where,
                            field="rejected_image")
        meta = p.get("meta", {})
        if meta is None:
            meta = {}
        if not isinstance(meta, Mapping):
            raise DataError(path, "meta must be an object", record=where, field="meta")
        if "stage" in meta:
            st = meta["stage"]
            if isinstance(st, bool) or not isinstance(st, int) or st < 1:
                raise DataError(path, f"meta.stage must be an integer >= 1, got {st!r}",
                                record=where, field="meta.stage")
        q = dict(p)
        q["id"] = rid
        q["prompt"] = strip_image(p["prompt"])
        q["meta"] = dict(meta)
        out.append(q)
    return out


def load_pairs(path: str | Path) -> list[dict]:
    """Read and validate a pair file (JSON list or JSONL)."""
    pairs = validate_pairs(read_records(path), path)
    if not pairs:
        raise DataError(path, "no pairs in the file")
    return pairs


def write_pairs(path: str | Path, pairs: Sequence[dict]) -> Path:
    """Validate and write pairs atomically (``.jsonl`` -> JSONL, else a JSON list)."""
    pairs = validate_pairs(pairs, path)
    if str(path).endswith(".jsonl"):
        return write_jsonl(path, pairs)
    return write_json(path, pairs)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the builders
# ---------------------------------------------------------------------------------------------

def _question_answer(record: Mapping, index: int) -> tuple[str, str]:
    """(first question without <image>, first GT answer) of a LLaVA record."""
    return first_exchange(record, index)


def _amap(answers: Any, what: str) -> dict[str, str]:
    """``{id: answer}`` from a mapping or answer records (``id`` + ``answer``)."""
    if isinstance(answers, Mapping):
        return {str(k): (v["answer"] if isinstance(v, Mapping) else v)
                for k, v in answers.items()}
    out = {}
    for i, a in enumerate(answers):
        if not isinstance(a, Mapping) or "id" not in a or not isinstance(a.get("answer"), str):
            raise DataError(None, f"{what}: records need 'id' and a string 'answer'", record=i,
                            field="answer")
        out[str(a["id"])] = a["answer"]
    return out


def _pair(record: Mapping, prompt: str, chosen: str, rejected: str, meta: dict,
          suffix: str = "") -> dict:
    p = {"id": f"{record['id']}{suffix}", "image": record["image"], "prompt": prompt,
         "chosen": chosen.strip(), "rejected": rejected.strip()}
    if record.get("image_id") is not None:
        p["image_id"] = record["image_id"]
    p["meta"] = meta
    return p


def _check_record(record: Any, i: int) -> None:
    if not isinstance(record, Mapping) or "id" not in record or "image" not in record:
        raise DataError(None, "LLaVA records need 'id' and 'image'", record=i, field="id")


# ---------------------------------------------------------------------------------------------
# GT-DPO
# ---------------------------------------------------------------------------------------------

def build_gt_dpo_pairs(records: Sequence[Mapping], answers: Any) -> tuple[list[dict], dict]:
    """chosen = GT answer, rejected = the model's greedy answer (skip identical; count)."""
    amap = _amap(answers, "answers")
    pairs, identical, missing, empty = [], [], [], []
    for i, rec in enumerate(records):
        _check_record(rec, i)
        prompt, gt_answer = _question_answer(rec, i)
        rid = str(rec["id"])
        if rid not in amap:
            missing.append(rid)
            continue
        if not gt_answer.strip() or not amap[rid].strip():
            empty.append(rid)
            continue
        if normalize_response(gt_answer) == normalize_response(amap[rid]):
            identical.append(rid)
            continue
        pairs.append(_pair(rec, prompt, gt_answer, amap[rid], {"method": "gt-dpo"}))
    return pairs, {"method": "gt-dpo", "n_records": len(records), "n_pairs": len(pairs),
                   "skipped_identical": len(identical), "skipped_identical_ids": identical,
                   "skipped_no_answer": len(missing), "skipped_no_answer_ids": missing,
                   "skipped_empty": len(empty), "skipped_empty_ids": empty}


# ---------------------------------------------------------------------------------------------
# SeVa
# ---------------------------------------------------------------------------------------------

def build_seva_pairs(records: Sequence[Mapping], answers_clean: Any, answers_noisy: Any, *,
                     noise_step: int | None = None,
                     rejected_images: Mapping[str, str] | None = None
                     ) -> tuple[list[dict], dict]:
    """chosen = answer on the original image, rejected = answer on the noised image.

    ``answers_noisy`` records may carry ``image`` (the noised image they were generated from);
    it, or ``rejected_images[id]``, becomes the informative ``rejected_image`` field.
    """
    clean = _amap(answers_clean, "clean answers")
    noisy = _amap(answers_noisy, "noisy answers")
    rej_img = dict(rejected_images or {})
    if not isinstance(answers_noisy, Mapping):
        for a in answers_noisy:
            if isinstance(a.get("image"), str):
                rej_img.setdefault(str(a["id"]), a["image"])
    pairs, identical, missing, empty = [], [], [], []
    for i, rec in enumerate(records):
        _check_record(rec, i)
        prompt, _ = _question_answer(rec, i)
        rid = str(rec["id"])
        if rid not in clean or rid not in noisy:
            missing.append(rid)
            continue
        if not clean[rid].strip() or not noisy[rid].strip():
            empty.append(rid)
            continue
        if normalize_response(clean[rid]) == normalize_response(noisy[rid]):
            identical.append(rid)
            continue
        p = _pair(rec, prompt, clean[rid], noisy[rid],
                  {"method": "seva", **({"noise_step": noise_step} if noise_step is not None
                                        else {})})
        if rid in rej_img and rej_img[rid] != rec["image"]:
            p["rejected_image"] = rej_img[rid]
        pairs.append(p)
    return pairs, {"method": "seva", "n_records": len(records), "n_pairs": len(pairs),
                   "noise_step": noise_step, "skipped_identical": len(identical),
                   "skipped_identical_ids": identical, "skipped_no_answer": len(missing),
                   "skipped_no_answer_ids": missing, "skipped_empty": len(empty),
                   "skipped_empty_ids": empty}


# ---------------------------------------------------------------------------------------------
# SIMA
# ---------------------------------------------------------------------------------------------

# Our wording after SIMA's in-context self-critic: ground truth + two responses + the three
# visual critic metrics, answer "Response 1" or "Response 2".
SIMA_CRITIC_PROMPT = """You are an expert judge of answers about images. Look at the image and \
read the question, the ground-truth answer, and two responses to the question.

Question: {question}

Ground truth: {ground_truth}

Response 1: {response_1}

Response 2: {response_2}

Decide which response is better using these three metrics:
1. Accuracy of object descriptions: the objects the response describes are really in the \
image, as the ground truth says, and no object is invented.
2. Accuracy of relationships between objects: the positions and interactions between objects \
are described correctly.
3. Accuracy of attributes of objects: colours, sizes, shapes and counts are described \
correctly.

Reply with "Response 1" or "Response 2" only."""


_ORDINALS = {"first": "1", "second": "2", "one": "1", "two": "2"}
_BETTER = r"(?:better|best|preferred|preferable|superior|more\s+accurate|correct|the\s+winner)"
_WORSE = r"(?:worse|worst|inferior|less\s+accurate|incorrect|wrong)"
_R = r"response\s*#?\s*([12])\b"
# "is", "is clearly", "is much more" -- but not "is not"
_COPULA = r"\s+(?:is|was|seems|appears)\s+(?:(?!not\b|never\b|no\b)\w+\s+){0,2}?"


def parse_critic_choice(text: str) -> int | None:
    """1 or 2 from a critic verdict; None when it names neither (or both, undecidably).

    Accepts "Response 1", "response 2.", "**Response 2** is better", "the second response", a
    reply that is only "1"/"2". When both responses are named the verdict is read from the
    wording: "Response N is better/best/preferred/more accurate" or "I choose/prefer/... Response
    N" -> N; "Response N is worse" or "better than Response N" -> the other one; else a reply
    that opens with a bare "Response N" verdict ("Response 2. Response 1 invents a dog") -> N;
    otherwise the reply is unparseable.
    """
    t = re.sub(r"[*_`\"']", "", text or "").strip().lower()
    t = re.sub(r"\b(?:the\s+)?(first|second)\s+(?:response|answer)\b",
               lambda m: f"response {_ORDINALS[m.group(1)]}", t)
    t = re.sub(r"\banswer\s*#?\s*([12])\b", r"response \1", t)
    t = re.sub(r"\bresponse\s+(one|two)\b", lambda m: f"response {_ORDINALS[m.group(1)]}", t)
    if not t:
        return None
    m = re.fullmatch(r"#?\s*([12])\s*[.)!]?", t)
    if m:
        return int(m.group(1))
    found = {int(x) for x in re.findall(_R, t)}
    if len(found) == 1:
        return found.pop()
    if len(found) != 2:
        return None
    votes: set[int] = set()
    for m in re.finditer(_R + _COPULA + _BETTER, t):
        votes.add(int(m.group(1)))
    for m in re.finditer(_R + _COPULA + _WORSE, t):
        votes.add(3 - int(m.group(1)))
    for m in re.finditer(r"(?<!not\s)(?:better|more\s+accurate)\s+than\s+" + _R, t):
        votes.add(3 - int(m.group(1)))
    for m in re.finditer(_R + r"\s+(?:is|was)\s+not\s+(?:\w+\s+)?" + _BETTER, t):
        votes.add(3 - int(m.group(1)))
    for m in re.finditer(_R + r"\s+(?:is|was)\s+not\s+(?:\w+\s+)?" + _WORSE, t):
        votes.add(int(m.group(1)))
    for m in re.finditer(r"(?:choose|chose|choice|prefer|preferred|pick|select|winner|verdict|"
                         r"answer)\b(?:\s+is)?\W+(?:\w+\W+){0,2}?" + _R, t):
        votes.add(int(m.group(1)))
    if len(votes) == 1:
        return votes.pop()
    if votes:
        return None
    m = re.match(_R + r"\s*(?:[.:;!\n]|$)", t)
    return int(m.group(1)) if m else None


class SimaRankError(Exception):
    """The critic could not rank a record's responses (``reason`` says why)."""

    def __init__(self, message: str, reason: str = "rank_failed"):
        super().__init__(message)
        self.reason = reason


class SimaRanker:
    """Ranks k responses with the model as its own in-context critic (SIMA).

    ``generate_fn(images, prompts) -> list[str]`` is the model (greedy); ``image_fn(record)``
    gives the image object passed to it (default: ``record["image"]``). ``choice_fn(images,
    prompts) -> list[int]`` (optional) is the model's forced choice: 1 or 2, whichever of the
    replies "Response 1"/"Response 2" it finds more likely after the critic prompt.

    ``verdict``: ``"generate"`` parses the generated verdict (:func:`parse_critic_choice`;
    unparseable verdicts score nothing and count in ``stats["parse_failures"]``);
    ``"likelihood"`` uses only ``choice_fn``; ``"auto"`` parses and falls back to ``choice_fn``
    for unparseable verdicts (``stats["likelihood_verdicts"]``), so a model too weak to follow
    the critic instruction still ranks.

    Round-robin tournament: every pair (i < j) is judged once (and again swapped with
    ``both_orders``); each response scores wins − losses (Copeland). Returns indices best ->
    worst (ties by index). Raises :class:`SimaRankError` when no comparison could be decided
    (reason ``rank_failed``) or when every response has the same score (reason ``tied``: best
    and worst would be an arbitrary pick, e.g. a critic that always answers "Response 1" with
    ``both_orders``).
    """

    VERDICTS = ("auto", "generate", "likelihood")

    def __init__(self, generate_fn: Callable[[list, list[str]], list[str]] | None, *,
                 image_fn: Callable[[Mapping], Any] | None = None, both_orders: bool = False,
                 choice_fn: Callable[[list, list[str]], list[int]] | None = None,
                 verdict: str = "generate"):
        if verdict not in self.VERDICTS:
            raise ValueError(f"SIMA critic verdict must be one of {self.VERDICTS}, "
                             f"got {verdict!r}")
        if verdict in ("auto", "likelihood") and choice_fn is None:
            raise ValueError(f"SIMA critic verdict {verdict!r} needs a choice_fn")
        if verdict in ("auto", "generate") and generate_fn is None:
            raise ValueError(f"SIMA critic verdict {verdict!r} needs a generate_fn")
        self.generate_fn = generate_fn
        self.choice_fn = choice_fn
        self.verdict = verdict
        self.image_fn = image_fn or (lambda rec: rec["image"])
        self.both_orders = both_orders
        self.stats = {"comparisons": 0, "parse_failures": 0, "likelihood_verdicts": 0}

    def __call__(self, record: Mapping, responses: Sequence[str]) -> list[int]:
        question, gt_answer = _question_answer(record, 0)
        k = len(responses)
        games = [(i, j) for i in range(k) for j in range(i + 1, k)]
        if self.both_orders:
            games += [(j, i) for i, j in games]
        if not games:
            return list(range(k))
        prompts = [SIMA_CRITIC_PROMPT.format(question=question, ground_truth=gt_answer,
                                             response_1=responses[a], response_2=responses[b])
                   for a, b in games]
        image = self.image_fn(record)
        choices: list[int | None] = [None] * len(games)
        if self.verdict != "likelihood":
            verdicts = self.generate_fn([image] * len(prompts), prompts)
            choices = [parse_critic_choice(v) for v in verdicts]
        todo = [g for g, c in enumerate(choices) if c is None]
        self.stats["comparisons"] += len(games)
        if self.verdict != "likelihood":
            self.stats["parse_failures"] += len(todo)
        if todo and self.choice_fn is not None and self.verdict != "generate":
            forced = self.choice_fn([image] * len(todo), [prompts[g] for g in todo])
            for g, c in zip(todo, forced):
                if c in (1, 2):
                    choices[g] = c
                    self.stats["likelihood_verdicts"] += 1
        score = [0] * k
        decided = 0
        for (a, b), c in zip(games, choices):
            if c is None:
                continue
            decided += 1
            win, lose = (a, b) if c == 1 else (b, a)
            score[win] += 1
            score[lose] -= 1
        if decided == 0:
            raise SimaRankError("no critic verdict could be parsed", "rank_failed")
        if len(set(score)) == 1:
            raise SimaRankError("the critic ranked every response equal", "tied")
        return sorted(range(k), key=lambda i: (-score[i], i))


def build_sima_pairs(records: Sequence[Mapping], samples: Mapping[str, Sequence[str]],
                     rank_fn: Callable[[Mapping, Sequence[str]], Sequence[int]],
                     progress: bool = False) -> tuple[list[dict], dict]:
    """Best vs worst of each record's sampled responses, as ranked by ``rank_fn``.

    ``samples``: ``{id: [response, ...]}``; ``rank_fn(record, responses)`` returns indices
    best -> worst (e.g. a :class:`SimaRanker`). Duplicate responses are collapsed first;
    records with fewer than two distinct responses, whose ranking fails, or whose best and
    worst are identical after normalisation are skipped and counted.
    """
    pairs: list[dict] = []
    skipped: Counter = Counter()
    skipped_ids: dict[str, list[str]] = {}

    def skip(reason: str, rid: str) -> None:
        skipped[reason] += 1
        skipped_ids.setdefault(reason, []).append(rid)

    bar = None
    if progress:  # the model critic makes ~k(k-1) generations per record: minutes
        from tqdm.auto import tqdm
        bar = tqdm(total=len(records), desc="sima critic", unit="rec", dynamic_ncols=True)
    for i, rec in enumerate(records):
        if bar:
            bar.update(1)
        _check_record(rec, i)
        prompt, _ = _question_answer(rec, i)
        rid = str(rec["id"])
        resp = samples.get(rid)
        if not resp:
            skip("no_samples", rid)
            continue
        distinct: list[str] = []
        for r in resp:
            if r.strip() and normalize_response(r) not in {normalize_response(d)
                                                           for d in distinct}:
                distinct.append(r)
        if len(distinct) < 2:
            skip("fewer_than_two_distinct", rid)
            continue
        try:
            order = list(rank_fn(rec, distinct))
        except SimaRankError as e:
            skip(e.reason, rid)
            continue
        if sorted(order) != list(range(len(distinct))):
            raise ValueError(f"rank_fn returned {order!r} for {len(distinct)} responses "
                             f"(record {rid!r}): expected a permutation of their indices")
        best, worst = distinct[order[0]], distinct[order[-1]]
        if normalize_response(best) == normalize_response(worst):
            skip("identical", rid)
            continue
        pairs.append(_pair(rec, prompt, best, worst,
                           {"method": "sima", "n_samples": len(resp),
                            "n_distinct": len(distinct), "best": order[0],
                            "worst": order[-1]}))
    stats = {"method": "sima", "n_records": len(records), "n_pairs": len(pairs),
             "skipped": dict(skipped), "skipped_ids": skipped_ids}
    if hasattr(rank_fn, "stats"):
        stats["critic"] = dict(rank_fn.stats)
    return pairs, stats


# ---------------------------------------------------------------------------------------------
# POVID
# ---------------------------------------------------------------------------------------------

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

    ``gt``: a :class:`visalign.methods.nsft_data.GroundTruth` (rules editor: present/absent
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
    noisy = _amap(noisy_answers, "noisy answers") if noisy_answers is not None else {}
    rej_img = dict(rejected_images or {})
    if noisy_answers is not None and not isinstance(noisy_answers, Mapping):
        for a in noisy_answers:
            if isinstance(a.get("image"), str):
                rej_img.setdefault(str(a["id"]), a["image"])
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
        _check_record(rec, i)
        prompt, gt_answer = _question_answer(rec, i)
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
                    pairs.append(_pair(rec, prompt, gt_answer, rejected,
                                       {"method": "povid", "stage": 1,
                                        "edit": {"kind": "llm"}}, "_s1"))
            else:
                edit = _rule_edit(rec, gt_answer, gt, colors, edits, rng)
                if edit is None:
                    skip("no_applicable_edit", rid)
                else:
                    kinds[edit.kind] += 1
                    pairs.append(_pair(rec, prompt, gt_answer, edit.apply(gt_answer),
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
                p = _pair(rec, prompt, gt_answer, noisy[rid], meta, "_s2")
                if rid in rej_img and rej_img[rid] != rec["image"]:
                    p["rejected_image"] = rej_img[rid]
                pairs.append(p)
    return pairs, {"method": "povid", "n_records": len(records), "n_pairs": len(pairs),
                   "stage1_pairs": sum(p["meta"]["stage"] == 1 for p in pairs),
                   "stage2_pairs": sum(p["meta"]["stage"] == 2 for p in pairs),
                   "edit_kinds": dict(kinds), "editor": editor, "skipped": dict(skipped),
                   "skipped_ids": skipped_ids}


def _rule_edit(rec: Mapping, text: str, gt: Any, colors: Sequence[str], edits: Sequence[str],
               rng: random.Random) -> TextEdit | None:
    """One rule edit of a kind drawn at random among those applicable to ``text``."""
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
