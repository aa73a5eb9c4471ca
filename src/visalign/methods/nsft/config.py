"""Settings of nSFT data construction: :class:`NsftDataConfig` (``visalign nsft build``'s
key=value options) and the tasks whose answers count as short (Sec. B.1)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from visalign.config import field
from visalign.eval.judge import JudgeConfig

# Tasks whose answers are short, the analogue of the paper's OCRVQA (Sec. B.1).
SHORT_TASKS = ["vqa", "count", "color", "position", "existence", "yesno"]


@dataclasses.dataclass
class NsftDataConfig:
    """Settings of nSFT data construction (``visalign nsft build``)."""

    judge: str = field("annotation", help="error judge: 'annotation' (offline) or 'llm' (Fig. 9)")
    seed: int = field(0, help="seed of the yes/no balancing RNG")
    short_tasks: list[str] = field(SHORT_TASKS, help="tasks whose answers are short (doubled "
                                                     "QA pairs, Sec. B.1)")
    short_max_words: int = field(3, help="records without 'task': short iff the GT answer has "
                                         "at most this many words")
    keep_gt_short: bool = field(True, help="append the doubled pairs to the GT conversation "
                                           "(Sec. B.1: unstable without it)")
    keep_gt_long: bool = field(False, help="prepend the GT conversation to long-answer "
                                           "conversations (Table 6: not needed)")
    n_pairs: int = field(5, help="target QA pairs per long-answer conversation (Sec. B.1); "
                                 "fewer when the LLM reply has fewer, the scene offers no more "
                                 "questions or balancing erases pairs (report: "
                                 "conversations_under_n_pairs)")
    max_answer_tokens: int = field(20, help="answers are cut to this many whitespace tokens "
                                            "(Fig. 9 guideline 4)")
    max_is_are_share: float = field(0.6, help="at most this share of a long conversation's "
                                              "questions start with Is/Are (Fig. 9 guideline 6)")
    yes_ratio_target: float = field(0.5, help="minimum share of 'Yes' among the yes/no answers "
                                              "of long-answer conversations, reached by erasing "
                                              "random 'No' pairs (Sec. C.5); a share already at "
                                              "or above it is left alone (nothing erased or "
                                              "added); <= 0 disables")
    add_yes_pairs: bool = field(False, help="also append GT-grounded 'Yes' pairs when erasing "
                                            "'No' pairs cannot reach the minimum Yes share")
    yes_about: Literal["near", "unnamed"] = field(
        "near", help="present objects the template conversations ask 'Yes' questions about "
        "first: 'near' = the one at a hallucination's place, else the most frequent; "
        "'unnamed' = ones the answer did not name, so that 'Yes' is taught where the model is "
        "unsure (not in the paper; off by default: on the micro-world it did not stop the "
        "lean to 'No', docs/research/nsft-on-the-micro-world.md)")
    relation_margin: float = field(0.0625, help="relative positions: a claim is wrong only when "
                                                "the centres are at least this fraction of the "
                                                "image width the other way")
    # LLM judge endpoint, model, cache and retries: the shared JudgeClient settings.
    llm: JudgeConfig = dataclasses.field(
        default_factory=JudgeConfig,
        metadata={"help": "JudgeClient settings for judge=llm (llm.model=..., llm.base_url=...,"
                          " llm.cache_dir=...; API key from $VISALIGN_JUDGE_API_KEY)"})
    # Generation of the original answers (--model).
    max_new_tokens: int = field(256, help="generation length of the original answers")
    batch_size: int = field(8, help="generation batch size")
    dtype: str = field("float32", help="model dtype for generation")
    device: str = field("auto", help="device for generation (auto = cuda when available)")
