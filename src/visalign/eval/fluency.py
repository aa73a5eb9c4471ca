"""Is the generated text still language? A guard next to CHAIR.

CHAIR counts object words that are wrong; a description whose words have broken down ("A big a a
a be seen", "bigimalies,imals") names few objects and so scores a low hallucination rate. A policy
optimised on object-word rewards (FiSAO's token rewards, any CHAIR-like signal) can find that
degenerate optimum: broken words are not entities, so they earn no negative reward. These
metrics flag it:

- ``oov_word_rate``: share of generated words outside a vocabulary of reference text (for the
  micro-world, every word of its captions and instruction data, a closed language, so a fluent
  model scores ~0);
- ``degenerate_share``: share of descriptions with an out-of-vocabulary word or the same word
  three times in a row;
- ``distinct_2``: per description, distinct word bigrams over all its bigrams, averaged
  (1.0 = no bigram repeated; lower = the description repeats itself).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Iterable, Sequence

_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """Lower-cased alphabetic words of ``text`` (digits and punctuation dropped)."""
    return _WORD.findall(text.lower())


def build_vocabulary(texts: Iterable[str]) -> set[str]:
    """Every word of ``texts``."""
    vocab: set[str] = set()
    for t in texts:
        vocab.update(words(t))
    return vocab


def world_vocabulary(world, splits: Sequence[str] = ("train", "val", "test")) -> set[str]:
    """The micro-world's language: every word of the reference captions and instruction turns of
    ``splits`` (those files that exist; empty set if none does). All splits by default: a world
    built for evaluation may have a token train split, and the language is the same in each.

    Memoised per file set (paths and modification times): a grid evaluates every cell against
    the same world, and reading its text costs about half a second each time."""
    files = []
    for split in [s for s in splits if s in getattr(world, "splits", splits)]:
        for path, kind in ((Path(world.captions_path(split)), "captions"),
                           (Path(world.llava_path(split)), "llava")):
            if path.exists():
                files.append((str(path.resolve()), path.stat().st_mtime_ns, kind))
    return set(_vocabulary_of_files(tuple(files)))


@functools.lru_cache(maxsize=8)
def _vocabulary_of_files(files: tuple[tuple[str, int, str], ...]) -> frozenset[str]:
    from visalign.data.coco import load_coco_captions
    from visalign.data.llava import load_llava_records

    texts: list[str] = []
    for path, _mtime, kind in files:
        if kind == "captions":
            texts += [c for cs in load_coco_captions(path).values() for c in cs]
        else:
            texts += [turn["value"] for r in load_llava_records(path)
                      for turn in r["conversations"]]
    return frozenset(build_vocabulary(texts))


def fluency(texts: Sequence[str], vocab: set[str]) -> dict:
    """``oov_word_rate``, ``degenerate_share`` and ``distinct_2`` of ``texts`` (see module doc).

    Raises ValueError on an empty vocabulary (a wrong path would make every word unknown).
    """
    if not vocab:
        raise ValueError("fluency: empty vocabulary")
    n_words = n_oov = n_degenerate = 0
    distinct: list[float] = []
    for t in texts:
        ws = words(t)
        oov = sum(w not in vocab for w in ws)
        n_words += len(ws)
        n_oov += oov
        triple = any(ws[i] == ws[i + 1] == ws[i + 2] for i in range(len(ws) - 2))
        n_degenerate += bool(oov or triple)
        bigrams = list(zip(ws, ws[1:]))
        if bigrams:
            distinct.append(len(set(bigrams)) / len(bigrams))
    return {
        "oov_word_rate": n_oov / n_words if n_words else 0.0,
        "degenerate_share": n_degenerate / len(texts) if texts else 0.0,
        "distinct_2": sum(distinct) / len(distinct) if distinct else 0.0,
    }


def fluency_of_answers(answers_path: str | Path, vocab: set[str]) -> dict:
    """:func:`fluency` of an ``answers_detail.jsonl`` written by the evaluation suite."""
    from visalign.io import read_jsonl

    return fluency([a["answer"] for a in read_jsonl(answers_path)], vocab)
