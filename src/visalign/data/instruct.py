"""LLaVA instruction files as they ship: record tasks, shared ids, text-only records.

The released files differ from the micro-world's in three ways that matter here:

- **Shared ids.** llava_instruct_150k.json holds a conversation, a detail description and a
  complex-reasoning record for many images, all with the image's id; llava_v1_5_mix665k.json
  repeats ids across its sources too. :func:`unique_keys` keeps every record: the first record
  of an id keeps it, its k-th repeat gets ``ID#k`` (the original stays in ``source_id``).
- **No task.** Records carry only ``id``, ``image`` and ``conversations``.
  :func:`recognise_task` reads the task from the prompts (see :data:`TASKS`).
- **Text-only records.** mix665k holds ShareGPT conversations with no image (no ``image``
  field, no ``<image>`` in any turn); :func:`is_text_only` finds them so that image tasks skip
  them and say how many.

The prompt lists are LLaVA's: the detail-description instructions listed in the LLaVA paper
(appendix, "the list of instructions for brief/detailed image description"), the questions
detail_23k.json actually uses, the BLIP caption instructions of LLaVA's pre-training data and the
response-format prompts of LLaVA-1.5 (its Table 7: "Answer the question using a single word or
phrase.", the A-OKVQA letter prompt, the TextCaps caption prompt and the RefCOCO region
prompts).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

IMAGE_TOKEN = "<image>"

# The detailed-description instructions of the LLaVA paper, plus the common evaluation form
# first. The micro-world draws its detail prompts from this tuple (order matters for its seeds).
DETAIL_PROMPTS = (
    "Describe this image in detail.",
    "Describe the following image in detail.",
    "Provide a detailed description of the given image.",
    "Give an elaborate explanation of the image you see.",
    "Share a comprehensive rundown of the presented image.",
    "Offer a thorough analysis of the image.",
    "Explain the various aspects of the image before you.",
    "Clarify the contents of the displayed image with great detail.",
    "Characterize the image using a well-detailed description.",
    "Break down the elements of the image in a detailed manner.",
    "Walk through the important details of the image.",
    "Portray the image with a rich, descriptive narrative.",
    "Narrate the contents of the image with precision.",
    "Analyze the image in a comprehensive and detailed manner.",
    "Illustrate the image through a descriptive explanation.",
    "Examine the image closely and share its details.",
    "Write an exhaustive depiction of the given image.",
)

# The questions the released detail_23k.json (and so llava_instruct_150k.json and mix665k)
# asks for its detailed descriptions; one file spells one of them "What is this photo about'?".
INSTRUCT_DETAIL_QUESTIONS = (
    "What do you see happening in this image?",
    "What do you think is going on in this snapshot?",
    "What's happening in the scene?",
    "What are the key elements in this picture?",
    "What is this photo about?",
    "Can you elaborate on the elements of the picture provided?",
    "Can you describe the main features of this image for me?",
    "Describe the following image.",
    "Write a detailed description of the given image.",
    "Explain the visual content of the image in great detail.",
)

# LLaVA's pre-training (BLIP caption) instruction list. The micro-world draws from it too.
CAPTION_PROMPTS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
)
TEXTCAPS_PROMPT = "Provide a one-sentence caption for the provided image."

# LLaVA-1.5's response-format prompts (its Table 7).
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."
REGION_PROMPTS = (
    ("Please provide the bounding box coordinate of the region this sentence describes"),
    "Please provide a short description for this region",
)

TASKS: dict[str, str] = {
    "detail": "one detailed-description prompt and its description (detail_23k)",
    "caption": "one brief-caption prompt (LLaVA pre-training, TextCaps)",
    "existence": "one yes/no question whether something is present ('Is there ...?', 'Does "
                 "the image contain ...?', 'Can you see ...?') and its yes/no answer",
    "yesno": "one other yes/no question and its yes/no answer",
    "vqa": "short-answer questions (LLaVA-1.5's single word or phrase / option letter prompts)",
    "region": "region description or grounding (RefCOCO, Visual Genome)",
    "conversation": "a multi-turn conversation (conversation_58k, ShareGPT-4V, ...)",
    "reasoning": "one open question with a long answer (complex_reasoning_77k)",
}

_AUXILIARIES = frozenset("is are was were am do does did can could will would shall should "
                         "may might must has have had".split())


def _norm(text: str) -> str:
    """A prompt compared by its words: no ``<image>``, lower case, folded spaces, no trailing
    punctuation or stray quotes."""
    text = " ".join(text.replace(IMAGE_TOKEN, " ").split()).lower()
    return text.rstrip(" .?!'\"")


_DETAIL = frozenset(_norm(p) for p in DETAIL_PROMPTS + INSTRUCT_DETAIL_QUESTIONS)
_CAPTION = frozenset(_norm(p) for p in CAPTION_PROMPTS + (TEXTCAPS_PROMPT,))
_SHORT = (_norm(SHORT_ANSWER_PROMPT), _norm(MULTIPLE_CHOICE_PROMPT))
_REGION = tuple(_norm(p) for p in REGION_PROMPTS)


# Questions about whether something is present (POPE's "Is there a ... in the image?" and kin).
_EXISTENCE = re.compile(r"(is|are) there\b|(does|do) (the|this) (image|picture|photo|scene) "
                        r"(contain|show|have|include)\b|(can|do) you see\b")


def _first_word(text: str) -> str:
    m = re.match(r"\W*([A-Za-z']+)", text)
    return m.group(1).lower() if m else ""


def is_yes_no(question: str, answer: str) -> bool:
    """A question opening with an auxiliary verb answered "yes" or "no" first."""
    return (_first_word(_norm(question)) in _AUXILIARIES
            and _first_word(answer) in ("yes", "no"))


def recognise_task(conversations: Sequence[Mapping]) -> str:
    """The task of a LLaVA conversation, one of :data:`TASKS`, read from its prompts.

    The first question decides: a detailed-description or caption prompt (whole prompt, case,
    spacing, ``<image>`` and end punctuation aside), a region prompt, a yes/no question, or
    LLaVA-1.5's short-answer suffix. Otherwise a single exchange is ``reasoning`` and a longer
    one ``conversation``.
    """
    humans = [t.get("value", "") for t in conversations if t.get("from") == "human"]
    gpts = [t.get("value", "") for t in conversations if t.get("from") == "gpt"]
    if not humans:
        return "conversation"
    q = _norm(humans[0])
    single = len(humans) == 1
    if single and q in _DETAIL:
        return "detail"
    if single and q in _CAPTION:
        return "caption"
    if q.startswith(_REGION):
        return "region"
    if single and gpts and is_yes_no(humans[0], gpts[0]):
        return "existence" if _EXISTENCE.match(q) else "yesno"
    if q.endswith(_SHORT):
        return "vqa"
    return "reasoning" if single else "conversation"


def is_text_only(record: Mapping) -> bool:
    """No ``image`` field and no ``<image>`` in any turn (mix665k's ShareGPT records)."""
    if record.get("image") is not None:
        return False
    conv = record.get("conversations")
    if not isinstance(conv, list):
        return False
    return not any(isinstance(t, Mapping) and IMAGE_TOKEN in str(t.get("value", ""))
                   for t in conv)


def unique_keys(ids: Iterable[Any]) -> list[str]:
    """One unique string key per id, in order: an id's first record keeps ``str(id)``, its k-th
    repeat gets ``f"{id}#{k}"`` (a key some record already uses as its id is passed over).

    A key depends only on the ids before it (barring such collisions), so a resumed or
    ``limit``-ed run over the same file gives every record the same key.
    """
    ids = [str(i) for i in ids]
    taken = set(ids)
    seen: dict[str, int] = {}
    out = []
    for s in ids:
        k = seen.get(s, 0)
        if k == 0:
            seen[s] = 1
            out.append(s)
            continue
        key = f"{s}#{k}"
        while key in taken:
            k += 1
            key = f"{s}#{k}"
        seen[s] = k + 1
        taken.add(key)
        out.append(key)
    return out


def source_id(record: Mapping) -> Any:
    """The id a record had in its file (``source_id`` where :func:`unique_keys` renamed it)."""
    return record.get("source_id", record.get("id"))
