"""Rendering scenes to RGB images with PIL + numpy.

Each category is a glyph: a shape family filled with the object's colour, plus an inner pattern
(stripes, dot, hole) in a contrasting ink. Glyphs are drawn 4x supersampled and box-filtered down
to their pixel box, so a 20 px glyph shows its pattern clearly while a 6 px one is a blurred blob
whose pattern is gone (that is the point: small objects must be guessed). The glyph touches all
four sides of its box, so the recorded bbox is exact.

Backgrounds are a theme colour with a theme texture (tiles, road, grass, wallpaper, sand and
sea), a small per-image tint and mild per-pixel noise. Everything random comes from the
``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from visalign.world.scenes import SHAPE_ASPECT, Scene
from visalign.world.vocab import Vocab

_SS = 4            # supersampling factor
_DARK_INK = np.array([25.0, 25.0, 25.0])
_LIGHT_INK = np.array([235.0, 235.0, 235.0])


def _unit_polygon(shape: str) -> list[tuple[float, float]] | None:
    """Vertices in the unit box (touching all four sides); None for the circle."""
    if shape == "circle":
        return None
    if shape in ("square", "bar"):
        return [(0, 0), (1, 0), (1, 1), (0, 1)]
    if shape == "triangle":
        return [(0.5, 0), (1, 1), (0, 1)]
    if shape == "diamond":
        return [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)]
    if shape == "hexagon":
        return [(0.25, 0), (0.75, 0), (1, 0.5), (0.75, 1), (0.25, 1), (0, 0.5)]
    if shape == "cross":
        a, b = 0.32, 0.68
        return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b),
                (0, a), (a, a)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(ang), r * math.sin(ang)))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        return [((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=4096)
def glyph_masks(shape: str, pattern: str, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, ink) float masks of shape (h, w) in [0, 1] for one glyph at one pixel size."""
    W, H = w * _SS, h * _SS
    alpha = Image.new("L", (W, H), 0)
    ink = Image.new("L", (W, H), 0)
    da, di = ImageDraw.Draw(alpha), ImageDraw.Draw(ink)
    poly = _unit_polygon(shape)
    if poly is None:
        da.ellipse([0, 0, W - 1, H - 1], fill=255)
    else:
        da.polygon([(x * (W - 1), y * (H - 1)) for x, y in poly], fill=255)
    # The pattern is laid out relative to the box, so every size shows the same design.
    if pattern in ("stripes", "vstripes"):
        n_bands = 5   # ink on bands 1 and 3
        extent = H if pattern == "stripes" else W
        band = extent / n_bands
        for k in (1, 3):
            a, b = k * band, (k + 1) * band - 1
            if pattern == "stripes":
                di.rectangle([0, a, W - 1, b], fill=255)
            else:
                di.rectangle([a, 0, b, H - 1], fill=255)
    elif pattern in ("dot", "hole"):
        r = (0.2 if pattern == "dot" else 0.24) * min(W, H)
        box = [W / 2 - r, H / 2 - r, W / 2 + r, H / 2 + r]
        if pattern == "dot":
            di.ellipse(box, fill=255)
        else:
            da.ellipse(box, fill=0)
    elif pattern != "solid":
        raise ValueError(f"unknown pattern {pattern!r}")
    a = np.asarray(alpha.resize((w, h), Image.BOX), dtype=np.float64) / 255.0
    k = np.asarray(ink.resize((w, h), Image.BOX), dtype=np.float64) / 255.0
    return a, np.minimum(k, a)   # ink only where the glyph is


def ink_for(rgb: tuple[int, int, int]) -> np.ndarray:
    """Contrasting pattern ink: dark on light colours, light on dark ones."""
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return _DARK_INK if lum > 110 else _LIGHT_INK


