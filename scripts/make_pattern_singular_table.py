"""Write the table of Pattern's singular forms that CHAIR's ``pattern`` variant reads
(``src/visalign/resources/chair/pattern_singular.json``).

The reference chair.py singularises every caption token with ``pattern.en.singularize`` before
matching it against the COCO synonyms and its double words. Only tokens whose Pattern singular
is, or which themselves are, one of the words the reference can match (single-word synonyms,
the words of its double words, "toilet" and "seat") change a CHAIR score, so the table lists
exactly those tokens, out of a vocabulary of those words, their inflections (regular and
irregular plurals, the plural of a plural) and every WordNet noun with its plural forms. The
variant treats a token outside the table as matching nothing, which is what Pattern does for
every token of that vocabulary outside the table.

Pattern itself is not a dependency (Pattern 3.6 does not install on current Pythons). Point
``--pattern-inflect`` at its English inflection module, e.g. ``pattern3/text/en/inflect.py``
from the ``pattern3`` sdist on PyPI or ``pattern/text/en/inflect.py`` from Pattern 3.6; it is
loaded on its own, with the few names it imports from its package stubbed (``singularize``
does not use them).

    python scripts/make_pattern_singular_table.py --pattern-inflect PATH/inflect.py \
        [--wordnet /usr/share/wordnet] [--out src/visalign/resources/chair/pattern_singular.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def load_pattern_singularize(path: Path):
    """Pattern's ``singularize`` from its inflection module, with its package imports stubbed."""
    src = path.read_text(encoding="utf-8")
    # the module imports Verbs and tense constants from its package: give it stand-ins
    src = re.sub(r"^from pattern3?\.text import .*?\)\n", "", src, flags=re.DOTALL | re.MULTILINE)
    src = re.sub(r"^from pattern3?\.text import .*\n", "", src, flags=re.MULTILINE)
    mod = types.ModuleType("pattern_inflect")

    class _Verbs:
        def __init__(self, *a, **k):
            pass

        def _missing(self, *a, **k):
            raise NotImplementedError

        conjugate = lemma = lexeme = tenses = _missing

    stub = {"_Verbs": _Verbs, "INFINITIVE": "inf", "PRESENT": "present", "PAST": "past",
            "FUTURE": "future", "FIRST": 1, "SECOND": 2, "THIRD": 3, "SINGULAR": "sg",
            "PLURAL": "pl", "SG": "sg", "PL": "pl", "PROGRESSIVE": "prog",
            "PARTICIPLE": "part"}
    mod.__dict__.update(stub)
    mod.__file__ = str(path)
    # Pattern's module run as is, in a module of its own (its package is not importable)
    exec(compile(src, str(path), "exec"), mod.__dict__)  # noqa: S102
    return mod.singularize


def vocabulary(words: set[str], wordnet: Path | None) -> set[str]:
    import inflect

    eng = inflect.engine()
    vocab = set(words)
    for w in list(words):
        forms = {w + "s", w + "es", w + "'s", w[:-1] + "ies", w[:-1] + "ves", w[:-2] + "ves"}
        plural = eng.plural_noun(w)
        if plural:
            forms.add(plural)
        # the plural of a plural ("skiss") and of a plural form (generated captions have them)
        forms |= {f + "s" for f in list(forms)} | {f + "es" for f in list(forms)}
        vocab |= forms
    if wordnet is not None and (wordnet / "index.noun").exists():
        for line in (wordnet / "index.noun").read_text(encoding="utf-8").splitlines():
            if line and not line.startswith(" "):
                lemma = line.split(" ", 1)[0].lower()
                if "_" not in lemma:
                    vocab |= {lemma, lemma + "s", lemma + "es"}
        exc = wordnet / "noun.exc"
        if exc.exists():
            for line in exc.read_text(encoding="utf-8").splitlines():
                vocab.update(t for t in line.split() if "_" not in t)
    return {v for v in vocab if v}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pattern-inflect", type=Path, required=True)
    ap.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    ap.add_argument("--out", type=Path,
                    default=ROOT / "src" / "visalign" / "resources" / "chair" /
                    "pattern_singular.json")
    args = ap.parse_args(argv)
    singularize = load_pattern_singularize(args.pattern_inflect)
    from visalign.eval.chair_pattern import matchable_words

    words = matchable_words()
    vocab = vocabulary(words, args.wordnet)
    table = {}
    for t in sorted(vocab):
        s = singularize(t)
        if s in words or t in words:
            table[t] = s
    source = hashlib.sha256(args.pattern_inflect.read_bytes()).hexdigest()
    out = {"what": "pattern.en.singularize of every token whose singular, or which itself, is a "
                   "word the reference chair.py can match (scripts/make_pattern_singular_table"
                   ".py); a token not listed matches nothing",
           "pattern_inflect_sha256": source, "vocabulary": len(vocab), "singular": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    info = {"out": str(args.out), "entries": len(table), "vocabulary": len(vocab),
            "changed": sorted(k for k, v in table.items() if k in words and v != k)}
    print(json.dumps(info))
    return info


if __name__ == "__main__":
    main()
