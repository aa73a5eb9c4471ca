"""FiSAO's fine-grained verifier (FiSAO paper, Sec. 3.3, App. A.1.1, A.1.5).

- :mod:`.entities` — the entity set C (COCO + broad noun list + extra vocab, expanded with
  inflect and WordNet) and :meth:`EntitySet.find` (longest-match entity mentions in text).
- :mod:`.token_map` — entity character spans -> the response tokens that carry the reward.
- :mod:`.scorer` — :class:`ClipScorer`, S(word, image) = CLIP logit, cached per word.
- :mod:`.calibration` — Eq. 7 baselines (μ_gt, μ_hal, S_min, S_max) and AUROC.
- :mod:`.reward` — :class:`Calibration`, Eq. 8 token rewards, sentence-level ablation, KL term.

Submodules are imported on use (importing this package does not import torch).
"""
