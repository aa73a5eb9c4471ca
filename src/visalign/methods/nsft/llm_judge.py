"""nSFT's LLM judge, the paper's own (Fig. 9, Sec. C.2): the Fig. 9 prompt sent to an
OpenAI-compatible endpoint through :class:`visalign.eval.judge.JudgeClient`; its
"Hallucinations:" list becomes the errors (tagged with codebook categories) and its
question-answer pairs the corrective conversation. :func:`parse_llm_reply` reads the reply."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from visalign.data.llava import first_exchange
from visalign.methods.nsft.answers import SHORT_ANSWER_CATEGORIES, is_short, short_answer_errors
from visalign.methods.nsft.codebook import (CATEGORY_KEYS, UNSPECIFIED, level_of,
                                            match_category, nsft_messages)
from visalign.methods.nsft.config import NsftDataConfig
from visalign.methods.nsft.ground_truth import GroundTruth
from visalign.methods.nsft.records import Error, JudgeSkip, Verdict


class LLMParseError(JudgeSkip):
    """An LLM judge reply that matches none of the accepted formats (counted ``llm_unparsed``)."""

    reason = "llm_unparsed"


@dataclasses.dataclass
class ParsedReply:
    """A parsed Fig. 9 reply: the hallucination items and the QA pairs."""

    hallucinations: list[str]
    qa_pairs: list[tuple[str, str]]
    no_hallucinations: bool = False


_MD_RE = re.compile(r"\*\*|__|`")
_BULLET_RE = re.compile(r"^(?:[-*•]\s+|\(?\d+[.)]\s+)+")
_Q_RE = re.compile(r"^(?:[-*•]\s*)?(?:\(?\d+[.)]\s*)?(?:user|human|question|q)\s*\d*\s*[:：]\s*"
                   r"(?P<t>.*)$", re.I)
_A_RE = re.compile(r"^(?:[-*•]\s*)?(?:\(?\d+[.)]\s*)?(?:gpt|assistant|answer|a|ai)\s*\d*\s*"
                   r"[:：]\s*(?P<t>.*)$", re.I)
_HAL_RE = re.compile(r"^(?:#+\s*)?hallucinations?\s*[:：]\s*(?P<t>.*)$", re.I)
_TOPIC_RE = re.compile(r"^(?:#+\s*)?(?:constructed\s+)?topic\s*\d*\s*[:：]", re.I)
_NONE_ITEM_RE = re.compile(r"^(?:none|n/?a|no hallucinations?(?: found| exist| detected)?)"
                           r"\W*$", re.I)
_NO_HAL_RE = re.compile(
    r"\bno\s+hallucinations?\b|\b(?:does|do)\s+not\s+(?:contain|have|include)\s+any\s+"
    r"hallucinat|\bthere\s+(?:are|is)\s+no\s+hallucinat|\bhallucination[- ]free\b|"
    r"\bend(?:ing)?\s+(?:this|the)\s+chat\b|\bchat\s+(?:has\s+)?end(?:ed|s)\b|"
    r"\bwithout\s+(?:any\s+)?hallucinations?\b", re.I)


def parse_llm_reply(text: str) -> ParsedReply:
    """Parse a Fig. 9 reply into hallucination items and QA pairs.

    Accepts numbering ("1.", "1)", "Q1:"), ``User:``/``GPT:``, ``Human:``/``Assistant:`` or
    ``Q:``/``A:`` prefixes, blank lines, markdown bold/headers, and answers continued on the
    next line. "No hallucinations"/"end this chat" with no QA pairs -> no errors. Raises
    :class:`LLMParseError` when the reply fits none of this.
    """
    if not isinstance(text, str) or not text.strip():
        raise LLMParseError("empty reply")
    lines = [_MD_RE.sub("", ln).strip() for ln in text.splitlines()]
    items: list[str] = []
    pairs: list[tuple[str, str]] = []
    in_hal = False
    q: str | None = None
    cur: list[str] | None = None   # the open question/answer text being continued
    a: str | None = None
    for ln in lines:
        if not ln:
            cur = None
            continue
        ln = re.sub(r"^>\s*", "", ln)
        hm = _HAL_RE.match(ln)
        if hm:
            in_hal, cur = True, None
            if hm.group("t").strip():
                items.append(hm.group("t").strip())
            continue
        if _TOPIC_RE.match(ln):
            in_hal, cur = False, None
            continue
        qm, am = _Q_RE.match(ln), _A_RE.match(ln)
        if qm and not am:
            in_hal = False
            if q is not None and a is not None:
                pairs.append((q, a))
            q, a = qm.group("t").strip(), None
            cur = ["q"]
            continue
        if am:
            in_hal = False
            if q is not None:
                if a is not None:   # a second answer line prefixed again: continue it
                    a = a + " " + am.group("t").strip()
                else:
                    a = am.group("t").strip()
                cur = ["a"]
            continue
        if in_hal:
            items.append(_BULLET_RE.sub("", ln).strip())
            continue
        if cur == ["q"] and q is not None:
            q = f"{q} {ln}"
        elif cur == ["a"] and a is not None:
            a = f"{a} {ln}"
    if q is not None and a is not None:
        pairs.append((q, a))
    pairs = [(qq.strip(), aa.strip()) for qq, aa in pairs if qq.strip() and aa.strip()]
    items = [it for it in items if it and not _NONE_ITEM_RE.match(it)]
    if pairs:
        return ParsedReply(items, pairs)
    if items:
        raise LLMParseError("hallucinations listed but no question-answer pairs found")
    if _NO_HAL_RE.search(text):
        return ParsedReply([], [], no_hallucinations=True)
    raise LLMParseError("no 'Hallucinations:' list, no QA pairs and no 'no hallucinations' "
                        "statement")


def _item_error(item: str) -> Error:
    """An :class:`Error` from one hallucination line ("Object Identity: a dog -> a cat")."""
    cat = match_category(item)
    body = item
    head, sep, tail = item.partition(":")
    if sep and match_category(head) != UNSPECIFIED:
        body = tail.strip()
    wrong, right = body, None
    for arrow in ("->", "→", "=>"):
        if arrow in body:
            wrong, right = (s.strip() for s in body.split(arrow, 1))
            break
    return Error(cat, level_of(cat), text=item, wrong=wrong, right=right)


class LLMJudge:
    """Fig. 9 judge over an OpenAI-compatible endpoint (via :class:`JudgeClient`).

    The ground-truth text is the record's GT answer (the detailed description) followed by
    the image's reference captions when the ground truth has them. Short-answer records are
    judged by normalised comparison, like the paper's manually built OCRVQA pairs (Sec. B.1).
    Retries and the on-disk cache are the client's; parse failures raise
    :class:`LLMParseError` (the builder counts them as ``llm_unparsed``). :meth:`prefetch`
    sends all requests ``llm.workers`` at a time (the builder calls it first), so a large set
    is not judged one request after another.
    """

    name = "llm"
    checkable_categories = frozenset(CATEGORY_KEYS)
    short_answer_categories = SHORT_ANSWER_CATEGORIES

    def __init__(self, client: Any = None, *, cfg: NsftDataConfig | None = None,
                 api_key: str | None = None):
        self.cfg = cfg or NsftDataConfig()
        if client is None:
            from visalign.eval.judge import JudgeClient
            client = JudgeClient(self.cfg.llm, api_key=api_key)
        self.client = client
        self._replies: dict[str, str] = {}

    def notes(self, gt: GroundTruth | None) -> list[str]:
        return []

    @staticmethod
    def gt_text(record: Mapping, gt: GroundTruth | None) -> str:
        text = first_exchange(record)[1]
        if gt is not None:
            iid = gt.image_id_for(record)
            caps = gt.captions(iid) if iid is not None else []
            if caps:
                text += "\n\nReference captions:\n" + "\n".join(f"- {c}" for c in caps)
        return text

    @staticmethod
    def _key(messages: list[dict]) -> str:
        import json
        return json.dumps(messages, sort_keys=True, ensure_ascii=False)

    def messages(self, record: Mapping, answer: str, gt: GroundTruth | None) -> list[dict]:
        """The Fig. 9 request for one long-answer record."""
        return nsft_messages(self.gt_text(record, gt), answer)

    def prefetch(self, items: Sequence[tuple[dict, str]], gt: GroundTruth | None) -> None:
        """Ask the endpoint about every long-answer ``(record, answer)`` concurrently (the
        client's ``chat_many``); :meth:`review` then uses the replies held here."""
        if not hasattr(self.client, "chat_many"):
            return
        msgs = [self.messages(r, a, gt) for r, a in items if not is_short(r, self.cfg)]
        todo = list({self._key(m): m for m in msgs if self._key(m) not in self._replies}
                    .values())
        if todo:
            for m, reply in zip(todo, self.client.chat_many(todo)):
                self._replies[self._key(m)] = reply

    def review(self, record: dict, answer: str, gt: GroundTruth | None) -> Verdict:
        if is_short(record, self.cfg):
            return Verdict(short_answer_errors(record, answer))
        msgs = self.messages(record, answer, gt)
        reply = self._replies.pop(self._key(msgs), None)
        if reply is None:
            reply = self.client.chat(msgs)
        parsed = parse_llm_reply(reply)
        if parsed.no_hallucinations:
            return Verdict([])
        errors = [_item_error(it) for it in parsed.hallucinations] or \
            [Error(UNSPECIFIED, None, text="(conversation given, no hallucination listed)",
                   wrong="")]
        return Verdict(errors, parsed.qa_pairs)

    def __call__(self, record: dict, answer: str, gt: GroundTruth | None) -> list[Error]:
        return self.review(record, answer, gt).errors
