"""English word forms shared by the micro-world's text, nSFT's dialogues and the pair builders:
articles and plurals through ``inflect`` (one engine, built on first use)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

# Basic colour terms (nSFT's annotation judge adds the ground truth's own colour values).
COLOR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
               "white", "gray", "grey", "silver", "gold")

_ENGINE: Any = None


def _engine() -> Any:
    global _ENGINE
    if _ENGINE is None:
        import inflect

        _ENGINE = inflect.engine()
    return _ENGINE


@lru_cache(maxsize=None)
def plural(noun: str) -> str:
    """Plural of a (possibly two-word) noun: person/people, knife/knives."""
    return _engine().plural_noun(noun) or noun


@lru_cache(maxsize=None)
def with_article(phrase: str) -> str:
    """``"a cup"``, ``"an umbrella"`` (article chosen from the first word of ``phrase``)."""
    return _engine().a(phrase)


def is_plural(surface: str) -> bool:
    """Whether a mention's surface form is plural ("cups", "people"; not "bus", "glass")."""
    last = surface.lower().split()[-1] if surface.split() else ""
    sing = _engine().singular_noun(last) if last.isalpha() else False
    return bool(sing) and sing != last and not last.endswith(("us", "ss"))
