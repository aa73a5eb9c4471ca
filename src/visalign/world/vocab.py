"""The micro-world's vocabulary: object categories, themes, colours, sizes and regions.

Categories use COCO names (so CHAIR tables read like COCO ones) and are grouped into five themes
with strong co-occurrence, the way fork/knife/dining table co-occur in COCO. Each theme lists its
members in frequency order; the sampler turns that order into a Zipf-like skew, so a few objects
("person", "car", "cup") dominate like "person" does in COCO. Some categories also appear, with a
small weight, in a second theme (a dog on a street, a bird on a beach): co-occurrence is strong
but not a partition.

Every category has a glyph = (shape, pattern): shapes repeat across themes and patterns repeat
across shapes, so only the pair identifies a category. Within one theme all shapes differ. At
small sizes the inner pattern blurs away and only the shape (plus the theme's background) is
left: the model must guess, and its guess follows the co-occurrence prior, which is exactly how
real VLMs hallucinate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from visalign.data.words import plural

# Shape families (unit-box polygons live in render.py) and inner patterns.
SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "cross", "star", "bar")
PATTERNS = ("solid", "stripes", "vstripes", "dot", "hole")

SIZES = ("small", "large")

# 3x3 grid of regions, named as a caption would name them.
REGIONS = ("top left", "top", "top right", "left", "center", "right",
           "bottom left", "bottom", "bottom right")

# Phrases per region; the first one is canonical (used in short answers).
REGION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left corner", "at the top left"),
    "top": ("at the top", "near the top of the image"),
    "top right": ("in the top right corner", "at the top right"),
    "left": ("on the left", "on the left side of the image"),
    "center": ("in the center", "in the middle of the image"),
    "right": ("on the right", "on the right side of the image"),
    "bottom left": ("in the bottom left corner", "at the bottom left"),
    "bottom": ("at the bottom", "near the bottom of the image"),
    "bottom right": ("in the bottom right corner", "at the bottom right"),
}

# Relative positions between two objects (A <rel> B).
RELATIONS = ("to the left of", "to the right of", "above", "below")
RELATION_INVERSE = {"to the left of": "to the right of", "to the right of": "to the left of",
                    "above": "below", "below": "above"}

# Object colours. No "orange" (a COCO category: CHAIR with the COCO table would count the colour
# as a fruit) and no greys/browns (they vanish against the backgrounds).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 215),
    "yellow": (240, 215, 40),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "purple": (140, 60, 190),
    "pink": (250, 130, 190),
}

# Categories whose colour describes clothing ("a person in red", not "a red person").
WEARS_COLOR = frozenset({"person"})

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten")

@dataclass(frozen=True)
class Category:
    """One object category: COCO name, surface forms, home theme, glyph and usual colour."""

    id: int
    name: str
    synonyms: tuple[str, ...]
    theme: str
    shape: str
    pattern: str
    typical_color: str
    plural: str = ""

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "plural": self.plural,
                "synonyms": list(self.synonyms), "theme": self.theme, "shape": self.shape,
                "pattern": self.pattern, "typical_color": self.typical_color}

    @classmethod
    def from_dict(cls, d: dict) -> "Category":
        return cls(id=int(d["id"]), name=d["name"], synonyms=tuple(d["synonyms"]),
                   theme=d["theme"], shape=d["shape"], pattern=d["pattern"],
                   typical_color=d["typical_color"], plural=d.get("plural") or plural(d["name"]))


@dataclass(frozen=True)
class Theme:
    """A scene type: its background and its members in frequency order (with weights)."""

    name: str
    short: str                       # one-word/phrase answer: "kitchen", "living room"
    places: tuple[str, ...]          # noun phrases: "a kitchen", "a tiled kitchen"
    in_places: tuple[str, ...]       # locatives: "in a kitchen", "on a kitchen counter"
    background: tuple[int, int, int]
    texture: str                     # render.py background family
    members: tuple[tuple[str, float], ...]   # (category, relative weight before Zipf skew)

    def to_dict(self) -> dict:
        return {"name": self.name, "short": self.short, "places": list(self.places),
                "in_places": list(self.in_places), "background": list(self.background),
                "texture": self.texture, "members": [[c, w] for c, w in self.members]}

    @classmethod
    def from_dict(cls, d: dict) -> "Theme":
        return cls(name=d["name"], short=d["short"], places=tuple(d["places"]),
                   in_places=tuple(d["in_places"]), background=tuple(d["background"]),
                   texture=d["texture"], members=tuple((c, float(w)) for c, w in d["members"]))


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


# Description / scene-text orders defined by a fixed sort key per category (Vocab.order_keys).
KEYED_ORDERS = ("category", "rank")


@dataclass(frozen=True)
class Vocab:
    """Categories (ids 1..N in order), themes and colours; serialisable into world.json."""

    categories: tuple[Category, ...]
    themes: tuple[Theme, ...]
    colors: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(COLORS))

    def __post_init__(self) -> None:
        names = [c.name for c in self.categories]
        if len(set(names)) != len(names):
            raise ValueError("duplicate category names in vocabulary")
        glyphs = [(c.shape, c.pattern) for c in self.categories]
        if len(set(glyphs)) != len(glyphs):
            raise ValueError("two categories share a glyph (shape, pattern)")
        forms: dict[str, str] = {}
        for c in self.categories:
            for f in (c.name, *c.synonyms):
                if forms.setdefault(f, c.name) != c.name:
                    raise ValueError(f"surface form {f!r} names two categories")
        for t in self.themes:
            shapes = [self.category(m).shape for m, _ in t.members
                      if self.category(m).theme == t.name]
            if len(set(shapes)) != len(shapes):
                raise ValueError(f"theme {t.name!r} has two home categories with one shape")

    # -- lookups ---------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    @property
    def theme_names(self) -> list[str]:
        return [t.name for t in self.themes]

    def category(self, name: str) -> Category:
        for c in self.categories:
            if c.name == name:
                return c
        raise KeyError(f"unknown category {name!r}")

    def theme(self, name: str) -> Theme:
        for t in self.themes:
            if t.name == name:
                return t
        raise KeyError(f"unknown theme {name!r}")

    def category_id(self, name: str) -> int:
        return self.category(name).id

    def order_keys(self, order: str) -> dict[str, tuple[int, ...]]:
        """Sort key per category name of a fixed description order: ``category`` = the id
        order (home themes in blocks, frequent first within each); ``rank`` = themes
        interleaved (every theme's most frequent category, then every theme's second, ...), so
        the category after a present one is rarely a co-occurring one."""
        if order == "category":
            return {c.name: (c.id,) for c in self.categories}
        if order == "rank":
            themes = self.theme_names
            seen: dict[str, int] = {}
            keys = {}
            for c in self.categories:
                r = seen.get(c.theme, 0)
                seen[c.theme] = r + 1
                keys[c.name] = (r, themes.index(c.theme))
            return keys
        raise ValueError(f"fixed order {order!r} is not 'category' or 'rank'")

    def synonyms_table(self) -> list[list[str]]:
        """CHAIR table rows: ``[name, synonym, ...]``. Plurals are left out (CHAIR singularises)
        except irregular ones a singulariser may miss (``people``)."""
        rows = []
        for c in self.categories:
            row = [c.name, *c.synonyms]
            if c.plural and not c.plural.startswith(c.name):   # people, knives
                row.append(c.plural)
            rows.append(row)
        return rows

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"categories": [c.to_dict() for c in self.categories],
                "themes": [t.to_dict() for t in self.themes],
                "colors": {k: list(v) for k, v in self.colors.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        return cls(categories=tuple(Category.from_dict(c) for c in d["categories"]),
                   themes=tuple(Theme.from_dict(t) for t in d["themes"]),
                   colors={k: tuple(v) for k, v in d["colors"].items()})


# name, synonyms, home theme, shape, pattern, typical colour. Order within a theme = frequency
# rank (most frequent first), ids follow this table.
_CATEGORY_TABLE: tuple[tuple[str, tuple[str, ...], str, str, str, str], ...] = (
    # kitchen
    ("cup", ("mug",), "kitchen", "square", "hole", "white"),
    ("bowl", ("dish",), "kitchen", "circle", "stripes", "white"),
    ("bottle", ("flask",), "kitchen", "bar", "dot", "green"),
    ("fork", ("dinner fork",), "kitchen", "cross", "vstripes", "white"),
    ("knife", ("blade",), "kitchen", "triangle", "solid", "black"),
    ("hot dog", ("hotdog", "sausage"), "kitchen", "hexagon", "stripes", "red"),
    # street
    ("person", ("man", "woman", "pedestrian"), "street", "bar", "solid", "blue"),
    ("car", ("automobile",), "street", "square", "stripes", "red"),
    ("traffic light", ("stoplight", "traffic signal"), "street", "circle", "dot", "green"),
    ("bus", ("coach",), "street", "hexagon", "vstripes", "yellow"),
    ("bicycle", ("bike",), "street", "diamond", "hole", "blue"),
    ("stop sign", ("sign",), "street", "star", "solid", "red"),
    # park
    ("dog", ("puppy",), "park", "hexagon", "solid", "black"),
    ("bench", ("park bench",), "park", "square", "vstripes", "black"),
    ("bird", ("pigeon", "seagull"), "park", "triangle", "dot", "white"),
    ("frisbee", ("flying disc",), "park", "circle", "hole", "yellow"),
    ("kite", ("paper kite",), "park", "diamond", "stripes", "pink"),
    ("cat", ("kitten",), "park", "star", "dot", "black"),
    # living room
    ("tv", ("television", "monitor"), "living", "square", "solid", "black"),
    ("laptop", ("computer",), "living", "triangle", "stripes", "white"),
    ("book", ("novel",), "living", "bar", "stripes", "blue"),
    ("clock", ("wall clock",), "living", "circle", "solid", "white"),
    ("keyboard", ("keypad",), "living", "diamond", "dot", "black"),
    ("teddy bear", ("teddy", "stuffed animal"), "living", "star", "hole", "pink"),
    # beach
    ("umbrella", ("parasol",), "beach", "triangle", "vstripes", "red"),
    ("surfboard", ("surf board",), "beach", "bar", "vstripes", "yellow"),
    ("boat", ("ship",), "beach", "hexagon", "dot", "white"),
    ("sports ball", ("ball", "football"), "beach", "circle", "vstripes", "white"),
    ("chair", ("seat",), "beach", "cross", "solid", "blue"),
    ("handbag", ("purse",), "beach", "diamond", "vstripes", "pink"),
)

# Guests: (theme, category, weight). A guest joins a theme at the tail of its frequency list.
_GUESTS: tuple[tuple[str, str, float], ...] = (
    ("kitchen", "person", 0.5), ("kitchen", "book", 0.3),
    ("street", "dog", 0.5), ("street", "handbag", 0.3),
    ("park", "person", 0.9), ("park", "bicycle", 0.4), ("park", "sports ball", 0.3),
    ("living", "cup", 0.5), ("living", "cat", 0.4), ("living", "chair", 0.4),
    ("beach", "person", 0.8), ("beach", "bird", 0.4), ("beach", "kite", 0.3),
    ("beach", "bottle", 0.3),
)

_THEME_TABLE: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[int, int, int], str],
                    ...] = (
    ("kitchen", "kitchen", ("a kitchen", "a tiled kitchen", "a bright kitchen"),
     ("in a kitchen", "on a kitchen counter", "in a tiled kitchen"), (172, 138, 102), "tiles"),
    ("street", "street", ("a street", "a city street", "a busy road"),
     ("on a street", "on a city street", "in a city"), (104, 106, 112), "road"),
    ("park", "park", ("a park", "a grassy park", "a lawn in a park"),
     ("in a park", "on the grass", "in a grassy park"), (92, 134, 78), "grass"),
    ("living", "living room", ("a living room", "a cozy living room", "a quiet living room"),
     ("in a living room", "in a cozy living room", "inside a house"), (128, 112, 150),
     "wallpaper"),
    ("beach", "beach", ("a beach", "a sandy beach", "a beach by the sea"),
     ("on a beach", "on the sand", "on a sandy beach"), (204, 186, 140), "sand"),
)


@lru_cache(maxsize=1)
def default_vocab() -> Vocab:
    """The built-in vocabulary (30 categories in 5 themes)."""
    cats = tuple(Category(id=i + 1, name=n, synonyms=s, theme=t, shape=sh, pattern=pa,
                          typical_color=col, plural=plural(n))
                 for i, (n, s, t, sh, pa, col) in enumerate(_CATEGORY_TABLE))
    themes = []
    for name, short, places, in_places, bg, texture in _THEME_TABLE:
        members = [(c.name, 1.0) for c in cats if c.theme == name]
        members += [(c, w) for t, c, w in _GUESTS if t == name]
        themes.append(Theme(name=name, short=short, places=places, in_places=in_places,
                            background=bg, texture=texture, members=tuple(members)))
    return Vocab(categories=cats, themes=tuple(themes))
