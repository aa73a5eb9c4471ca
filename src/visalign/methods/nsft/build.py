"""The nSFT data build (:func:`build_nsft_data`): judge each record's original answer, turn the
mistakes into corrective conversations (template or LLM-written for long answers, doubled QA
pairs for short ones, Sec. B.1), balance yes/no (Sec. C.5), and write LLaVA records plus a
construction report; :func:`model_answers` generates the original answers (Sec. B.1: greedy),
:func:`report_markdown` renders the report."""

from __future__ import annotations

import dataclasses
import os
import random
from collections import Counter
from typing import Any, Mapping, Sequence

from visalign.data.llava import first_exchange, strip_image
from visalign.io import DataError
from visalign.methods.nsft.answers import doubled_pairs, is_short
from visalign.methods.nsft.balance import (add_yes_pairs, balance_yes_no, is_doubled,
                                           yes_no_counts, yes_ratio)
from visalign.methods.nsft.codebook import CATEGORY_KEYS, CODEBOOK, UNSPECIFIED
from visalign.methods.nsft.config import NsftDataConfig
from visalign.methods.nsft.dialogue import (Scene, clip_words, limit_is_are,
                                            template_conversation)
from visalign.methods.nsft.ground_truth import GroundTruth
from visalign.methods.nsft.llm_judge import LLMParseError
from visalign.methods.nsft.records import QA, Error, JudgeSkip, Verdict


@dataclasses.dataclass
class _Built:
    """A record whose answer had errors, with the conversation built for it so far."""

    record: dict
    short: bool
    errors: list[Error]
    gt_qas: list[QA]
    qas: list[QA]
    scene: Scene


def _answers_map(answers: Any) -> dict[str, str]:
    if isinstance(answers, Mapping):
        return {str(k): v for k, v in answers.items()}
    out: dict[str, str] = {}
    for i, a in enumerate(answers):
        if "id" not in a or not isinstance(a.get("answer"), str):
            raise DataError(None, "answer records need 'id' and a string 'answer'",
                            record=i, field="answer")
        out[str(a["id"])] = a["answer"]
    return out


def _gt_qas(record: Mapping) -> list[QA]:
    out, q = [], None
    for turn in record["conversations"]:
        if turn.get("from") == "human":
            q = strip_image(turn["value"])
        elif turn.get("from") == "gpt" and q is not None:
            out.append(QA(q, turn["value"], "gt", gt=True))
            q = None
    return out


def _render(b: _Built, judge_name: str) -> dict:
    turns: list[dict] = []
    for i, qa in enumerate(b.gt_qas + b.qas):
        q = f"<image>\n{qa.question}" if i == 0 else qa.question
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": qa.answer}]
    rec = {"id": f"{b.record['id']}_nsft", "image": b.record["image"]}
    for k in ("image_id", "task"):
        if k in b.record:
            rec[k] = b.record[k]
    rec["conversations"] = turns
    rec["nsft"] = {"source_id": b.record["id"], "judge": judge_name,
                   "errors": [dataclasses.asdict(e) for e in b.errors]}
    return rec


