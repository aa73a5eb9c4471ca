"""SIMA pairs: k sampled responses per prompt, ranked by the model itself as an in-context
critic; best vs worst become the pair.

SIMA ("Enhancing Visual-Language Modality Alignment in Large Vision Language Models via
Self-Improvement") samples responses from the model and has the same model, given the ground
truth and three visual critic metrics (object description accuracy, relationship accuracy,
attribute accuracy), say which of two responses is better (:class:`SimaRanker`,
:data:`SIMA_CRITIC_PROMPT`). We rank by a round-robin pairwise tournament (each pair compared
once, or in both orders with ``both_orders`` to cancel position bias), scoring wins − losses;
best vs worst become the pair (:func:`build_sima_pairs`). The verdict is the critic's
generated reply (:func:`parse_critic_choice`); with ``critic_verdict=auto`` (the default) a
reply that names neither response is replaced by the model's forced choice (the more likely of
the replies "Response 1" / "Response 2"), so a model too weak to follow the instruction (every
micro-world model) still ranks; ``generate`` scores unparseable replies as nothing. Records
whose responses all tie are skipped (``tied``), not paired at random.

Departures: the critic prompt is our wording after the paper's structure, not its text; the
tournament and the likelihood fallback (where SIMA compares against the greedy response) are
ours.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

from visalign.data.llava import first_exchange
from visalign.methods.pairs.common import check_record, make_pair, normalize_response

__all__ = ["SIMA_CRITIC_PROMPT", "parse_critic_choice", "SimaRankError", "SimaRanker",
           "build_sima_pairs"]


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
        question, gt_answer = first_exchange(record, 0)
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
        check_record(rec, i)
        prompt, _ = first_exchange(rec, i)
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
        pairs.append(make_pair(rec, prompt, best, worst,
                               {"method": "sima", "n_samples": len(resp),
                                "n_distinct": len(distinct), "best": order[0],
                                "worst": order[-1]}))
    stats = {"method": "sima", "n_records": len(records), "n_pairs": len(pairs),
             "skipped": dict(skipped), "skipped_ids": skipped_ids}
    if hasattr(rank_fn, "stats"):
        stats["critic"] = dict(rank_fn.stats)
    return pairs, stats
