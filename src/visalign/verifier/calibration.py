"""Baseline scores of the verifier (FiSAO Sec. 3.3.2, Eq. 7) and separation statistics.

μ_gt and μ_hal are the mean verifier scores of the correct and of the hallucinated entity
tokens of the model's own responses on the training set (correct / hallucinated decided by the
ground-truth annotations, e.g. with CHAIR). Eq. 7 averages over all object tokens pooled
across responses (Σ_i Σ_j S / Σ_i |O_i|), which is the plain mean of the pooled list. S_min and
S_max (App. A.1.5, "the minimum and maximum possible scores") are taken as the observed
extremes over all scored entity tokens, or as percentiles to resist outliers.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np

from visalign.verifier.reward import Calibration


def auroc(pos_scores: Sequence[float], neg_scores: Sequence[float]) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + ½ P(tie) (Mann-Whitney U / n·m).

    Computed from mid-ranks, O((n + m) log(n + m)). Raises ValueError when either list is empty.
    """
    pos = np.asarray(list(pos_scores), dtype=np.float64)
    neg = np.asarray(list(neg_scores), dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"auroc needs scores in both groups (got {pos.size} positive, "
                         f"{neg.size} negative)")
    allv = np.concatenate([pos, neg])
    # Mid-ranks (1-based): a group of tied values occupying ranks a+1..b gets (a+1+b)/2 each,
    # so that ties count one half.
    _, inverse, counts = np.unique(allv, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid = (ends - counts + 1 + ends) / 2.0
    ranks = mid[inverse.reshape(-1)]
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def calibrate(token_scores_gt: Iterable[float], token_scores_hal: Iterable[float],
              lam: float = 0.0, *, other_scores: Iterable[float] = (),
              percentiles: tuple[float, float] | None = None, template: str = "a photo of a {}.",
              scale: float = 1.0, level: str = "token", pooling: str = "image",
              patch_labels: Sequence[str] = ()) -> Calibration:
    """Eq. 7 means and the normalisation range.

    Args:
        token_scores_gt: scores of correct entity tokens (pooled over responses).
        token_scores_hal: scores of hallucinated entity tokens.
        lam: margin λ stored with the calibration.
        other_scores: scores of further entity tokens that are neither (e.g. objects outside the
            annotated vocabulary); they only widen [S_min, S_max].
        percentiles: ``(lo, hi)`` e.g. ``(1, 99)`` -> S_min/S_max are those percentiles of all
            scores instead of the observed min/max.
        template, scale, level, pooling, patch_labels: recorded with the result (how the
            scores were computed).

    Returns:
        :class:`Calibration` (with the AUROC of gt vs hal scores).
    """
    gt = [float(x) for x in token_scores_gt]
    hal = [float(x) for x in token_scores_hal]
    if not gt or not hal:
        raise ValueError(f"calibrate needs scores of both correct and hallucinated entities "
                         f"(got {len(gt)} correct, {len(hal)} hallucinated); generate more "
                         "responses or use a larger calibration set")
    every = np.asarray(gt + hal + [float(x) for x in other_scores], dtype=np.float64)
    if not np.all(np.isfinite(every)):
        raise ValueError("calibrate: scores contain NaN or inf")
    if percentiles is None:
        s_min, s_max = float(every.min()), float(every.max())
    else:
        lo, hi = percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {percentiles}")
        s_min, s_max = (float(v) for v in np.percentile(every, [lo, hi]))
    mu_gt = float(np.mean(gt))                                                  # Eq. 7
    mu_hal = float(np.mean(hal))                                                # Eq. 7
    if mu_hal >= mu_gt:
        warnings.warn(f"verifier does not separate correct from hallucinated entities "
                      f"(mu_gt={mu_gt:.4g} <= mu_hal={mu_hal:.4g}); rewards will be noise",
                      stacklevel=2)
    if mu_gt + lam >= s_max or mu_hal - lam <= s_min:
        warnings.warn(f"margin lam={lam} puts a threshold outside [S_min, S_max] = "
                      f"[{s_min:.4g}, {s_max:.4g}]: that reward branch can never fire",
                      stacklevel=2)
    a = auroc(gt, hal)
    return Calibration(mu_gt=mu_gt, mu_hal=mu_hal, s_min=s_min, s_max=s_max, n_gt=len(gt),
                       n_hal=len(hal), lam=float(lam), template=template, scale=float(scale),
                       level=level, auroc=None if math.isnan(a) else a, pooling=pooling,
                       patch_labels=list(patch_labels))
