"""The vision-error codebook of nSFT and the Fig. 9 prompt that carries it.

The nSFT paper (supplementary, Sec. C.2 and Fig. 9) guides error identification with a
two-level "vision error codebook": three *instance-level* categories (object identity,
attribute, action) and six *image-level* ones (location, relative position, background,
events, event planning, reasoning). Every error visalign finds — by the offline annotation judge
or by an LLM judge — is tagged with one of the keys below, so construction reports can count
errors per category.

``NSFT_PROMPT`` reproduces the text of Fig. 9 (typos included: it is the prompt the paper
sent). Fig. 9 leaves two output-format slots as placeholders ("[hallucination-specific output
format]" and "[topic-specific output format]"); we fill them with the concrete format our
parser reads (one hallucination per line, then five ``User:``/``GPT:`` turns), and give the
inputs in a second message under the headings the prompt itself names (``DETAILED IMAGE
CAPTION`` and ``DESCRIPTION``). Those two fillings are ours, not the paper's.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

Level = Literal["instance", "image"]


@dataclasses.dataclass(frozen=True)
class Category:
    """One codebook entry: a stable ``key``, its level, the Fig. 9 name and criterion text."""

    key: str
    level: Level
    name: str
    criterion: str


# Fig. 9, "The Vision-Error Codebook ---Instance Level" then "---Image Level", in order.
CODEBOOK: tuple[Category, ...] = (
    Category("object_identity", "instance", "Object Identity",
             "whether if the object class or category is correctly classified"),
    Category("object_attribute", "instance", "Object attribute",
             "whether if the object shape, color or counting is correctly classified"),
    Category("object_actions", "instance", "Object actions",
             "whether if the that action the object is doing is correct"),
    Category("object_locations", "image", "Object locations",
             "whether if the object is correctly located in the image as described"),
    Category("relative_positions", "image", "Relative positions between objects",
             "whether the position location between two described object is correct"),
    Category("background_knowledge", "image", "Background knowledge of objects",
             "whether the background knowledge or surroundings are correct"),
    Category("events", "image", "Events in the image",
             "identify if the whole image's atmosphere or fully description of the scene is "
             "correct"),
    Category("event_planning", "image", "Event planning based on objects",
             "identify whether the prediction of the objects movement is correct."),
    Category("reasoning", "image", "Reasoning",
             "identify whether the image-level reasoning is mostly consistent with the GT "
             "description."),
)

CATEGORY_KEYS: tuple[str, ...] = tuple(c.key for c in CODEBOOK)
INSTANCE_LEVEL: tuple[str, ...] = tuple(c.key for c in CODEBOOK if c.level == "instance")
IMAGE_LEVEL: tuple[str, ...] = tuple(c.key for c in CODEBOOK if c.level == "image")
_BY_KEY = {c.key: c for c in CODEBOOK}

# An LLM judge may name a hallucination without a codebook category, or with one we cannot map;
# such errors are counted under this key (never silently folded into a real category).
UNSPECIFIED = "unspecified"


def category(key: str) -> Category:
    """The codebook entry for ``key``; ``KeyError`` names the valid keys."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown codebook category {key!r}; valid: {', '.join(CATEGORY_KEYS)}"
                       ) from None


def level_of(key: str) -> Level | None:
    """``"instance"``/``"image"`` for a codebook key, ``None`` for :data:`UNSPECIFIED`."""
    return _BY_KEY[key].level if key in _BY_KEY else None


# Words that identify a category when an LLM names it loosely ("Color:", "Counting", "Location").
# Checked after the exact Fig. 9 names; first match wins, so more specific names come first.
_ALIASES: tuple[tuple[str, str], ...] = (
    ("relative position", "relative_positions"), ("relative location", "relative_positions"),
    ("spatial relation", "relative_positions"), ("event planning", "event_planning"),
    ("planning", "event_planning"), ("background", "background_knowledge"),
    ("surrounding", "background_knowledge"), ("identity", "object_identity"),
    ("existence", "object_identity"), ("nonexistent", "object_identity"),
    ("non-existent", "object_identity"), ("attribute", "object_attribute"),
    ("color", "object_attribute"), ("colour", "object_attribute"), ("count", "object_attribute"),
    ("number", "object_attribute"), ("shape", "object_attribute"), ("size", "object_attribute"),
    ("action", "object_actions"), ("activity", "object_actions"),
    ("location", "object_locations"), ("position", "object_locations"),
    ("event", "events"), ("atmosphere", "events"), ("scene", "events"),
    ("reasoning", "reasoning"),
)


