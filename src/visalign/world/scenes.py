"""Scene sampling: which objects, what they look like, where they are.

A scene picks a theme, then 1-5 distinct categories, mostly from the theme (``in_theme_prob``)
with a Zipf-like skew inside it, the rest from outside the theme (out-of-context objects, like a
surfboard in a kitchen, which a prior-driven model will miss or mislabel). Sometimes one category
gets 1-2 extra instances (counting), and a share of instances are small (5-8 px at 64 px: hard to
see, a deliberate source of hallucination). Boxes are placed by rejection sampling with bounded
overlap, so small objects are never fully hidden.

All randomness comes from the ``numpy.random.Generator`` passed in (seeded per image by the
caller), never from global state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from visalign.world.vocab import REGIONS, Vocab

# Width/height ratio per shape family: everything fills its box, bars are tall.
SHAPE_ASPECT = {"bar": 0.5}


@dataclass(frozen=True)
class SceneParams:
    """The knobs of scene sampling (a view of WorldConfig, so scenes.py has no config import)."""

    image_size: int = 64
    distinct_count_weights: tuple[float, ...] = (0.15, 0.3, 0.3, 0.17, 0.08)
    max_objects: int = 6
    in_theme_prob: float = 0.85
    zipf_exponent: float = 1.0
    duplicate_prob: float = 0.3
    duplicate_same_color_prob: float = 0.6
    small_object_prob: float = 0.3
    color_prior_prob: float = 0.5
    large_size: tuple[int, int] = (14, 22)   # pixels at 64 px; scaled with image_size
    small_size: tuple[int, int] = (5, 8)
    max_overlap: float = 0.15
    placement_tries: int = 60


@dataclass
class SceneObject:
    """One object instance. ``bbox`` is COCO ``[x, y, w, h]`` in pixels (the glyph touches all
    four sides of its box)."""

    category: str
    color: str
    size: str
    bbox: tuple[int, int, int, int]
    region: str

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.bbox
        return x + w / 2.0, y + h / 2.0

    @property
    def area(self) -> int:
        return self.bbox[2] * self.bbox[3]


@dataclass
class Scene:
    """Ground truth of one image; objects are listed in drawing order (large first)."""

    image_id: int
    split: str
    theme: str
    width: int
    height: int
    objects: list[SceneObject] = field(default_factory=list)

    def present(self) -> set[str]:
        return {o.category for o in self.objects}

    def instances(self, category: str) -> list[SceneObject]:
        return [o for o in self.objects if o.category == category]

    def categories_by_salience(self) -> list[str]:
        """Distinct categories, largest instance first (ties: first drawn)."""
        best: dict[str, int] = {}
        for o in self.objects:
            best[o.category] = max(best.get(o.category, 0), o.area)
        return sorted(best, key=lambda c: -best[c])

    def categories_in_reading_order(self) -> list[str]:
        """Distinct categories by their first instance in reading order (:func:`reading_key`)."""
        key: dict[str, tuple[int, float]] = {}
        for o in self.objects:
            k = reading_key(o.region, o.center[0])
            key[o.category] = min(key.get(o.category, k), k)
        return sorted(key, key=lambda c: key[c])


def reading_key(region: str, cx: float) -> tuple[int, float]:
    """Sort key of reading order: the 3 x 3 grid's row of ``region`` top to bottom, then the
    centre x left to right (the order of the image's patch tokens)."""
    return REGIONS.index(region) // 3, cx


def region_of(cx: float, cy: float, width: int, height: int) -> str:
    """Name of the 3x3 grid cell containing the point."""
    col = min(2, max(0, int(cx * 3 // width)))
    row = min(2, max(0, int(cy * 3 // height)))
    return REGIONS[row * 3 + col]


def relation(a: SceneObject, b: SceneObject, margin: float = 4.0) -> str | None:
    """The dominant spatial relation "a <rel> b", or None when the centres are too close."""
    (ax, ay), (bx, by) = a.center, b.center
    dx, dy = bx - ax, by - ay
    if max(abs(dx), abs(dy)) < margin:
        return None
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def holds(a: SceneObject, b: SceneObject, rel: str, margin: float = 4.0) -> bool | None:
    """Whether "a <rel> b" is clearly true (True), clearly false (False) or unclear (None)."""
    (ax, ay), (bx, by) = a.center, b.center
    d = {"to the left of": bx - ax, "to the right of": ax - bx,
         "above": by - ay, "below": ay - by}[rel]
    if d >= margin:
        return True
    if -d >= margin:
        return False
    return None


def theme_probs(vocab: Vocab, zipf_exponent: float) -> np.ndarray:
    """(n_themes, n_categories) matrix: P(category | theme) with the Zipf skew applied.

    Member at rank r (0 = most frequent) gets ``weight / (r + 1) ** zipf_exponent``.
    """
    names = vocab.names
    out = np.zeros((len(vocab.themes), len(names)))
    for ti, t in enumerate(vocab.themes):
        for r, (c, w) in enumerate(t.members):
            out[ti, names.index(c)] = w / (r + 1) ** zipf_exponent
        out[ti] /= out[ti].sum()
    return out


def global_probs(vocab: Vocab, zipf_exponent: float) -> np.ndarray:
    """Marginal category frequency over themes (themes are equally likely)."""
    return theme_probs(vocab, zipf_exponent).mean(axis=0)


def _pick(rng: np.random.Generator, p: np.ndarray, exclude: list[int]) -> int | None:
    p = p.copy()
    p[exclude] = 0.0
    s = p.sum()
    if s <= 0:
        return None
    return int(rng.choice(len(p), p=p / s))


def sample_scene(rng: np.random.Generator, vocab: Vocab, params: SceneParams, *,
                 image_id: int, split: str) -> Scene:
    """Sample one scene (theme, categories, instances, boxes)."""
    names = vocab.names
    tp = theme_probs(vocab, params.zipf_exponent)
    gp = tp.mean(axis=0)
    ti = int(rng.integers(len(vocab.themes)))
    theme = vocab.themes[ti]
    in_theme = tp[ti] > 0

    w = np.asarray(params.distinct_count_weights, dtype=float)
    k = 1 + int(rng.choice(len(w), p=w / w.sum()))
    chosen: list[int] = []
    for _ in range(k):
        if rng.random() < params.in_theme_prob:
            c = _pick(rng, tp[ti], chosen)
        else:   # out-of-context object, drawn by global frequency
            c = _pick(rng, np.where(in_theme, 0.0, gp), chosen)
        if c is None:
            c = _pick(rng, gp, chosen)
        if c is not None:
            chosen.append(c)

    colors = list(vocab.colors)
    insts: list[tuple[str, str, str]] = []   # (category, color, size)

    def new_inst(cat: str) -> tuple[str, str, str]:
        typ = vocab.category(cat).typical_color
        col = typ if rng.random() < params.color_prior_prob else colors[
            int(rng.integers(len(colors)))]
        size = "small" if rng.random() < params.small_object_prob else "large"
        return cat, col, size

    for c in chosen:
        insts.append(new_inst(names[c]))
    if len(insts) < params.max_objects and rng.random() < params.duplicate_prob:
        src = insts[int(rng.integers(len(insts)))]
        extra = min(int(rng.integers(1, 3)), params.max_objects - len(insts))
        for _ in range(extra):
            cat, col, size = new_inst(src[0])
            if rng.random() < params.duplicate_same_color_prob:
                col = src[1]
            insts.append((cat, col, size))

    return Scene(image_id=image_id, split=split, theme=theme.name, width=params.image_size,
                 height=params.image_size, objects=_place(rng, vocab, params, insts))


def _place(rng: np.random.Generator, vocab: Vocab, params: SceneParams,
           insts: list[tuple[str, str, str]]) -> list[SceneObject]:
    """Give each instance a box; large ones first so small ones are drawn on top."""
    S = params.image_size
    scale = S / 64.0
    order = sorted(range(len(insts)), key=lambda i: (insts[i][2] != "large", i))
    placed: list[SceneObject] = []
    for i in order:
        cat, col, size = insts[i]
        lo, hi = params.large_size if size == "large" else params.small_size
        h = max(3, int(round(int(rng.integers(lo, hi + 1)) * scale)))
        w = max(2, int(round(h * SHAPE_ASPECT.get(vocab.category(cat).shape, 1.0))))
        w, h = min(w, S - 2), min(h, S - 2)
        for _ in range(params.placement_tries):
            x = int(rng.integers(1, S - w))
            y = int(rng.integers(1, S - h))
            box = (x, y, w, h)
            if all(_overlap(box, o.bbox) <= params.max_overlap for o in placed):
                placed.append(SceneObject(cat, col, size, box,
                                          region_of(x + w / 2, y + h / 2, S, S)))
                break
        # An instance that finds no room is dropped: the scene records only what is drawn.
    return placed


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection area as a fraction of the smaller box."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / max(1, min(a[2] * a[3], b[2] * b[3]))


__all__ = ["Scene", "SceneObject", "SceneParams", "sample_scene", "reading_key", "region_of",
           "relation", "holds", "theme_probs", "global_probs"]
