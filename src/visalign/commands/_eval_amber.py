"""visalign eval amber | lmms: AMBER scored as its inference.py, and the alignment tax through
lmms-eval (registered under ``visalign eval`` by :mod:`visalign.commands.eval`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``amber`` and ``lmms`` to the ``eval`` subcommands."""
    a = sub.add_parser(
        "amber", help="AMBER: CHAIR/Cover/Hal/Cog, yes/no F1 per dimension, AMBER score",
        description="Score AMBER responses as AMBER's inference.py does. OUT.json keeps its "
                    "percent scale and rounding; its 'metrics' are the amber_* fractions.")
    a.add_argument("--answers", required=True, nargs="+", metavar="FILE",
                   help='responses in AMBER\'s format, [{"id": n, "response": "..."}] (or '
                        "visalign generate answers), together one of its query sets")
    a.add_argument("--amber-dir", required=True,
                   help="AMBER's data folder (annotations.json, relation.json, safe_words.txt)")
    a.add_argument("--similarity", choices=["spacy", "exact"], default="spacy",
                   help="near-synonym test: spacy (en_core_web_lg similarity > 0.8, the "
                        "reference; default) or exact (word equality, no spaCy)")
    a.add_argument("--answer-mode", choices=["exact", "first-word"], default="exact",
                   help="yes/no answers: exact (only 'Yes'/'No' count, the reference; default) "
                        "or first-word (a leading yes/no word counts)")
    a.add_argument("--query-set", default=None,
                   choices=["all", "generative", "discriminative", "existence", "attribute",
                            "relation"],
                   help="the query set the responses answer (default: inferred from the ids)")
    a.add_argument("--nltk-data", default=None,
                   help="folder with NLTK's punkt_tab and averaged_perceptron_tagger_eng "
                        "(searched before NLTK's data path)")
    a.add_argument("--wordnet", default=None,
                   help="WordNet database dir (default: NLTK's wordnet, then /usr/share/wordnet)")
    a.add_argument("--out", required=True, help="result JSON path (a .md summary beside it)")
    a.add_argument("--debug", action="store_true", help="show full tracebacks")
    a.set_defaults(func=_amber)

    m = sub.add_parser(
        "lmms", help="alignment tax (SQA-IMG, GQA, TextVQA, MME, MMBench, MM-Vet) via lmms-eval",
        description="Run lmms-eval tasks on a visalign model dir (merged or LoRA adapter) "
                    "through lmms-eval's Python API, or read an lmms-eval results file, and "
                    "write the lmms_* metrics; --merge-into adds them to a results.json row. "
                    "Needs the optional extra: pip install 'visalign[lmms]'.")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model dir (merged) or LoRA adapter dir")
    src.add_argument("--from-results",
                     help="an lmms-eval results JSON (its --output_path file) to convert instead")
    m.add_argument("--tasks", default=None,
                   help="comma-separated lmms-eval tasks (default: scienceqa_img,gqa,"
                        "textvqa_val,mme,mmbench_en_dev,mmvet)")
    m.add_argument("--include-path", default=None,
                   help="folder of extra lmms-eval task YAMLs (local tasks)")
    m.add_argument("--limit", type=float, default=None,
                   help="only the first N documents per task (a smoke test, not a score)")
    m.add_argument("--batch-size", type=int, default=8, help="generation batch size")
    m.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto")
    m.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    m.add_argument("--out", required=True, help="result JSON path (a .md summary beside it)")
    m.add_argument("--merge-into", default=None,
                   help="a comparison results.json whose row gets the lmms_* metrics")
    m.add_argument("--method", default=None,
                   help="row to merge into (its method name; required with --merge-into)")
    m.add_argument("--data-size", type=int, default=None,
                   help="row to merge into: its data_size (when several rows share a method)")
    m.add_argument("--debug", action="store_true", help="show full tracebacks")
    m.set_defaults(func=_lmms)


def _amber(args: argparse.Namespace) -> int:
    from visalign.eval.amber import PUBLISHED, score_amber
    from visalign.report import write_result

    result = score_amber(args.answers, args.amber_dir, similarity=args.similarity,
                         answers=args.answer_mode, query_set=args.query_set,
                         nltk_data=args.nltk_data, wordnet=args.wordnet)
    result["inputs"] = {"answers": args.answers, "amber_dir": args.amber_dir}
    notes = [f"query set: {result['query_set']}", f"near-synonym test: {result['similarity']}",
             f"yes/no answers: {result['answers']}"
             + (f" ({result['counts']['not_yes_no']} answers were neither 'Yes' nor 'No' and "
                "count as wrong)" if result["counts"]["not_yes_no"] else "")]
    if result.get("wordnet"):
        notes.append(f"WordNet: {result['wordnet']}")
    paths = write_result(args.out, result, "AMBER", notes)
    print(amber_table(result, PUBLISHED))
    print("\n".join(notes))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def amber_table(result: dict, published: dict | None = None) -> str:
    """AMBER's blocks as inference.py prints them, one row per block."""
    lines = []
    gen = result.get("generative")
    if gen:
        lines += ["Generative  CHAIR {CHAIR:5.1f}  Cover {Cover:5.1f}  Hal {Hal:5.1f}  "
                  "Cog {Cog:5.1f}".format(**gen)]
    for block in ("discriminative", "existence", "attribute", "state", "number", "action",
                  "relation"):
        b = result.get(block)
        if b:
            lines.append(f"{block.capitalize():<15} Acc {b['Accuracy']:5.1f}  P "
                         f"{b['Precision']:5.1f}  R {b['Recall']:5.1f}  F1 {b['F1']:5.1f}")
    if result.get("amber_score") is not None:
        lines.append(f"AMBER score {result['amber_score']:.1f}")
    if published and gen and result.get("amber_score") is not None:
        lines.append("published {model}: CHAIR {CHAIR} Cover {Cover} Hal {Hal} Cog {Cog} "
                     "F1 {F1} score {amber_score}".format(**published))
    return "\n".join(lines)


def _lmms(args: argparse.Namespace) -> int:
    from visalign.eval.lmms import (DEFAULT_TASKS, LmmsConfig, merge_into_results,
                                    read_lmms_results, run_lmms)
    from visalign.report import metrics_markdown, write_result

    if args.merge_into and not args.method:
        raise ValueError("--merge-into needs --method (the row to add the metrics to)")
    if args.from_results:
        result = read_lmms_results(args.from_results)
    else:
        tasks = [t.strip() for t in (args.tasks or ",".join(DEFAULT_TASKS)).split(",")
                 if t.strip()]
        cfg = LmmsConfig(tasks=tasks, include_path=args.include_path, limit=args.limit,
                         batch_size=args.batch_size, dtype=args.dtype, device=args.device)
        result = run_lmms(args.model, cfg)
    notes = []
    if result.get("limit") is not None:
        notes.append(f"limit {result['limit']}: a smoke test on part of each task, not a score")
    paths = write_result(args.out, result, "Alignment tax (lmms-eval)", notes)
    print(metrics_markdown(result["metrics"], "Alignment tax (lmms-eval)"))
    if args.merge_into:
        row = merge_into_results(args.merge_into, result["metrics"], method=args.method,
                                 data_size=args.data_size)
        print(f"merged {len(result['metrics'])} metrics into {args.merge_into} "
              f"(row {row['method']}, data size {row.get('data_size', 0)})")
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0
