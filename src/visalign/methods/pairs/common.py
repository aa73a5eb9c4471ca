"""The pair file, the settings of ``visalign pairs <method>`` and what every pair builder shares.

The DPO trainer (:mod:`visalign.methods.dpo`) reads one format, whatever produced it, so
external preference datasets (VLFeedback, RLHF-V, ...) can be converted into it and trained the
same way.

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

Builders take LLaVA records (their first exchange gives the prompt and the ground truth) and
answers as an ``{id: answer}`` mapping or rows of ``id`` + ``answer`` (:func:`answer_map`);
:func:`make_pair` writes one pair and :func:`normalize_response` decides when two responses
are the same (such pairs teach nothing and are skipped).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from visalign.config import field
from visalign.data.llava import strip_image
from visalign.eval.judge import JudgeConfig
from visalign.io import DataError, read_records, write_json, write_jsonl

__all__ = ["METHODS", "PairsConfig", "normalize_response", "validate_pairs", "load_pairs",
           "write_pairs", "answer_map", "rejected_image_map", "make_pair", "check_record"]

METHODS = ("gt-dpo", "seva", "sima", "povid")


@dataclasses.dataclass
class PairsConfig:
    """Settings of ``visalign pairs <method>``."""

    seed: int = field(0, help="seed (noise, sampling, POVID edits)")
    max_new_tokens: int = field(256, help="generation length")
    batch_size: int = field(8, help="generation batch size")
    dtype: str = field("float32", help="model dtype")
    device: str = field("auto", help="device of the model and its generation (auto = cuda when "
                                     "available)")
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

def answer_map(answers: Any, what: str) -> dict[str, str]:
    """``{id: answer}`` from a mapping or answer records (``id`` + ``answer``); ``what`` names
    the answers in errors."""
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


def rejected_image_map(answers: Any, given: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{id: image}`` of the noised images rejected answers came from: ``given``, then the
    ``image`` of answer rows (an ``{id: answer}`` mapping carries none)."""
    out = dict(given or {})
    if answers is not None and not isinstance(answers, Mapping):
        for a in answers:
            if isinstance(a.get("image"), str):
                out.setdefault(str(a["id"]), a["image"])
    return out


def make_pair(record: Mapping, prompt: str, chosen: str, rejected: str, meta: dict,
              suffix: str = "") -> dict:
    """One pair on ``record``'s image; its id is the record's plus ``suffix``."""
    p = {"id": f"{record['id']}{suffix}", "image": record["image"], "prompt": prompt,
         "chosen": chosen.strip(), "rejected": rejected.strip()}
    if record.get("image_id") is not None:
        p["image_id"] = record["image_id"]
    p["meta"] = meta
    return p


def check_record(record: Any, i: int) -> None:
    """Raise ``DataError`` unless record ``i`` is a mapping with ``id`` and ``image``."""
    if not isinstance(record, Mapping) or "id" not in record or "image" not in record:
        raise DataError(None, "LLaVA records need 'id' and 'image'", record=i, field="id")