def render_background(rng: np.random.Generator, theme_bg: tuple[int, int, int], texture: str,
                      size: int, *, noise: float = 5.0, texture_strength: float = 12.0,
                      tint: float = 10.0) -> np.ndarray:
    """(size, size, 3) float image of a theme background."""
    base = np.asarray(theme_bg, dtype=np.float64) + rng.uniform(-tint, tint, size=3)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size]
    s = texture_strength
    scale = size / 64.0
    if texture == "tiles":       # grout lines every 16 px
        period = max(4, int(round(16 * scale)))
        ox, oy = (int(v) for v in rng.integers(0, period, size=2))
        lines = ((xx + ox) % period == 0) | ((yy + oy) % period == 0)
        img[lines] -= s
    elif texture == "road":      # a dashed lane marking and darker kerbs
        y0 = int(rng.integers(size // 3, 2 * size // 3))
        dash = max(2, int(round(8 * scale)))
        lane = (np.abs(yy - y0) <= 0) & (((xx + int(rng.integers(dash))) // dash) % 2 == 0)
        img[lane] += 2 * s
        img[(yy < 3 * scale) | (yy >= size - 3 * scale)] -= s
    elif texture == "grass":     # lighter towards the top, speckled
        img += (s * (1 - yy / size))[..., None]
        img[..., 1] += rng.normal(0, s / 2, size=(size, size))
    elif texture == "wallpaper":  # faint vertical stripes
        period = max(3, int(round(8 * scale)))
        img[((xx + int(rng.integers(period))) // (period // 2 or 1)) % 2 == 0] += s / 2
    elif texture == "sand":      # a strip of sea at the top blending into sand
        horizon = int(rng.integers(size // 6, size // 4 + 1))
        sea = np.array([96.0, 150.0, 184.0])
        t = np.clip((yy - horizon) / max(1.0, 3 * scale), 0, 1)[..., None]
        img = sea * (1 - t) + img * t
    else:
        raise ValueError(f"unknown texture {texture!r}")
    if noise > 0:
        img += rng.normal(0.0, noise, size=img.shape)
    return img


def render_scene(scene: Scene, vocab: Vocab, rng: np.random.Generator, *,
                 noise: float = 5.0, texture_strength: float = 12.0) -> Image.Image:
    """Render ``scene`` to an RGB PIL image (objects in the scene's drawing order)."""
    theme = vocab.theme(scene.theme)
    img = render_background(rng, theme.background, theme.texture, scene.width, noise=noise,
                            texture_strength=texture_strength)
    for o in scene.objects:
        cat = vocab.category(o.category)
        x, y, w, h = o.bbox
        a, k = glyph_masks(cat.shape, cat.pattern, w, h)
        rgb = vocab.colors[o.color]
        col = np.asarray(rgb, dtype=np.float64)
        fg = col * (1 - k[..., None]) + ink_for(rgb) * k[..., None]
        region = img[y:y + h, x:x + w]
        img[y:y + h, x:x + w] = region * (1 - a[..., None]) + fg * a[..., None]
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def render_glyph(vocab: Vocab, category: str, size: int, color: str = "red",
                 background: tuple[int, int, int] = (128, 128, 128)) -> np.ndarray:
    """A single glyph on a flat background, (size, size, 3) uint8: for tests and inspection."""
    cat = vocab.category(category)
    w = max(2, int(round(size * SHAPE_ASPECT.get(cat.shape, 1.0))))
    a, k = glyph_masks(cat.shape, cat.pattern, w, size)
    img = np.broadcast_to(np.asarray(background, dtype=np.float64), (size, size, 3)).copy()
    rgb = vocab.colors[color]
    fg = np.asarray(rgb, dtype=np.float64) * (1 - k[..., None]) + ink_for(rgb) * k[..., None]
    x0 = (size - w) // 2
    img[:, x0:x0 + w] = img[:, x0:x0 + w] * (1 - a[..., None]) + fg * a[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def png_bytes(img: Image.Image) -> bytes:
    """Deterministic PNG encoding (no metadata, fixed compression)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
