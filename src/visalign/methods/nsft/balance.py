"""Yes/No balancing of nSFT's constructed conversations (Sec. C.5: "we balance the 'Yes' and
'No' ratio ... by randomly erase some 'No' answers").

Only constructed pairs of long-answer conversations take part; kept ground-truth turns and
doubled pairs (Sec. B.1) are neither counted nor erased. Erasing "No" pairs can only raise the
"Yes" share, so the target is a minimum share. Appending "Yes" pairs about ground-truth objects
when erasing alone cannot reach it (:func:`add_yes_pairs`) is ours, off by default: the paper
only erases."""

from __future__ import annotations

import math
import random
import re
from typing import Callable, Iterable, Sequence

from visalign.methods.nsft.dialogue import Scene, exists_qa
from visalign.methods.nsft.records import QA


def _is_yes(answer: str) -> bool:
    return re.match(r"^\W*yes\b", answer, re.I) is not None


def _is_no(answer: str) -> bool:
    return re.match(r"^\W*no\b", answer, re.I) is not None


def _balanced(q: QA) -> bool:
    """Whether a pair takes part in yes/no balancing: constructed pairs of long-answer
    conversations. Kept GT turns are data, not construction; a doubled pair (Sec. B.1) is one
    unit whose "No." *is* the negative supervision of the mistake (erasing it would leave a
    copy of the GT answer), so both are neither counted nor erased."""
    return not q.gt and not q.kind.startswith("doubled")


def yes_no_counts(convs: Iterable[list[QA]],
                  which: Callable[[QA], bool] = _balanced) -> tuple[int, int]:
    """(answers starting "Yes", answers starting "No") among the pairs ``which`` selects
    (default: those the balancing counts)."""
    yes = no = 0
    for qas in convs:
        for q in qas:
            if not which(q):
                continue
            yes += _is_yes(q.answer)
            no += _is_no(q.answer)
    return yes, no


def is_doubled(q: QA) -> bool:
    """Whether a pair is half of a short answer's doubled pair (Sec. B.1)."""
    return q.kind.startswith("doubled")


def yes_ratio(yes: int, no: int) -> float | None:
    """The "Yes" share yes / (yes + no); None without any yes/no answer."""
    return yes / (yes + no) if yes + no else None


def balance_yes_no(convs: list[list[QA]], target: float, rng: random.Random) -> dict:
    """Erase random constructed "No" pairs until yes / (yes + no) >= ``target`` (Sec. C.5).

    Erasing "No" pairs can only raise the "Yes" share, so ``target`` is a *minimum* "Yes"
    share: a share already at or above it is left alone (``already_above``; nothing is erased
    and nothing is added). Otherwise erases the fewest pairs that reach the target, so one pair
    fewer would miss it. The last remaining constructed pair of a conversation is never erased;
    kept GT pairs and doubled pairs are neither counted nor erased (:func:`_balanced`). Works
    in place; returns ``{erased, reached, needed, already_above}`` (``needed`` None when no
    "Yes" exists to balance with).
    """
    yes, no = yes_no_counts(convs)
    if target <= 0 or yes + no == 0:
        return {"erased": 0, "reached": True, "needed": 0, "already_above": False}
    if yes_ratio(yes, no) >= target:
        return {"erased": 0, "reached": True, "needed": 0, "already_above": True}
    if yes == 0:
        return {"erased": 0, "reached": False, "needed": None, "already_above": False}
    # yes / (yes + no - k) >= target  <=>  k >= yes + no - yes / target
    need = max(0, math.ceil(yes + no - yes / target - 1e-9))
    cands = [(ci, id(q)) for ci, qas in enumerate(convs) for q in qas
             if _balanced(q) and _is_no(q.answer)]
    rng.shuffle(cands)
    erased = 0
    for ci, qid in cands:
        if erased >= need:
            break
        qas = convs[ci]
        if sum(not q.gt for q in qas) <= 1:
            continue
        for j, q in enumerate(qas):
            if id(q) == qid:
                del qas[j]
                erased += 1
                break
    return {"erased": erased, "reached": erased >= need, "needed": need,
            "already_above": False}


def add_yes_pairs(convs: Sequence[tuple[list[QA], Scene]], target: float,
                  rng: random.Random) -> int:
    """Append "Is there a X?" -> "Yes, ..." pairs about GT objects until the target is met.

    ``convs``: each long-answer conversation's constructed pairs (appended to in place) with
    its image's :class:`Scene`. Visits the conversations in a random order, one new object per
    conversation and round, while any is left to ask about. Returns how many were added.
    """
    yes, no = yes_no_counts(qas for qas, _ in convs)
    if target >= 1 or target <= 0 or yes_ratio(yes, no) is None or yes_ratio(yes, no) >= target:
        return 0
    need = math.ceil((target * (yes + no) - yes) / (1 - target) - 1e-9)
    order = list(range(len(convs)))
    rng.shuffle(order)
    added = 0
    progress = True
    while added < need and progress:
        progress = False
        for i in order:
            if added >= need:
                break
            qas, scene = convs[i]
            asked = {q.object for q in qas if q.kind in ("exists_yes", "exists_no")}
            for cat in scene.present:
                if cat not in asked:
                    qas.append(exists_qa(cat, False, scene.count(cat)))
                    added += 1
                    progress = True
                    break
    return added
