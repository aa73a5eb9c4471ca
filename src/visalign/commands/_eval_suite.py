"""``visalign eval suite``: generate and score the real benchmarks with their paper protocols."""

from __future__ import annotations

import argparse
import sys

DEFAULT_BENCHMARKS = "chair,pope,mmhal,objhal"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``suite`` to the ``eval`` group."""
    s = sub.add_parser(
        "suite", help="a real model on CHAIR, POPE, MMHal-Bench, Object HalBench, AMBER",
        description="Generate each benchmark's answers with its own protocol (prompt, length, "
                    "greedy), score them, and write OUT/results.json (shared result format), "
                    "results.md and results.png. Resumable: answers and judge replies already "
                    "made are reused. Judge settings: --judge-* or key=value overrides of "
                    "JudgeConfig as judge.model=..., or the environment (VISALIGN_JUDGE_*). "
                    "Protocols: docs/evaluation-protocols.md.")
    s.add_argument("--model", required=True,
                   help="model dir (merged) or LoRA adapter dir (loaded on its base with peft)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--benchmarks", default=DEFAULT_BENCHMARKS,
                   help=f"comma-separated (default {DEFAULT_BENCHMARKS}; also amber)")
    for name, what in (("coco-root", "COCO root (annotations/ + val2014/, train2017/, ...)"),
                       ("pope-dir", "folder of coco_pope_{random,popular,adversarial}.json"),
                       ("amber-dir", "AMBER data/ folder"),
                       ("mmhal-file", "MMHal-Bench response_template.json"),
                       ("mmhal-images", "MMHal-Bench images (default: images/ beside the file)"),
                       ("objhal-file", "obj_halbench_300_with_image.jsonl"),
                       ("objhal-synonyms", "RLAIF-V synonyms_refine.txt, or 'coco'")):
        s.add_argument(f"--{name}", default="", help=what)
    s.add_argument("--chair-images", default="chair-500",
                   help="chair-500 (less-is-more's list, default) or val2014:N (seeded sample)")
    s.add_argument("--chair-seed", type=int, default=0, help="seed of val2014:N")
    s.add_argument("--chair-variant", choices=["reference", "lemma", "pattern"],
                   default="reference",
                   help="reference chair.py's semantics, pattern: chair.py exactly (Pattern's "
                        "singular forms), or lemma: OPERA / less-is-more / PAI")
    s.add_argument("--pope-parser", choices=["llava", "lmms"], default="llava",
                   help="llava: eval_pope.py (default); lmms: lmms-eval's exact match")
    s.add_argument("--objhal-mode", choices=["judge", "words"], default="judge",
                   help="judge: LLM object extraction (reference); words: no judge")
    s.add_argument("--objhal-nlp", choices=["spacy", "nltk"], default="spacy",
                   help="parser of extracted objects: spacy en_core_web_trf (reference) or nltk")
    s.add_argument("--max-new-tokens", default="",
                   help="overrides, e.g. chair=64,mmhal=512 (defaults: chair 512, pope 128, "
                        "mmhal 1024, objhal 1024)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--dtype", default="auto", help="auto | bfloat16 | float16 | float32")
    s.add_argument("--device", default="auto")
    s.add_argument("--method", default="model", help="row name in results.json")
    s.add_argument("--judge-model", default=None, help="judge model (else config / env)")
    s.add_argument("--judge-base-url", default=None, help="judge endpoint base URL")
    s.add_argument("--judge-cache-dir", default=None, help="judge reply cache")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("overrides", nargs="*", metavar="judge.key=value",
                   help="JudgeConfig overrides, e.g. judge.workers=8 judge.temperature=0")
    s.add_argument("--debug", action="store_true", help="show full tracebacks")
    s.set_defaults(func=run)


def _tokens(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            raise ValueError(f"--max-new-tokens {part!r}: expected NAME=INT") from None
        if out[name.strip()] < 1:
            raise ValueError(f"--max-new-tokens {part!r}: must be >= 1")
    return out


def run(args: argparse.Namespace) -> int:
    from visalign.config import load_config
    from visalign.eval.judge import JudgeConfig, JudgeError
    from visalign.eval.protocol_suite import PUBLISHED, SuiteSettings, run_suite
    from visalign.eval.registry import SuiteData

    judge_over = []
    for o in args.overrides:
        if not o.startswith("judge."):
            raise ValueError(f"unknown override {o!r}: only judge.KEY=VALUE is accepted here")
        judge_over.append(o[len("judge."):])
    judge = load_config(JudgeConfig, None, judge_over)
    if args.judge_model:
        judge.model = args.judge_model
    if args.judge_base_url:
        judge.base_url = args.judge_base_url
    if args.judge_cache_dir:
        judge.cache_dir = args.judge_cache_dir
    data = SuiteData(coco_root=args.coco_root, pope_dir=args.pope_dir, amber_dir=args.amber_dir,
                     mmhal_file=args.mmhal_file, mmhal_images=args.mmhal_images,
                     objhal_file=args.objhal_file, objhal_synonyms=args.objhal_synonyms,
                     chair_images=args.chair_images, chair_seed=args.chair_seed,
                     chair_variant=args.chair_variant, pope_parser=args.pope_parser,
                     objhal_mode=args.objhal_mode, objhal_nlp=args.objhal_nlp, judge=judge)
    settings = SuiteSettings(batch_size=args.batch_size,
                             max_new_tokens=_tokens(args.max_new_tokens), dtype=args.dtype,
                             device=args.device, method=args.method,
                             progress=not args.no_progress)
    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    try:
        result = run_suite(args.model, data, names, args.out, settings)
    except JudgeError as e:
        if args.debug:
            raise
        print(f"visalign eval suite: error: {e}", file=sys.stderr)
        return 2
    from visalign.report import format_value

    metrics = result["rows"][0]["metrics"]
    for name, p in result["config"]["protocols"].items():
        extra = ", ".join(f"{k}={p[k]}" for k in ("variant", "parser", "mode", "judge_model",
                                                   "nlp") if p.get(k))
        print(f"[{name}] max_new_tokens={p['max_new_tokens']}, greedy"
              + (f", {extra}" if extra else ""))
    for k, v in metrics.items():
        pub = PUBLISHED.get(k)
        print(f"  {k}: {format_value(v)}" + (f"   (published LLaVA-1.5-7B: {pub[0]}, {pub[1]})"
                                             if pub else ""))
    print(f"wrote {args.out}/results.json, results.md")
    return 0
