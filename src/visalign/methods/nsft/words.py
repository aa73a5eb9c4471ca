"""Word tables nSFT's judges, answer checks and templates share: number words and the colour
spellings the ground truth and the answers are normalised to."""

from __future__ import annotations

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen", "twenty"]
# Lower-case number word -> its value ("two" -> 2).
NUMBER_VALUES = {w: i for i, w in enumerate(NUMBER_WORDS)}

# Colour spellings folded together, applied to annotated and written colours alike.
# (visalign.data.words.COLOR_WORDS holds the basic colour terms; the annotation judge adds the
# ground truth's own colour values.)
COLOR_NORM = {"grey": "gray"}


def number_word(n: int) -> str:
    """``2`` -> ``"two"`` (digits outside 0-20)."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def number_value(tok: str) -> int | None:
    """The value of a digit string or number word (any case), else None."""
    t = tok.lower()
    if t.isdigit():
        return int(t)
    return NUMBER_VALUES.get(t)
