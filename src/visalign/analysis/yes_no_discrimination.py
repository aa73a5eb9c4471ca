"""Does a model still *tell* present from absent objects, or only answer "Yes" more or less
often? Separates POPE's two failure modes.

On yes/no questions about objects (POPE's), the teacher-forced log-odds
log P(Yes) − log P(No) of the first answer token gives two numbers: its mean (the bias towards
one answer) and its AUROC for present vs absent objects (the discrimination, independent of any
threshold). A method whose mean moves while the AUROC holds has learned a bias, not lost
grounding. :func:`verifier_discrimination` does the same for FiSAO's verifier score
S(object, image): how much a reward built from it could teach about these questions at best.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from visalign.io import DataError
from visalign.verifier.calibration import auroc


def _labels(records: Sequence[dict]) -> np.ndarray:
    for i, r in enumerate(records):
        if r.get("label") not in ("yes", "no"):
            raise DataError(None, f"label must be 'yes' or 'no', got {r.get('label')!r}",
                            record=i, field="label")
    return np.array([r["label"] == "yes" for r in records])


def score_stats(scores: Sequence[float], present: Sequence[bool]) -> dict:
    """Bias and discrimination of per-question yes scores (log-odds, 0 = undecided).

    ``mean_log_odds_yes`` (bias), ``auroc`` (present vs absent), ``accuracy_at_0`` and
    ``yes_rate_at_0`` (answering Yes when the score is above 0), ``n``."""
    s, y = np.asarray(scores, dtype=float), np.asarray(present, dtype=bool)
    if s.shape != y.shape or not s.size:
        raise ValueError(f"need one label per score (got {s.size} scores, {y.size} labels)")
    return {"mean_log_odds_yes": round(float(s.mean()), 4),
            "auroc": round(float(auroc(s[y].tolist(), s[~y].tolist())), 4),
            "accuracy_at_0": round(float(((s > 0) == y).mean()), 4),
            "yes_rate_at_0": round(float((s > 0).mean()), 4), "n": int(s.size)}


def threshold_stats(scores: Sequence[float], present: Sequence[bool], mu_gt: float,
                    mu_hal: float) -> dict:
    """Where FiSAO's Eq. 8 thresholds put verifier scores of present / absent objects: the share
    of present objects above ``mu_gt`` and below ``mu_hal``, of absent ones below ``mu_hal``,
    and the accuracy of answering Yes above ``mu_hal`` or above the midpoint of the two."""
    s, y = np.asarray(scores, dtype=float), np.asarray(present, dtype=bool)
    mid = (mu_gt + mu_hal) / 2
    return {"present_above_mu_gt": round(float((s[y] > mu_gt).mean()), 4),
            "present_below_mu_hal": round(float((s[y] < mu_hal).mean()), 4),
            "absent_below_mu_hal": round(float((s[~y] < mu_hal).mean()), 4),
            "accuracy_at_mu_hal": round(float(((s > mu_hal) == y).mean()), 4),
            "accuracy_at_midpoint": round(float(((s > mid) == y).mean()), 4)}


def _images(records: Sequence[dict], image_root: str | Path | None) -> list:
    from PIL import Image

    root = Path(image_root) if image_root else None
    return [Image.open(root / r["image"] if root else r["image"]).convert("RGB")
            for r in records]


def yes_no_discrimination(vlm: Any, records: Sequence[dict],
                          image_root: str | Path | None = None) -> dict:
    """:func:`score_stats` of a VLM's teacher-forced yes/no log-odds on POPE records
    (``image``, ``question``, ``label``; answer records of ``visalign eval pope`` work)."""
    from visalign.eval.grounding import yes_no_scores

    y = _labels(records)
    s = yes_no_scores(vlm, _images(records, image_root), [r["question"] for r in records])
    return score_stats(s, y)


def verifier_discrimination(scorer: Any, records: Sequence[dict],
                            image_root: str | Path | None = None,
                            calibration: dict | None = None) -> dict:
    """AUROC of the verifier's S(object, image) for present vs absent objects on POPE records
    (``image``, ``object``, ``label``), with a
    :class:`~visalign.verifier.scorer.ClipScorer`; with a calibration dict (``mu_gt``,
    ``mu_hal``) also :func:`threshold_stats`."""
    y = _labels(records)
    emb = scorer.image_embeddings(_images(records, image_root))
    s = np.array([float(scorer.score([r["object"]], emb[i]).reshape(-1)[0])
                  for i, r in enumerate(records)])
    out = {"auroc": round(float(auroc(s[y].tolist(), s[~y].tolist())), 4), "n": len(records)}
    if calibration:
        out.update(threshold_stats(s, y, calibration["mu_gt"], calibration["mu_hal"]))
    return out