def build_nsft_data(records: Sequence[dict], answers: Any, gt: GroundTruth | None,
                    cfg: NsftDataConfig, judge: Any) -> tuple[list[dict], dict]:
    """Build nSFT conversations from ``records`` (LLaVA) and the model's ``answers``.

    ``answers``: ``{id: answer}`` or answer records (``id`` + ``answer``). ``judge``: a
    :class:`Judge`. Returns (LLaVA records, construction report); see :mod:`visalign.methods.nsft`.
    """
    amap = _answers_map(answers)
    rng = random.Random(cfg.seed)
    if hasattr(judge, "prefetch"):
        for i, r in enumerate(records):
            first_exchange(r, i)  # bad records fail here, naming the record, before any request
        judge.prefetch([(r, amap[str(r["id"])]) for r in records
                        if str(r.get("id")) in amap], gt)
    built: list[_Built] = []
    skipped: list[dict] = []
    no_error: list[str] = []
    image_errors: dict[str, bool] = {}   # judged image -> any error found in its records
    unparsed: list[str] = []
    truncated = 0
    n_short = n_long = 0
    for i, rec in enumerate(records):
        if "id" not in rec or "image" not in rec:
            raise DataError(None, "LLaVA records need 'id' and 'image'", record=i,
                            field="id" if "id" not in rec else "image")
        rid = str(rec["id"])
        question, gt_answer = first_exchange(rec, i)
        if rid not in amap:
            skipped.append({"id": rid, "reason": "no answer for this id"})
            continue
        answer = amap[rid]
        try:
            if hasattr(judge, "review"):
                verdict = judge.review(rec, answer, gt)
            else:
                verdict = Verdict(judge(rec, answer, gt))
        except JudgeSkip as e:
            skipped.append({"id": rid, "reason": f"{e.reason}: {e}"})
            if isinstance(e, LLMParseError):
                unparsed.append(rid)
            continue
        if not verdict.errors:
            no_error.append(rid)
            image_errors.setdefault(str(rec["image"]), False)
            continue
        image_errors[str(rec["image"])] = True
        short = is_short(rec, cfg)
        image_id = gt.image_id_for(rec) if gt is not None else None
        scene = Scene(gt, image_id)
        if short:
            e = verdict.errors[0]
            if not e.wrong.strip():
                skipped.append({"id": rid, "reason": "empty_answer: no wrong answer to ask "
                                                     "'Is the answer ...?' about"})
                continue
            n_short += 1
            qas = doubled_pairs(question, e.wrong, e.right if e.right is not None else gt_answer)
            gt_qas = _gt_qas(rec) if cfg.keep_gt_short else []
        else:
            n_long += 1
            if verdict.qa_pairs is not None:
                qas = [QA(q, a, "llm") for q, a in verdict.qa_pairs[: cfg.n_pairs]]
            else:
                named = ({m.category for m in gt.mentions(answer)}
                         if cfg.yes_about == "unnamed" and gt is not None else None)
                qas = template_conversation(verdict.errors, scene, cfg.n_pairs, named)
            for qa in qas:
                clipped = clip_words(qa.answer, cfg.max_answer_tokens)
                truncated += clipped != qa.answer.strip()
                qa.answer = clipped
            gt_qas = _gt_qas(rec) if cfg.keep_gt_long else []
        if not qas:
            skipped.append({"id": rid, "reason": "errors found but no definite corrective "
                                                 "question could be built"})
            continue
        built.append(_Built(rec, short, verdict.errors, gt_qas, qas, scene))

    # Sec. C.5: balance yes/no over the constructed pairs, then the Is/Are share (guideline 6)
    # on what is left, so erasing cannot push a conversation back over the limit.
    yes0, no0 = yes_no_counts(b.qas for b in built)
    dyes, dno = yes_no_counts((b.qas for b in built), is_doubled)
    bal = balance_yes_no([b.qas for b in built], cfg.yes_ratio_target, rng)
    added = (add_yes_pairs([(b.qas, b.scene) for b in built if not b.short],
                           cfg.yes_ratio_target, rng) if cfg.add_yes_pairs else 0)
    yes1, no1 = yes_no_counts(b.qas for b in built)
    rephrased = sum(limit_is_are(b.qas, cfg.max_is_are_share) for b in built if not b.short)

    out = [_render(b, getattr(judge, "name", type(judge).__name__)) for b in built]
    per_cat = {k: 0 for k in CATEGORY_KEYS}
    per_cat[UNSPECIFIED] = 0
    per_level = {"instance": 0, "image": 0}
    for b in built:
        for e in b.errors:
            per_cat[e.category] = per_cat.get(e.category, 0) + 1
            if e.level in per_level:
                per_level[e.level] += 1
    long_checked = set(getattr(judge, "checkable_categories", CATEGORY_KEYS))
    short_checked = set(getattr(judge, "short_answer_categories", ()))
    # Three disjoint lists covering the codebook: a category the judge tags short answers with
    # is checked (against the GT answer) even when long answers cannot show it, so it must not
    # be listed as unchecked next to its error count.
    checkable = sorted(long_checked | short_checked)
    short_only = [k for k in CATEGORY_KEYS if k in short_checked and k not in long_checked]
    reasons = Counter(s["reason"].split(":")[0] for s in skipped)
    notes = judge.notes(gt) if hasattr(judge, "notes") else []
    report = {
        "judge": getattr(judge, "name", type(judge).__name__),
        "checkable_categories": checkable,
        # Subset of checkable_categories: checked for short answers (vs. the GT answer) only.
        "checked_short_answers_only": short_only,
        "unchecked_categories": [k for k in CATEGORY_KEYS if k not in checkable],
        "checks_skipped": notes,
        "n_records": len(records),
        "n_judged": len(records) - len(skipped),
        "n_with_errors": len(built),
        "n_no_error": len(no_error),
        # Images whose judged records all came back without an error.
        "n_images_judged": len(image_errors),
        "n_images_no_error": sum(not e for e in image_errors.values()),
        "no_error_ids": no_error,
        "n_output": len(out),
        "tasks": {"short": n_short, "long": n_long},
        "errors_per_category": per_cat,
        "errors_per_level": per_level,
        "skipped": {"count": len(skipped), "by_reason": dict(reasons), "records": skipped},
        "llm_unparsed": len(unparsed),
        "llm_unparsed_ids": unparsed,
        "yes_no": {
            # A minimum "Yes" share: balancing only erases "No" pairs (see balance_yes_no).
            "target": cfg.yes_ratio_target,
            "before": {"yes": yes0, "no": no0, "yes_ratio": yes_ratio(yes0, no0)},
            "after": {"yes": yes1, "no": no1, "yes_ratio": yes_ratio(yes1, no1)},
            "erased_no_pairs": bal["erased"], "added_yes_pairs": added,
            # True: the share was at or above the target before balancing, so it was left as
            # is (a 0.79 share with target 0.5 stays 0.79; nothing is erased or added).
            "already_above_target": bal["already_above"],
            # Doubled pairs of short answers: outside the balancing (see balance_yes_no).
            "doubled": {"yes": dyes, "no": dno},
            "reached": (yes_ratio(yes1, no1) is None or cfg.yes_ratio_target <= 0
                        or yes_ratio(yes1, no1) >= cfg.yes_ratio_target - 1e-12),
        },
        "is_are": {"max_share": cfg.max_is_are_share, "rephrased": rephrased},
        "answers_truncated": truncated,
        # n_pairs is a target: short LLM replies, small scenes and balancing leave fewer.
        "n_pairs": cfg.n_pairs,
        "conversations_under_n_pairs": sum(1 for b in built if not b.short
                                           and len(b.qas) < cfg.n_pairs),
        "keep_gt": {"short": cfg.keep_gt_short, "long": cfg.keep_gt_long},
    }
    return out, report


