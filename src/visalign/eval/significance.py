"""Are two models' CHAIR scores really different? Paired bootstrap over evaluation images.

CHAIR on a few hundred descriptions is noisy: at CHAIR_s ≈ 35 % over 150 captions one standard
error is about 4 points, the size of most method effects on the micro-world. Both models describe
the same images, so the honest comparison resamples *images* (with replacement), recomputes
CHAIR_s (share of captions with a hallucination), CHAIR_i (hallucinated / all mentions, a ratio
of sums) and their average on the resample for both models, and reports the percentile interval
of the difference.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = ["paired_chair_bootstrap", "paired_ratio_shift_ci"]


def _per_image(captions: Sequence[Mapping]) -> dict[Any, tuple[int, int, int]]:
    """image id -> (caption has a hallucination, hallucinated mentions, all mentions)."""
    out = {}
    for c in captions:
        men = c.get("mentions", [])
        hal = sum(bool(m.get("hallucinated")) for m in men)
        key = (c.get("image_id"), c.get("question_id", c.get("id")))
        out[key] = (int(bool(c.get("chair_s", hal > 0))), hal, len(men))
    return out


def _metrics(rows: Any) -> tuple[float, float, float]:
    """(chair_s, chair_i, chair) of a (n, 3) array of per-caption counts."""
    s = float(rows[:, 0].mean()) if len(rows) else 0.0
    men = rows[:, 2].sum()
    i = float(rows[:, 1].sum() / men) if men else 0.0
    return s, i, (s + i) / 2


def paired_chair_bootstrap(base: Sequence[Mapping], other: Sequence[Mapping], *,
                           n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Difference ``other − base`` of CHAIR_s, CHAIR_i and CHAIR with a paired bootstrap CI.

    ``base``/``other``: the ``captions`` lists of two CHAIR results (``Chair.evaluate``) on the
    same prompts; only captions present in both (matched by image and question id) count.
    Returns ``{"n", "base", "other", "delta", "ci", "p_lower"}`` where ``p_lower`` is the share
    of resamples in which ``other`` scores lower (better) than ``base``.
    """
    import numpy as np

    a, b = _per_image(base), _per_image(other)
    keys = sorted(set(a) & set(b), key=str)
    if not keys:
        raise ValueError("no caption in common: were both models evaluated on the same prompts?")
    A = np.array([a[k] for k in keys], dtype=float)
    B = np.array([b[k] for k in keys], dtype=float)
    names = ("chair_s", "chair_i", "chair")
    ma, mb = _metrics(A), _metrics(B)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    deltas = np.array([[y - x for x, y in zip(_metrics(A[r]), _metrics(B[r]))] for r in idx])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {
        "n": len(keys),
        "base": dict(zip(names, ma)),
        "other": dict(zip(names, mb)),
        "delta": {k: y - x for k, x, y in zip(names, ma, mb)},
        "ci": {k: [float(np.percentile(deltas[:, j], lo)), float(np.percentile(deltas[:, j], hi))]
               for j, k in enumerate(names)},
        "p_lower": {k: float((deltas[:, j] < 0).mean()) for j, k in enumerate(names)},
        "level": level, "n_boot": n_boot,
    }


def paired_ratio_shift_ci(base: Sequence[Sequence[float]], other: Sequence[Sequence[float]], *,
                          n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile interval of ``sum(num_o)/sum(den_o) − sum(num_b)/sum(den_b)`` under a paired
    bootstrap over units (answers, images).

    ``base``/``other``: one ``(num, den)`` pair per unit, aligned (row k of both is the same
    unit). A ratio of sums, such as the mean verifier score of all mentions or CHAIR_i, weights
    each unit by its count, and its units' items are not independent: resampling the units keeps
    both facts. Resamples where either side has a zero denominator are dropped.
    """
    import numpy as np

    A = np.asarray(base, dtype=float).reshape(-1, 2)
    B = np.asarray(other, dtype=float).reshape(-1, 2)
    if len(A) != len(B):
        raise ValueError(f"paired_ratio_shift_ci: {len(A)} base units against {len(B)} other")
    if not len(A):
        raise ValueError("paired_ratio_shift_ci: no units")
    idx = np.random.default_rng(seed).integers(0, len(A), size=(n_boot, len(A)))
    sa, sb = A[idx].sum(axis=1), B[idx].sum(axis=1)  # (n_boot, 2): summed num, den
    ok = (sa[:, 1] > 0) & (sb[:, 1] > 0)
    if not ok.any():
        raise ValueError("paired_ratio_shift_ci: every resample has a side with no items")
    diffs = sb[ok, 0] / sb[ok, 1] - sa[ok, 0] / sa[ok, 1]
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return [float(np.percentile(diffs, lo)), float(np.percentile(diffs, hi))]