def match_category(text: str) -> str:
    """Map free text naming a category (e.g. ``"Object attribute: the cup is red..."``) to a key.

    The exact Fig. 9 names are looked for anywhere in ``text``; the loose aliases ("Color:",
    "Counting -", "Location:") only in a label before the first ``:`` (or `` - ``), as whole
    words, so a hallucination's *content* ("no dog in the scene", "a kitchen counter") does
    not pick its category. Returns :data:`UNSPECIFIED` when nothing fits.
    """
    low = text.lower()
    # Longest names first so "Relative positions between objects" beats "Object locations".
    for c in sorted(CODEBOOK, key=lambda c: -len(c.name)):
        if c.name.lower() in low:
            return c.key
    head = re.split(r"[:：]|\s[-–—]\s", low, maxsplit=1)
    if len(head) < 2:
        return UNSPECIFIED
    for word, key in _ALIASES:
        if re.search(rf"\b{re.escape(word)}(?:s|es|d|ed|ing)?\b", head[0]):
            return key
    return UNSPECIFIED


# ---------------------------------------------------------------------------------------------
# Fig. 9 prompt ("ChatGPT For Negative Construction"), text as printed in the paper.
# ---------------------------------------------------------------------------------------------

_PROMPT_START = (
    "You are an AI visual assistant that analyzes a single image based on its ground-truth "
    "DETAILED IMAGE CAPTION. You are also provided with a DESCRIPTION generated by a caption "
    "model."
)

_TASK = (
    "Task: Comparing the generated DESCRIPTION and the ground-truth DETAILED IMAGE CAPTION, "
    "identify if there are hallucinations in the generated DESCRIPTION. If hallucinations "
    "exist, then Design one conversation between you (as \"GPT\") and a person (as \"User\") "
    "who asks about the image. Each conversation must include five question-answer pairs. The "
    "questions and answers should be *logically connected*. The aim of the conversation should "
    "mostly focus on hallucinations correction."
)


def _codebook_text() -> str:
    inst = [c for c in CODEBOOK if c.level == "instance"]
    img = [c for c in CODEBOOK if c.level == "image"]
    lines = ["Consider the following hallucinations when inspecting the generated sentences:",
             "", "First, in the instance level:", ""]
    lines += [f"{i}. **{c.name}:** {c.criterion}" for i, c in enumerate(inst, 1)]
    lines += ["", "Second, in the image level", ""]
    lines += [f"{i}. **{c.name}:** {c.criterion}" for i, c in enumerate(img, 1)]
    return "\n".join(lines)


_GUIDELINES = """More general guidelines for generating topics:

Conversation Guidelines:

1. For each topic, Ask a variety of questions and provide corresponding answers.
2. Only include questions that have definite answers.
3. Answer as if you are directly looking at the image.
4. Responses should be concise, within 20 tokens.
5. Do not mention that the information comes from a description.
6. Do not always ask question that starts with "Is" or "Are".

If there are no hallucinations, just end this chat."""

# The two format slots of Fig. 9, filled by us (see module docstring).
HALLUCINATION_FORMAT = ("- [codebook category]: [the hallucinated content] -> [what the image "
                        "actually shows]\n(one line per hallucination)")
TOPIC_FORMAT = "\n".join(f"User: [question {i}]\nGPT: [answer {i}]" for i in range(1, 6))

_FINAL = f"""Final output:

OUTPUT Format (If hallucinations exist):

Hallucinations:

{HALLUCINATION_FORMAT}

Constructed Topic1: [Your chosen topic]

{TOPIC_FORMAT}"""

NSFT_PROMPT: str = "\n\n".join([_PROMPT_START, _TASK, _codebook_text(), _GUIDELINES, _FINAL])


def nsft_messages(gt_caption: str, description: str) -> list[dict]:
    """Chat messages for the Fig. 9 judge: the prompt, then the two texts under their headings."""
    user = (f"DETAILED IMAGE CAPTION:\n{gt_caption.strip()}\n\n"
            f"DESCRIPTION:\n{description.strip()}")
    return [{"role": "system", "content": NSFT_PROMPT}, {"role": "user", "content": user}]
