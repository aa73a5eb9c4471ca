"""GT-DPO pairs: chosen = the ground-truth answer, rejected = the model's greedy answer.

The GT-DPO baseline of the nSFT paper: DPO with the annotation as the preferred response and
the model's own answer to the same question as the dispreferred one. The greedy answers are
given (:func:`visalign.methods.pairs.build.build_method_pairs` generates them with a model).
Pairs whose two responses are the same after :func:`~visalign.methods.pairs.common
.normalize_response` teach nothing and are skipped, as are records without an answer or with an
empty one; the stats count and list each.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from visalign.data.llava import first_exchange
from visalign.methods.pairs.common import answer_map, check_record, make_pair, normalize_response

__all__ = ["build_gt_dpo_pairs"]


def build_gt_dpo_pairs(records: Sequence[Mapping], answers: Any) -> tuple[list[dict], dict]:
    """chosen = GT answer, rejected = the model's greedy answer (skip identical; count)."""
    amap = answer_map(answers, "answers")
    pairs, identical, missing, empty = [], [], [], []
    for i, rec in enumerate(records):
        check_record(rec, i)
        prompt, gt_answer = first_exchange(rec, i)
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
        pairs.append(make_pair(rec, prompt, gt_answer, amap[rid], {"method": "gt-dpo"}))
    return pairs, {"method": "gt-dpo", "n_records": len(records), "n_pairs": len(pairs),
                   "skipped_identical": len(identical), "skipped_identical_ids": identical,
                   "skipped_no_answer": len(missing), "skipped_no_answer_ids": missing,
                   "skipped_empty": len(empty), "skipped_empty_ids": empty}
