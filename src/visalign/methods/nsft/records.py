"""What nSFT's judges and builder pass around: an :class:`Error` in a model answer (tagged with
a vision-error-codebook category, Fig. 9), a :class:`QA` pair of a constructed conversation, a
judge's :class:`Verdict`, the :class:`Judge` protocol and :class:`JudgeSkip`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from visalign.methods.nsft.ground_truth import GroundTruth


@dataclasses.dataclass
class Error:
    """One mistake in a model answer.

    ``category`` is a codebook key (or ``"unspecified"`` for an LLM item we cannot map),
    ``level`` its codebook level; ``text`` is the erroneous span as written in the answer,
    ``wrong``/``right`` the claimed and the true value (``right`` None when unknown), ``object``
    the object the error is about. ``where``: for a hallucinated object, the region the answer
    placed it in; ``other``: the second object of a relative-position error; ``meta``: the
    attribute kind (``color``/``size``/``count``) and whether the mention was plural.
    """

    category: str
    level: str | None
    text: str
    wrong: str
    right: str | None = None
    object: str | None = None
    where: str | None = None
    other: str | None = None
    span: tuple[int, int] | None = None
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class QA:
    """One question-answer pair of a constructed conversation.

    ``gt`` marks pairs copied from the ground-truth conversation (never erased or counted by
    the yes/no balancing); ``kind`` names the template that produced the pair.
    """

    question: str
    answer: str
    kind: str = "constructed"
    object: str | None = None
    gt: bool = False


@dataclasses.dataclass
class Verdict:
    """A judge's full output: errors and, for LLM judges, the conversation it proposed."""

    errors: list[Error]
    qa_pairs: list[tuple[str, str]] | None = None


class JudgeSkip(Exception):
    """Raised by a judge that cannot judge a record; the builder lists it as skipped."""

    reason = "judge_skip"


@runtime_checkable
class Judge(Protocol):
    """Finds the errors of ``answer`` (to ``record``'s first question) against ground truth.

    ``name`` goes into the report; ``checkable_categories`` are the codebook keys the judge can
    detect in long answers. A judge may also declare ``short_answer_categories``, the keys it
    tags wrong short answers with after comparing them with the GT answer (default: none); the
    report lists a key in neither set as unchecked. A judge may also offer
    ``review(record, answer, gt) -> Verdict`` to propose the conversation itself (LLM judges).
    """

    name: str
    checkable_categories: frozenset[str]

    def __call__(self, record: dict, answer: str, gt: GroundTruth | None) -> list[Error]:
        ...
