"""Text for the micro-world: reference captions and LLaVA-format instruction data.

Captions are short, COCO-like and always true; they name the salient (large) objects with varied
templates, synonyms and plurals. Instruction records cover the LLaVA-1.5 mix in miniature:
``detail`` (3-6 sentence descriptions), ``caption`` (projector pre-training), ``existence``,
``count``, ``color``, ``position`` and ``vqa`` (short answers, the OCR-VQA/GQA analogue).

The training split carries the defects that make real VLMs hallucinate (``defects=True``):

* ``hallucination_rate``: a share of detail descriptions also mention one plausible ABSENT
  object (``injected_objects``), written either as a normal object sentence or as "There is
  also a fork near the cup.". :meth:`TextGen.pick_absent` draws it by co-occurrence: weight
  P(c | scene theme) + 0.5 * mean P(c | home theme of each present object), raised to
  ``hallucination_sharpness``. P(c | theme) carries the scene sampler's Zipf skew, so frequent
  same-theme categories are injected most; sharpness 0 makes the pick uniform over all absent
  categories.
* ``omit_small_rate``: each category whose instances are all small is left out of the
  description with this probability (``omitted_objects``; one category is always kept). This
  depends on size only, never on frequency.

So training descriptions under-report small objects and over-report frequent ones; frequency
enters only through which absent object is injected. (Frequent categories also appear in more
scenes, but that skews images and true descriptions alike, not what a description says about
its image.)

Held-out splits get ``defects=False``: descriptions then mention every object and nothing else.
All randomness comes from the ``random.Random`` passed in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from visalign.data.instruct import CAPTION_PROMPTS, DETAIL_PROMPTS
from visalign.data.words import plural as plural_of
from visalign.data.words import with_article
from visalign.world.scenes import Scene, SceneObject, holds, relation
from visalign.world.vocab import (KEYED_ORDERS, REGION_PHRASES, REGIONS, RELATIONS,
                                  WEARS_COLOR, Vocab, number_word)

IMAGE_TOKEN = "<image>"

# DETAIL_PROMPTS, CAPTION_PROMPTS: LLaVA's instruction lists, kept once in visalign.data.instruct.

SHORT_SUFFIX = "Answer the question using a single word or phrase."
YESNO_SUFFIXES = (SHORT_SUFFIX, "Please answer yes or no.")

EXISTENCE_QUESTIONS = (
    "Is there {a} in the image?",
    "Is there {a} in this picture?",
    "Does the image contain {a}?",
    "Can you see {a} in the image?",
)
COUNT_QUESTIONS = (
    "How many {p} are there in the image?",
    "How many {p} can you see?",
    "How many {p} are in the picture?",
)
COLOR_QUESTIONS = (
    "What color is the {n}?",
    "What is the color of the {n}?",
)
WEAR_QUESTIONS = (
    "What color is the {n} wearing?",
    "What color are the clothes of the {n}?",
)
WHERE_QUESTIONS = (
    "Where is the {n} in the image?",
    "Where is the {n} located?",
    "In which part of the picture is the {n}?",
)

_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}


def cap(s: str) -> str:
    """Capitalise the first character only (keeps "TV"-style words intact elsewhere)."""
    return s[:1].upper() + s[1:]


def colored(category: str, noun: str, color: str | None, size: str | None = None) -> str:
    """"big red cup", but "big person in red" for categories whose colour is clothing."""
    pre = [size] if size else []
    if color and category in WEARS_COLOR:
        return " ".join(pre + [noun, "in", color])
    return " ".join(pre + ([color] if color else []) + [noun])


def join_and(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class TextParams:
    """Knobs of text generation (a view of WorldConfig)."""

    captions_per_image: int = 5
    synonym_prob: float = 0.2
    size_word_prob: float = 0.7
    caption_color_prob: float = 0.4
    hallucination_rate: float = 0.3
    hallucination_sharpness: float = 1.5
    omit_small_rate: float = 0.5
    description_order: str = "category"
    relation_sentence_prob: float = 0.7
    count_sentence_prob: float = 0.5
    detail_per_image: int = 1
    caption_per_image: int = 1
    existence_per_image: int = 2
    count_per_image: int = 1
    color_per_image: int = 1
    position_per_image: int = 1
    vqa_per_image: int = 1
    existence_adversarial_prob: float = 0.3
    count_absent_prob: float = 0.15
    color_prior_prob: float = 0.5


@dataclass
class Detail:
    """A detail description plus what the defects did to it."""

    text: str
    injected: list[str]
    omitted: list[str]


class TextGen:
    """Writes captions and instruction records for scenes of one vocabulary."""

    def __init__(self, vocab: Vocab, params: TextParams, theme_probs: np.ndarray):
        self.vocab = vocab
        self.p = params
        self.tp = theme_probs        # (n_themes, n_categories), P(category | theme)
        # Sort keys of a fixed description order (category, rank), else None.
        self.order_keys = (vocab.order_keys(params.description_order)
                           if params.description_order in KEYED_ORDERS else None)

    # -- surface forms ---------------------------------------------------------------------
    def noun(self, rng: random.Random, category: str, *, plural: bool = False) -> str:
        """Category name, or one of its synonyms with ``synonym_prob``."""
        c = self.vocab.category(category)
        if c.synonyms and rng.random() < self.p.synonym_prob:
            word = rng.choice(c.synonyms)
            return plural_of(word) if plural else word
        return c.plural if plural else c.name

    def np_(self, rng: random.Random, o: SceneObject, *, size_prob: float | None = None,
            color: bool = True) -> str:
        """"a large red cup" (size word with ``size_prob``, colour if ``color``)."""
        size = None
        if rng.random() < (self.p.size_word_prob if size_prob is None else size_prob):
            size = rng.choice(_SIZE_WORDS[o.size])
        return with_article(colored(o.category, self.noun(rng, o.category),
                                    o.color if color else None, size))

    def place(self, rng: random.Random, theme: str) -> str:
        return rng.choice(self.vocab.theme(theme).places)

    def in_place(self, rng: random.Random, theme: str) -> str:
        return rng.choice(self.vocab.theme(theme).in_places)

    @staticmethod
    def loc(rng: random.Random, region: str) -> str:
        return rng.choice(REGION_PHRASES[region])

    # -- captions --------------------------------------------------------------------------
    def _caption_mention(self, rng: random.Random, scene: Scene, category: str) -> str:
        insts = scene.instances(category)
        same_color = len({o.color for o in insts}) == 1
        adj = insts[0].color if same_color and rng.random() < self.p.caption_color_prob else None
        if len(insts) > 1:
            return number_word(len(insts)) + " " + colored(
                category, self.noun(rng, category, plural=True), adj)
        return with_article(colored(category, self.noun(rng, category), adj))

    def captions(self, scene: Scene, rng: random.Random) -> list[str]:
        """``captions_per_image`` short, true captions naming the salient objects."""
        cats = scene.categories_by_salience()
        salient = [c for c in cats if any(o.size == "large" for o in scene.instances(c))]
        salient = salient or cats[:1]
        out: list[str] = []
        for attempt in range(self.p.captions_per_image * 4):
            if len(out) == self.p.captions_per_image:
                break
            c = self._caption(scene, rng, salient)
            if c not in out or attempt >= self.p.captions_per_image * 3:
                out.append(c)
        return out

    def _caption(self, scene: Scene, rng: random.Random, salient: list[str]) -> str:
        k = min(len(salient), rng.choice((1, 2, 2, 3)))
        picked = [salient[0]] + rng.sample(salient[1:], k - 1) if k > 1 else [salient[0]]
        m = [self._caption_mention(rng, scene, c) for c in picked]
        where = self.in_place(rng, scene.theme)
        first_single = len(scene.instances(picked[0])) == 1
        form = rng.randrange(6)
        if form == 1:
            return cap(f"{self.place(rng, scene.theme)} with {join_and(m)}.")
        if form == 2 and len(m) >= 2:
            return cap(f"{m[0]} next to {join_and(m[1:])}.")
        if form == 3:
            return cap(f"a view of {join_and(m)} {where}.")
        if form == 4 and first_single:
            loc = self.loc(rng, scene.instances(picked[0])[0].region)
            rest = f", with {join_and(m[1:])}" if len(m) > 1 else ""
            return cap(f"{m[0]} {loc}{rest}.")
        if form == 5 and first_single and len(m) == 1:
            return cap(f"{m[0]} sitting {where}.")
        return cap(f"{join_and(m)} {where}.")

    # -- detail descriptions ---------------------------------------------------------------
    def pick_absent(self, rng: random.Random, scene: Scene) -> str | None:
        """A plausible absent object (None when no absent category has any weight).

        Weight = P(c | scene theme) + 0.5 * mean P(c | home theme of each present object), to
        the power ``hallucination_sharpness`` (> 1 sharpens it towards frequent same-theme
        categories; 0 gives every absent category weight 1, i.e. a uniform pick)."""
        names = self.vocab.names
        ti = self.vocab.theme_names.index(scene.theme)
        w = self.tp[ti].copy()
        present = scene.present()
        homes = [self.vocab.theme_names.index(self.vocab.category(c).theme) for c in present]
        if homes:
            w += 0.5 * self.tp[homes].mean(axis=0)
        w = w ** self.p.hallucination_sharpness
        for c in present:
            w[names.index(c)] = 0.0
        if w.sum() <= 0:
            return None
        return names[_weighted_index(rng, w)]

    def detail(self, scene: Scene, rng: random.Random, *, defects: bool) -> Detail:
        """A 3-6 sentence description: place, each object (colour/size/position), a relation,
        a count; with ``defects`` maybe an injected absent object and omitted small ones."""
        order = self.p.description_order
        keys = self.order_keys
        cats = (scene.categories_in_reading_order() if order == "reading"
                else sorted(scene.present(), key=keys.__getitem__) if keys is not None
                else scene.categories_by_salience())
        omitted: list[str] = []
        if defects:
            for c in cats:
                small_only = all(o.size == "small" for o in scene.instances(c))
                if small_only and len(omitted) < len(cats) - 1 and \
                        rng.random() < self.p.omit_small_rate:
                    omitted.append(c)
        mentioned = [c for c in cats if c not in omitted]

        opening = rng.choice((
            "The image shows {p}.", "This is a picture of {p}.", "The scene is set in {p}.",
            "The image depicts {p}.",
        )).format(p=self.place(rng, scene.theme))

        # Units: single instances are phrases that may be paired into one sentence; categories
        # with several instances get a sentence of their own.
        # In a fixed order (reading, category, rank) a multi-instance sentence keeps its place
        # among the singles (a str entry there); by salience it goes to a random place, as
        # GPT-written text would.
        singles: list = []     # (noun phrase, location phrase), or a whole sentence
        multis: list[str] = []
        fixed = order == "reading" or keys is not None
        for c in mentioned:
            insts = scene.instances(c)
            if len(insts) == 1:
                singles.append((self.np_(rng, insts[0]), self.loc(rng, insts[0].region)))
            else:
                (singles if fixed else multis).append(self._multi_sentence(rng, c, insts))

        injected: list[str] = []
        tail: list[str] = []
        if defects and rng.random() < self.p.hallucination_rate:
            h = self.pick_absent(rng, scene)
            if h is not None:
                injected.append(h)
                col = (self.vocab.category(h).typical_color
                       if rng.random() < self.p.color_prior_prob else rng.choice(
                           list(self.vocab.colors)))
                fake = SceneObject(h, col, "large", (0, 0, 1, 1), rng.choice(REGIONS))
                if rng.random() < 0.5 or not mentioned:
                    # Indistinguishable from a true object sentence: at a random position, or
                    # in category order at the place its category takes.
                    at = (sum(keys[c] < keys[h] for c in mentioned) if keys is not None
                          else rng.randrange(len(singles) + 1))
                    singles.insert(at, (self.np_(rng, fake, size_prob=0.2),
                                        self.loc(rng, fake.region)))
                else:
                    anchor = self.noun(rng, mentioned[0])
                    tail.append(rng.choice((
                        "There is also {a} near the {b}.",
                        "Next to the {b}, there is also {a}.",
                        "{A} can also be seen close to the {b}.",
                    )).format(a=with_article(self.noun(rng, h)), b=anchor,
                              A=cap(with_article(self.noun(rng, h)))))

        body: list[str] = []
        pair = len(singles) + len(multis) > 3
        i = 0
        while i < len(singles):
            if isinstance(singles[i], str):
                body.append(singles[i])
                i += 1
            elif pair and i + 1 < len(singles) and not isinstance(singles[i + 1], str):
                (n1, l1), (n2, l2) = singles[i], singles[i + 1]
                body.append(rng.choice((
                    f"There is {n1} {l1} and {n2} {l2}.",
                    f"{cap(n1)} is {l1}, while {n2} is {l2}.",
                )))
                i += 2
            else:
                n1, l1 = singles[i]
                body.append(rng.choice((
                    f"There is {n1} {l1}.",
                    f"{cap(n1)} can be seen {l1}.",
                    f"{cap(l1)}, there is {n1}.",
                    f"{cap(n1)} is {l1}.",
                )))
                i += 1
        for s in multis:
            body.insert(rng.randrange(len(body) + 1), s)

        extra: list[str] = []
        rel = self._relation_sentence(rng, scene, mentioned)
        if rel and rng.random() < self.p.relation_sentence_prob:
            extra.append(rel)
        if not omitted and rng.random() < self.p.count_sentence_prob:
            n = len(scene.objects)
            extra.append("There is only one object in the image." if n == 1 else rng.choice((
                f"In total, there are {number_word(n)} objects in the image.",
                f"Altogether, {number_word(n)} objects are visible.",
            )))
        text = " ".join([opening, *body, *extra, *tail])
        return Detail(text=text, injected=injected, omitted=omitted)

    def _multi_sentence(self, rng: random.Random, c: str, insts: list[SceneObject]) -> str:
        n = number_word(len(insts))
        pl = self.noun(rng, c, plural=True)
        colors = {o.color for o in insts}
        locs = [self.loc(rng, o.region) for o in insts]
        if len(colors) == 1:
            group = colored(c, pl, insts[0].color)
            if len({o.region for o in insts}) == 1:
                return f"There are {n} {group} {locs[0]}."
            return f"There are {n} {group}, " + join_and([f"one {l}" for l in locs]) + "."
        if c in WEARS_COLOR:
            parts = [f"one in {o.color} {l}" for o, l in zip(insts, locs)]
        else:
            parts = [f"{with_article(o.color)} one {l}" for o, l in zip(insts, locs)]
        return f"There are {n} {pl}: " + join_and(parts) + "."

    def _relation_sentence(self, rng: random.Random, scene: Scene, mentioned: list[str]
                           ) -> str | None:
        singles = [c for c in mentioned if len(scene.instances(c)) == 1]
        pairs = [(a, b) for a in singles for b in singles if a < b]
        rng.shuffle(pairs)
        for a, b in pairs:
            if rng.random() < 0.5:
                a, b = b, a
            r = relation(scene.instances(a)[0], scene.instances(b)[0])
            if r:
                return f"The {self.noun(rng, a)} is {r} the {self.noun(rng, b)}."
        return None

    # -- question answering ----------------------------------------------------------------
    def existence(self, rng: random.Random, scene: Scene, label: bool) -> tuple[str, str, str]:
        """(question, answer, object) with a present (label True) or absent object."""
        names = self.vocab.names
        present = scene.present()
        if label:
            obj = rng.choice(sorted(present))
        else:
            absent = [c for c in names if c not in present]
            if rng.random() < self.p.existence_adversarial_prob:
                obj = self.pick_absent(rng, scene) or rng.choice(absent)
            else:
                obj = rng.choice(absent)
        q = rng.choice(EXISTENCE_QUESTIONS).format(a=with_article(self.noun(rng, obj)))
        if rng.random() < 0.5:
            q += " " + rng.choice(YESNO_SUFFIXES)
        return q, "Yes" if label else "No", obj

    def count(self, rng: random.Random, scene: Scene) -> tuple[str, str, str]:
        if rng.random() < self.p.count_absent_prob:
            obj = rng.choice([c for c in self.vocab.names if c not in scene.present()])
        else:
            obj = rng.choice(sorted(scene.present()))
        n = len(scene.instances(obj))
        q = rng.choice(COUNT_QUESTIONS).format(p=self.noun(rng, obj, plural=True))
        return f"{q} {SHORT_SUFFIX}", cap(number_word(n)), obj

    def color(self, rng: random.Random, scene: Scene) -> tuple[str, str, str] | None:
        singles = sorted(c for c in scene.present() if len(scene.instances(c)) == 1)
        if not singles:
            return None
        obj = rng.choice(singles)
        qs = WEAR_QUESTIONS if obj in WEARS_COLOR else COLOR_QUESTIONS
        q = rng.choice(qs).format(n=self.noun(rng, obj))
        return f"{q} {SHORT_SUFFIX}", cap(scene.instances(obj)[0].color), obj

    def position(self, rng: random.Random, scene: Scene) -> tuple[str, str, str] | None:
        """Either "where is the X" (answered by its region) or a yes/no relation question."""
        singles = sorted(c for c in scene.present() if len(scene.instances(c)) == 1)
        if not singles:
            return None
        if len(singles) >= 2 and rng.random() < 0.5:
            a, b = rng.sample(singles, 2)
            oa, ob = scene.instances(a)[0], scene.instances(b)[0]
            rels = [r for r in RELATIONS if holds(oa, ob, r) is not None]
            if rels:
                r = rng.choice(rels)
                q = (f"Is the {self.noun(rng, a)} {r} the {self.noun(rng, b)}? "
                     f"{rng.choice(YESNO_SUFFIXES)}")
                return q, "Yes" if holds(oa, ob, r) else "No", a
        obj = rng.choice(singles)
        o = scene.instances(obj)[0]
        name = self.noun(rng, obj)
        q = rng.choice(WHERE_QUESTIONS).format(n=name)
        return q, f"The {name} is {REGION_PHRASES[o.region][0]}.", obj

    def vqa(self, rng: random.Random, scene: Scene) -> tuple[str, str, str | None]:
        """A short-answer question (one word or phrase), the OCR-VQA/GQA analogue."""
        options: list[tuple[str, str, str | None]] = []
        by_color: dict[str, list[SceneObject]] = {}
        by_region: dict[str, list[SceneObject]] = {}
        for o in scene.objects:
            by_color.setdefault(o.color, []).append(o)
            by_region.setdefault(o.region, []).append(o)
        for col, objs in sorted(by_color.items()):
            if len(objs) == 1:
                options.append((f"What is the {col} object?", objs[0].category,
                                objs[0].category))
        for reg, objs in sorted(by_region.items()):
            if len(objs) == 1:
                options.append((f"What object is {REGION_PHRASES[reg][0]}?",
                                objs[0].category, objs[0].category))
        areas = sorted(scene.objects, key=lambda o: -o.area)
        if len(areas) == 1 or areas[0].area > 1.3 * areas[1].area:
            options.append(("What is the largest object in the image?", areas[0].category,
                            areas[0].category))
        theme = self.vocab.theme(scene.theme)
        options.append((rng.choice(("What kind of place is this?",
                                    "Where was this picture taken?")), theme.short, None))
        q, a, obj = rng.choice(options)
        return f"{q} {SHORT_SUFFIX}", cap(a), obj

    # -- records ---------------------------------------------------------------------------
    def records(self, scene: Scene, rng: random.Random, *, image: str, defects: bool,
                captions: list[str]) -> list[dict]:
        """All instruction records of one image (LLaVA conversation format)."""
        out: list[dict] = []
        base = f"{scene.split}-{scene.image_id:06d}"

        def add(task: str, k: int, question: str, answer: str, **extra) -> None:
            out.append({"id": f"{base}-{task}-{k}", "image": image, "image_id": scene.image_id,
                        "task": task,
                        "conversations": [
                            {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
                            {"from": "gpt", "value": answer}],
                        **extra})

        for k in range(self.p.detail_per_image):
            d = self.detail(scene, rng, defects=defects)
            add("detail", k, rng.choice(DETAIL_PROMPTS), d.text,
                injected_objects=d.injected, omitted_objects=d.omitted)
        for k in range(self.p.caption_per_image):
            add("caption", k, rng.choice(CAPTION_PROMPTS), rng.choice(captions))
        first = rng.random() < 0.5
        for k in range(self.p.existence_per_image):
            label = first if k % 2 == 0 else not first   # balanced yes/no
            q, a, obj = self.existence(rng, scene, label)
            add("existence", k, q, a, object=obj, label="yes" if label else "no")
        for k in range(self.p.count_per_image):
            q, a, obj = self.count(rng, scene)
            add("count", k, q, a, object=obj)
        for k in range(self.p.color_per_image):
            r = self.color(rng, scene)
            if r:
                add("color", k, r[0], r[1], object=r[2])
        for k in range(self.p.position_per_image):
            r = self.position(rng, scene)
            if r:
                add("position", k, r[0], r[1], object=r[2])
        for k in range(self.p.vqa_per_image):
            q, a, obj = self.vqa(rng, scene)
            add("vqa", k, q, a, object=obj)
        return out


def _weighted_index(rng: random.Random, w: np.ndarray) -> int:
    """Index drawn with probability proportional to ``w`` using a ``random.Random``."""
    r = rng.random() * float(w.sum())
    acc = 0.0
    for i, x in enumerate(w):
        acc += float(x)
        if r < acc and x > 0:
            return i
    return int(np.flatnonzero(w > 0)[-1])