def model_answers(model: Any, records: Sequence[dict], answers_path: str | os.PathLike,
                  cfg: NsftDataConfig, *, image_root: str | os.PathLike) -> list[dict]:
    """Step 1, the model's original (greedy) answers to ``records``: generated into
    ``answers_path`` (JSONL, resumable) with ``cfg``'s generation settings, then read back.

    ``model``: a model dir/hub id or a loaded :class:`visalign.models.VLM`; ``image_root``: the
    dir relative image paths start from.
    """
    from visalign.io import read_jsonl
    from visalign.models.generation import GenerationConfig, generate_answers

    gcfg = GenerationConfig(batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                            image_root=str(image_root), dtype=cfg.dtype, device=cfg.device)
    generate_answers(model, records, answers_path, cfg=gcfg)
    return read_jsonl(answers_path, tolerate_partial_last_line=True)


def report_markdown(report: Mapping) -> str:
    """The construction report as a short Markdown page."""
    yn = report["yes_no"]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    lines = [
        "# nSFT construction report", "",
        f"- judge: `{report['judge']}`",
        f"- records: {report['n_records']} (judged {report['n_judged']}, with errors "
        f"{report['n_with_errors']}, without errors {report['n_no_error']}, skipped "
        f"{report['skipped']['count']})",
        f"- images: {report['n_images_judged']} judged, {report['n_images_no_error']} without "
        f"any error",
        f"- conversations written: {report['n_output']} (short {report['tasks']['short']}, "
        f"long {report['tasks']['long']})",
        f"- LLM replies unparsed: {report['llm_unparsed']}",
        f"- yes ratio: {pct(yn['before']['yes_ratio'])} -> {pct(yn['after']['yes_ratio'])} "
        f"(minimum target {yn['target']}, erased {yn['erased_no_pairs']} 'No' pairs, added "
        f"{yn['added_yes_pairs']} 'Yes' pairs, reached: {yn['reached']}"
        f"{'; already at or above the target, left as is' if yn['already_above_target'] else ''})",
        f"- long-answer conversations under the target of {report['n_pairs']} pairs: "
        f"{report['conversations_under_n_pairs']}",
        f"- questions rephrased for the Is/Are limit: {report['is_are']['rephrased']}; answers "
        f"cut to the token limit: {report['answers_truncated']}", "",
        "## Errors per vision-error-codebook category (Fig. 9)", "",
        "| level | category | errors | checked by this judge |", "|---|---|---:|---|",
    ]
    checkable = set(report["checkable_categories"])
    short_only = set(report["checked_short_answers_only"])
    for c in CODEBOOK:
        checked = ("short answers only" if c.key in short_only else
                   "yes" if c.key in checkable else "no (unchecked)")
        lines.append(f"| {c.level} | {c.name} | {report['errors_per_category'].get(c.key, 0)} "
                     f"| {checked} |")
    if report["errors_per_category"].get(UNSPECIFIED):
        lines.append(f"| - | unspecified | {report['errors_per_category'][UNSPECIFIED]} | - |")
    if report["checks_skipped"]:
        lines += ["", "## Checks skipped on this ground truth", ""]
        lines += [f"- {n}" for n in report["checks_skipped"]]
    if report["skipped"]["records"]:
        lines += ["", "## Skipped records", "", "| id | reason |", "|---|---|"]
        lines += [f"| {s['id']} | {s['reason']} |" for s in report["skipped"]["records"]]
    return "\n".join(lines) + "\n"


