"""What FiSAO's verifier would pay for naming each category where it is present vs absent.

For every CHAIR category and every image, the verifier's S(category, image) turned into the
Eq. 8 token reward (with the calibration's μ_gt, μ_hal and λ), averaged per category over the
images that hold it and those that do not. A category whose absent-image reward is not clearly
below its present-image reward cannot be taught by the verifier; present objects earning about
0 on average mean that penalties on correct mentions push probability towards other object
words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def category_reward_table(rewards: Any, present: Any, categories: Sequence[str]) -> dict:
    """Per-category reward summary from an (images, categories) reward matrix and a boolean
    matrix of the same shape saying which category each image holds.

    Per category: mean reward on images with it (``present``) and without it (``absent``),
    ``p_positive_absent`` (share of absent images it would still be rewarded on) and
    ``n_present``; over the categories seen both ways: their mean present / absent reward and
    the categories rewarded on average when absent."""
    import torch

    r = torch.as_tensor(rewards, dtype=torch.float32)
    p = torch.as_tensor(present, dtype=torch.bool)
    if r.shape != p.shape or r.dim() != 2 or r.shape[1] != len(categories):
        raise ValueError(f"rewards {tuple(r.shape)} and present {tuple(p.shape)} must both be "
                         f"(images, {len(categories)})")
    per = {}
    for j, c in enumerate(categories):
        on, off = r[:, j][p[:, j]], r[:, j][~p[:, j]]
        per[c] = {"present": round(float(on.mean()), 4) if len(on) else None,
                  "absent": round(float(off.mean()), 4) if len(off) else None,
                  "p_positive_absent": round(float((off > 0).float().mean()), 4)
                  if len(off) else None,
                  "n_present": int(len(on))}
    both = [v for v in per.values() if v["present"] is not None and v["absent"] is not None]
    if not both:
        raise ValueError("no category is both present in some image and absent in another")
    return {"n_images": int(r.shape[0]),
            "mean_reward_present": round(sum(v["present"] for v in both) / len(both), 4),
            "mean_reward_absent": round(sum(v["absent"] for v in both) / len(both), 4),
            "categories_rewarded_when_absent": sorted(
                c for c, v in per.items() if v["absent"] is not None and v["absent"] > 0),
            "per_category": per}


def category_rewards(calibration: str | Path, verifier: str | Path, images: Sequence[Any],
                     gt_objects: Sequence[set[str]], categories: Sequence[str]) -> dict:
    """:func:`category_reward_table` for PIL ``images`` whose present categories are
    ``gt_objects``, scored by the verifier CLIP dir with a ``calibration.json`` (its template,
    pooling and patch labels, so the scores are the ones FiSAO's trainer would compute)."""
    import torch

    from visalign.verifier.reward import Calibration, normalized_reward
    from visalign.verifier.scorer import ClipScorer

    cal = Calibration.from_json(calibration)
    sc = ClipScorer.from_pretrained(str(verifier), template=cal.template, pooling=cal.pooling,
                                    patch_labels=cal.patch_labels or None)
    rewards = normalized_reward(sc.score(list(categories), sc.image_embeddings(list(images))), cal)
    present = torch.tensor([[c in objs for c in categories] for objs in gt_objects])
    return {"calibration": str(calibration), "pooling": cal.pooling,
            **category_reward_table(rewards, present, categories)}
