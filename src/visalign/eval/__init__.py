"""Hallucination benchmarks: CHAIR, POPE, caption metrics and LLM judges (MMHal, nSFT in-domain);
``visalign.eval.registry`` / ``protocol_suite`` run the real benchmarks with their papers'
protocols.

Every evaluation returns (and the ``visalign eval`` commands write) the shared result format:
``{"metrics": {...}, ...details}`` with fractions in [0, 1].
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use: a command that needs one scorer (``visalign eval chair``
# starts in well under a second) does not pay for the judge's client or the others.
_EXPORTS = {
    "Chair": "chair", "Mention": "chair", "load_synonyms": "chair",
    "ChairLemma": "chair_lemma",
    "build_pope": "pope", "score_pope": "pope", "parse_yes_no": "pope",
    "caption_metrics": "captions", "load_captions": "captions", "load_references": "captions",
    "JudgeClient": "judge", "JudgeConfig": "judge", "JudgeError": "judge",
    "judge_records": "judge",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        try:  # a submodule used as an attribute (visalign.eval.judge)
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