def write_nsft_data(cfg: NsftDataConfig, data: str | os.PathLike, out: str | os.PathLike, *,
                    image_root: str | os.PathLike | None = None, model: Any = None,
                    answers: str | os.PathLike | None = None,
                    instances: str | os.PathLike | None = None,
                    captions: str | os.PathLike | None = None,
                    synonyms: str | os.PathLike | None = None) -> dict:
    """``visalign nsft build`` as a function: judge a model's answers to ``data`` and write
    ``out/nsft.json`` (LLaVA conversations), ``report.json`` / ``report.md`` and
    ``config.yaml``; returns the report.

    The answers come from ``model`` (generated greedily into ``out/answers.jsonl``, resumable)
    or from an ``answers`` JSONL. The judge is ``cfg.judge``: ``annotation`` needs
    ``instances`` (COCO), ``llm`` an endpoint (``cfg.llm``). Settings and endpoint failures are
    :class:`~visalign.config.ConfigError` lines, raised before any generation where possible;
    relative image paths start at ``image_root`` (default: the data file's directory).
    """
    from pathlib import Path

    from visalign.config import ConfigError, save_run_config
    from visalign.eval.judge import JudgeError
    from visalign.io import atomic_write_text, read_jsonl, read_records, write_json
    from visalign.methods.nsft.annotation_judge import AnnotationJudge
    from visalign.methods.nsft.llm_judge import LLMJudge

    if (model is None) == (answers is None):
        raise ConfigError("nsft build needs exactly one of a model and an answers file")
    if cfg.judge not in ("annotation", "llm"):
        raise ConfigError(f"judge must be 'annotation' or 'llm', got {cfg.judge!r}")
    if cfg.judge == "annotation" and not instances:
        raise ConfigError("--judge annotation needs --instances (COCO instances JSON)")
    try:  # judge settings are checked before any (long) generation
        judge = AnnotationJudge(cfg) if cfg.judge == "annotation" else LLMJudge(cfg=cfg)
    except JudgeError as e:
        raise ConfigError(f"LLM judge: {e}") from None
    records = read_records(data)
    image_root = str(image_root or Path(data).parent)
    gt = GroundTruth.from_files(instances, captions, synonyms) if instances else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model is not None:
        answers_path = out / "answers.jsonl"
        got = model_answers(model, records, answers_path, cfg, image_root=image_root)
    else:
        answers_path = Path(answers)
        got = read_jsonl(answers_path, tolerate_partial_last_line=True)
    try:
        built, report = build_nsft_data(records, got, gt, cfg, judge)
    except JudgeError as e:
        # Settings or endpoint failures: one line (replies so far are cached; a re-run resumes).
        raise ConfigError(f"LLM judge: {e}") from None
    report["inputs"] = {"data": str(data), "image_root": image_root,
                        "answers": str(answers_path),
                        "model": model if model is None or isinstance(model, str) else str(model),
                        "instances": None if instances is None else str(instances),
                        "coco_captions": None if captions is None else str(captions),
                        "synonyms": None if synonyms is None else str(synonyms)}
    if hasattr(judge, "client") and hasattr(judge.client, "stats"):
        report["judge_client"] = dict(judge.client.stats)
    write_json(out / "nsft.json", built)
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    save_run_config(cfg, out)
    return report
