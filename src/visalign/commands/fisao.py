"""``visalign fisao``: FiSAO's verifier tools (training itself is ``visalign train fisao``).

- ``calibrate``: the verifier's baseline scores μ_gt, μ_hal, S_min, S_max (Eq. 7, App. A.1.5)
  from the model's own descriptions labelled by CHAIR, plus the Fig. 1 / Fig. 2 analysis.
  Writes OUT/calibration.json (what ``visalign train fisao --calibration`` reads),
  OUT/calibration_sentence.json, OUT/calibration_report.json, OUT/entities.json,
  OUT/scores.jsonl, OUT/answers.jsonl (when generated) and the fig*.png figures.
- ``entities``: build the entity set C (App. A.1.1) and print its size before / after the
  inflect + WordNet expansion (the paper: 1,204 -> 5,678 words); optionally save it or show
  the mentions found in a text.
- ``shift``: Fig. 4, the verifier scores / rewards of generated objects before vs after
  training, from two answer files.
"""

from __future__ import annotations

import argparse
import json

from visalign.commands._common import add_config_args


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fisao`` command group."""
    p = subparsers.add_parser("fisao", help="FiSAO verifier: calibrate, entity set, reward shift",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="fisao_command", metavar="COMMAND")
    _register_calibrate(sub)
    _register_entities(sub)
    _register_shift(sub)


# ----------------------------------------------------------------------------- calibrate


def _register_calibrate(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "calibrate", help="verifier baselines μ_gt, μ_hal, S_min, S_max (Eq. 7) + Fig. 1/2",
        description="Generate (or read) descriptions, label each mentioned object with CHAIR, "
                    "score it with the verifier, and write OUT/calibration.json for `visalign "
                    "train fisao`. Config keys (key=value): see CalibrateConfig in "
                    "visalign.methods.fisao.calibrate (e.g. n_images=500 lam=0.5 "
                    "percentiles=[1,99] template='a photo of a {}.').")
    c.add_argument("--model", help="model dir: the policy whose answers are calibrated")
    c.add_argument("--verifier", help="verifier CLIP dir (default MODEL/verifier)")
    src = c.add_mutually_exclusive_group()
    src.add_argument("--prompts", help="prompt or LLaVA records to describe (generation)")
    src.add_argument("--answers", help="existing answers JSONL (skip generation)")
    c.add_argument("--image-root", dest="image_root",
                   help="root of relative image paths (default: the prompts/answers file's dir)")
    c.add_argument("--instances", help="COCO instances JSON of the calibration images")
    c.add_argument("--captions", help="COCO captions JSON (CHAIR ground truth, BLEU/ROUGE refs)")
    c.add_argument("--synonyms", help="CHAIR synonyms table (default: COCO's)")
    c.add_argument("--n-images", dest="n_images", type=int, help="calibration responses")
    c.add_argument("--lam", type=float, help="margin λ stored in the calibration")
    c.add_argument("--out", help="output dir")
    add_config_args(c)
    c.set_defaults(func=_calibrate)


def calibrate_config(args: argparse.Namespace):
    """CalibrateConfig from defaults → --config → flags → key=value overrides."""
    from visalign.config import load_config, parse_overrides
    from visalign.methods.fisao.calibrate import CalibrateConfig

    cfg = load_config(CalibrateConfig, args.config)
    flags = {k: getattr(args, k) for k in ("model", "verifier", "prompts", "answers",
                                           "image_root", "instances", "captions", "synonyms",
                                           "n_images", "lam", "out")
             if getattr(args, k, None) is not None}
    flags.update(parse_overrides(args.overrides))
    return load_config(CalibrateConfig, None, flags, base=cfg)


def _calibrate(args: argparse.Namespace) -> int:
    from visalign.methods.fisao.calibrate import calibrate_verifier

    cfg = calibrate_config(args)
    res = calibrate_verifier(cfg)

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    print(f"fisao calibrate: {res['n_responses']} responses, {res['n_gt']} correct / "
          f"{res['n_hal']} hallucinated object mentions ({res['n_unlabelled']} unlabelled)")
    print(f"  mu_gt={res['mu_gt']:.4g}  mu_hal={res['mu_hal']:.4g}  "
          f"S in [{res['s_min']:.4g}, {res['s_max']:.4g}]  lam={res['lam']:g}")
    print(f"  AUROC token {f(res['auroc_token'])}  sentence {f(res['auroc_sentence'])}  "
          f"response {f(res['auroc_response'])}")
    print(f"  -> {cfg.out}/calibration.json")
    return 0


# ----------------------------------------------------------------------------- entities


def _register_entities(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "entities", help="build the entity set C and print its size before/after expansion",
        description="Build FiSAO's entity set C (App. A.1.1): extra vocabulary + COCO + the "
                    "packaged noun list, expanded with inflect (plural/singular) and WordNet "
                    "synonyms. Prints base -> expanded sizes (the paper: 1,204 -> 5,678).")
    e.add_argument("--extra", help="extra vocabulary: a CHAIR-form synonyms table")
    e.add_argument("--no-coco", action="store_true", help="leave out the COCO table")
    e.add_argument("--no-nouns", action="store_true", help="leave out the packaged noun list")
    e.add_argument("--no-inflect", action="store_true", help="no plural/singular forms")
    e.add_argument("--no-wordnet", action="store_true", help="no WordNet synonyms")
    e.add_argument("--wordnet-root", help="WordNet database dir (default: /usr/share/wordnet, "
                                          "$VISALIGN_WORDNET or an nltk_data install)")
    e.add_argument("--out", help="save the set as JSON (entities.json)")
    e.add_argument("--find", metavar="TEXT", action="append", default=[],
                   help="print the entity mentions found in TEXT (repeatable)")
    e.add_argument("--json", action="store_true", help="print the statistics as JSON")
    e.add_argument("--debug", action="store_true", help="show full tracebacks")
    e.set_defaults(func=_entities)


def _entities(args: argparse.Namespace) -> int:
    import warnings

    from visalign.verifier.entities import EntitySet

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        es = EntitySet.build(extra=args.extra, synonyms=None if args.no_coco else "coco",
                             nouns=not args.no_nouns, inflect=not args.no_inflect,
                             wordnet=not args.no_wordnet, wordnet_root=args.wordnet_root)
    st = es.stats()
    if args.out:
        es.save(args.out)
        st["path"] = args.out
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(f"entity set C: {st['base']} words -> {st['expanded']} after expansion "
              f"({st['canonical']} canonical entities; +{st['inflect_added']} inflections, "
              f"+{st['wordnet_added']} WordNet synonyms{'' if st['wordnet'] else ', no WordNet'})")
        for w in caught:
            print(f"  warning: {w.message}")
        if args.out:
            print(f"  -> {args.out}")
    for text in args.find:
        ms = es.find(text)
        print(f"{text!r}: " + (", ".join(f"{m.surface!r}->{m.canonical} [{m.start}:{m.end}]"
                                         for m in ms) or "no entities"))
    return 0


# ----------------------------------------------------------------------------- shift


def _register_shift(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "shift", help="Fig. 4: generated-object scores/rewards before vs after training",
        description="Score the objects two models mention (answer files of `visalign "
                    "generate` on the same prompts) and plot the distributions. Writes "
                    "OUT/fig4_score_shift.png, OUT/fig4_reward_shift.png (with --calibration) "
                    "and OUT/reward_shift.json.")
    s.add_argument("--before", required=True, help="answers of the model before training")
    s.add_argument("--after", required=True, help="answers of the model after training")
    s.add_argument("--verifier", required=True, help="verifier CLIP dir")
    s.add_argument("--calibration", help="calibration.json (template, rewards; its "
                                         "entities.json is used when present)")
    s.add_argument("--entities", help="entities.json (default: the calibration's, else built)")
    s.add_argument("--image-root", dest="image_root", default="",
                   help="root of relative image paths (default: each answer file's dir)")
    s.add_argument("--out", required=True, help="output dir")
    s.add_argument("--debug", action="store_true", help="show full tracebacks")
    s.set_defaults(func=_shift)


def _shift(args: argparse.Namespace) -> int:
    from visalign.methods.fisao.calibrate import reward_shift

    res = reward_shift(args.before, args.after, args.out, verifier=args.verifier,
                       calibration=args.calibration, entities=args.entities,
                       image_root=args.image_root)
    sc = res["scores"]
    print(f"fisao shift: mean object score {sc['mean_before']:.4g} -> {sc['mean_after']:.4g} "
          f"({sc['shift']:+.4g}, paired 95 % CI [{sc['shift_ci95'][0]:+.3g}, "
          f"{sc['shift_ci95'][1]:+.3g}]; {sc['n_before']} -> {sc['n_after']} objects)")
    if "rewards" in res:
        print(f"  negative-reward share {res['neg_share_before']:.2f} -> "
              f"{res['neg_share_after']:.2f}")
    print(f"  -> {args.out}/reward_shift.json")
    return 0
