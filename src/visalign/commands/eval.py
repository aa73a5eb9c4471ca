"""visalign eval chair|pope|captions|judge|amber|lmms: score generated answers, write JSON +
markdown; visalign eval suite: generate and score the real benchmarks
(visalign.commands._eval_suite).

Each scorer writes --out result.json (the shared result format) and result.md next to it.
"""

from __future__ import annotations

import argparse
import sys

from visalign.commands._common import add_config_args


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command group."""
    p = subparsers.add_parser("eval", help="hallucination benchmarks: chair, pope, captions, "
                                           "judge, amber, lmms, suite", description=__doc__)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")

    c = sub.add_parser("chair", help="CHAIR_s / CHAIR_i object hallucination of captions")
    c.add_argument("--captions", required=True,
                   help="JSONL/JSON of {image_id, caption} (or visalign generate answers)")
    c.add_argument("--instances", required=True, help="COCO instances JSON")
    c.add_argument("--coco-captions", default=None,
                   help="COCO captions JSON; objects its human captions mention count as "
                        "ground truth (as in the reference CHAIR)")
    c.add_argument("--synonyms", default=None,
                   help="synonym table (default: the packaged 80-category COCO table)")
    c.add_argument("--variant", choices=["reference", "lemma", "pattern"], default="reference",
                   help="reference: chair.py's semantics with inflect's singular forms (default); "
                        "pattern: chair.py exactly, Pattern's singular forms and NLTK's tokenizer "
                        "(packaged table only); lemma: OPERA / less-is-more / PAI")
    c.add_argument("--out", required=True, help="result JSON path")
    c.add_argument("--no-cache", action="store_true",
                   help="parse the annotation files every time (default: reuse their parsed "
                        "index, cached by content next to --instances or in the user cache "
                        "dir; the scores are the same)")
    c.add_argument("--cache-dir", default=None,
                   help="where to keep the annotation index cache (default: "
                        ".visalign-cache/ next to --instances, else the user cache dir)")
    c.add_argument("--debug", action="store_true", help="show full tracebacks")
    c.set_defaults(func=_chair)

    q = sub.add_parser("pope", help="POPE accuracy / precision / recall / F1 / yes-ratio")
    q.add_argument("--questions", required=True, help="questions JSONL from `visalign pope "
                                                      "build`")
    q.add_argument("--answers", required=True, help="answers JSONL: question_id + answer")
    q.add_argument("--split", default=None,
                   help="split name for the metric keys (default: the questions' split field)")
    q.add_argument("--out", required=True, help="result JSON path")
    q.add_argument("--debug", action="store_true", help="show full tracebacks")
    q.set_defaults(func=_pope)

    k = sub.add_parser("captions", help="BLEU-1..4, ROUGE-L, CIDEr, METEOR (pycocoevalcap)")
    k.add_argument("--captions", required=True,
                   help="JSONL/JSON of {image_id, caption} (or visalign generate answers)")
    k.add_argument("--coco-captions", required=True, help="COCO captions JSON (references)")
    k.add_argument("--no-meteor", action="store_true", help="skip METEOR (slow JVM start)")
    k.add_argument("--tokenizer", choices=["auto", "ptb", "python"], default="auto",
                   help="auto: Stanford PTB when Java is present, else the Python fallback")
    k.add_argument("--out", required=True, help="result JSON path")
    k.add_argument("--debug", action="store_true", help="show full tracebacks")
    k.set_defaults(func=_captions)

    j = sub.add_parser(
        "judge", help="LLM judge: MMHal-Bench rating or the nSFT in-domain scores",
        description="Judge answers with an OpenAI-compatible endpoint. Settings: --config YAML "
                    "and key=value overrides of JudgeConfig, or the environment "
                    "(VISALIGN_JUDGE_BASE_URL, VISALIGN_JUDGE_MODEL, VISALIGN_JUDGE_API_KEY, "
                    "falling back to OPENAI_BASE_URL / OPENAI_API_KEY). Record fields: see "
                    "visalign.eval.judge.")
    j.add_argument("--kind", required=True, choices=["mmhal", "indomain"])
    j.add_argument("--records", required=True,
                   help="mmhal: MMHal-Bench's response_template.json with model_answer "
                        "filled in (or records with id, question, gt_answer, image_content); "
                        "indomain: id, question, caption")
    j.add_argument("--answers", default=None,
                   help="answers JSONL (id + answer); default: answers inside --records")
    j.add_argument("--id-key", default=None,
                   help="id field joining records and answers (default: question_id if "
                        "present, else id)")
    j.add_argument("--model", default=None, help="judge model (overrides config/env)")
    j.add_argument("--base-url", default=None, help="endpoint base URL (overrides config/env)")
    j.add_argument("--cache-dir", default=None, help="judge cache directory")
    j.add_argument("--workers", type=int, default=None, help="concurrent requests")
    j.add_argument("--out", required=True, help="result JSON path")
    add_config_args(j)
    j.set_defaults(func=_judge)

    from visalign.commands import _eval_amber, _eval_suite

    _eval_amber.register(sub)  # amber, lmms
    _eval_suite.add_parser(sub)


def _print(result: dict, title: str, paths: tuple) -> None:
    from visalign.report import metrics_markdown

    print(metrics_markdown(result["metrics"], title))
    print(f"wrote {paths[0]} and {paths[1]}")


def _chair(args: argparse.Namespace) -> int:
    from visalign.eval.captions import load_captions
    from visalign.eval.chair import load_synonyms
    from visalign.eval.chair_lemma import chair_class
    from visalign.report import write_result

    if args.variant == "pattern" and args.synonyms:
        raise ValueError("--variant pattern matches the packaged COCO table only: drop "
                         "--synonyms")
    synonyms = None if args.variant == "pattern" else load_synonyms(args.synonyms)
    cls = chair_class(args.variant)
    cache = False if args.no_cache else (args.cache_dir or True)
    chair = cls.from_coco(args.instances, args.coco_captions, synonyms, cache=cache)
    result = chair.evaluate(load_captions(args.captions), path=args.captions)
    result["inputs"] = {"captions": args.captions, "instances": args.instances,
                        "coco_captions": args.coco_captions,
                        "synonyms": args.synonyms or "packaged COCO table",
                        "variant": args.variant,
                        "index_cache": str(chair.index_path) if chair.index_path else None}
    notes = [] if args.coco_captions else [
        "ground truth from instances only (no --coco-captions): the reference CHAIR also "
        "counts objects named in the human captions"]
    paths = write_result(args.out, result, "CHAIR", notes)
    _print(result, "CHAIR", paths)
    return 0


def _pope(args: argparse.Namespace) -> int:
    from visalign.eval.pope import score_pope
    from visalign.report import write_result
    from visalign.io import read_records

    result = score_pope(read_records(args.questions), read_records(args.answers), args.split,
                        questions_path=args.questions, answers_path=args.answers)
    result["inputs"] = {"questions": args.questions, "answers": args.answers}
    paths = write_result(args.out, result, "POPE")
    _print(result, "POPE", paths)
    return 0


def _captions(args: argparse.Namespace) -> int:
    from visalign.eval.captions import caption_metrics, load_captions, load_references
    from visalign.report import write_result

    result = caption_metrics(load_captions(args.captions), load_references(args.coco_captions),
                             meteor=not args.no_meteor, tokenizer=args.tokenizer,
                             path=args.captions)
    notes = list(result["notes"]) + [f"tokenizer: {result['tokenizer']}"]
    if result["meteor_skipped"]:
        notes.append(f"METEOR skipped: {result['meteor_skipped']}")
    result["inputs"] = {"captions": args.captions, "coco_captions": args.coco_captions}
    paths = write_result(args.out, result, "Caption metrics", notes)
    _print(result, "Caption metrics", paths)
    return 0


def _judge(args: argparse.Namespace) -> int:
    from visalign.config import load_config
    from visalign.eval.judge import JudgeClient, JudgeConfig, JudgeError, judge_records
    from visalign.report import write_result
    from visalign.io import read_records

    cfg = load_config(JudgeConfig, args.config, args.overrides)
    if args.model:
        cfg.model = args.model
    if args.base_url:
        cfg.base_url = args.base_url
    if args.cache_dir:
        cfg.cache_dir = args.cache_dir
    if args.workers is not None:
        cfg.workers = args.workers
    try:
        client = JudgeClient(cfg)
        result = judge_records(
            args.kind, client, read_records(args.records),
            read_records(args.answers) if args.answers else None, id_key=args.id_key,
            records_path=args.records, answers_path=args.answers)
    except JudgeError as e:
        if args.debug:
            raise
        print(f"visalign eval judge: error: {e}", file=sys.stderr)
        return 2
    result["inputs"] = {"records": args.records, "answers": args.answers}
    notes = [f"judge model: {result['judge']['model']}"] + list(result.get("notes", []))
    if result["metrics"]["judge_unparsed"]:
        notes.append(f"{result['metrics']['judge_unparsed']} judge replies could not be parsed"
                     + (" and are scored 0, as MMHal-Bench's reference does"
                        if args.kind == "mmhal" else " and are excluded from the means"))
    title = "MMHal-Bench judge" if args.kind == "mmhal" else "nSFT in-domain judge"
    paths = write_result(args.out, result, title, notes)
    _print(result, title, paths)
    for n in notes:
        print(f"- {n}")
    return 0
