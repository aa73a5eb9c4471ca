"""Hallucination benchmarks: CHAIR, POPE, caption metrics and LLM judges (MMHal, nSFT in-domain);
``visalign.eval.registry`` / ``protocol_suite`` run the real benchmarks with their papers'
protocols.

Every evaluation returns (and the ``visalign eval`` commands write) the shared result format:
``{"metrics": {...}, ...details}`` with fractions in [0, 1].
"""

from visalign.eval.captions import caption_metrics, load_captions, load_references
from visalign.eval.chair import Chair, Mention, load_synonyms
from visalign.eval.chair_lemma import ChairLemma
from visalign.eval.judge import JudgeClient, JudgeConfig, JudgeError, judge_records
from visalign.eval.pope import build_pope, parse_yes_no, score_pope

__all__ = [
    "Chair", "ChairLemma", "Mention", "load_synonyms",
    "build_pope", "score_pope", "parse_yes_no",
    "caption_metrics", "load_captions", "load_references",
    "JudgeClient", "JudgeConfig", "JudgeError", "judge_records",
]
