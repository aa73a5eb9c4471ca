"""visalign.analysis.yes_no_discrimination and .category_rewards: bias vs discrimination of
yes/no scores, where Eq. 8's thresholds put verifier scores, and what the verifier would pay per
category; statistics checked by hand, the model/verifier wrappers against the scores they
wrap."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from visalign.analysis.category_rewards import category_reward_table, category_rewards
from visalign.analysis.yes_no_discrimination import score_stats, threshold_stats, \
    verifier_discrimination, yes_no_discrimination
from visalign.io import DataError


def test_score_stats_by_hand():
    # present: 2.0, -0.5; absent: 0.5, -1.0 -> 3 of 4 pairs ordered right
    rep = score_stats([2.0, -0.5, 0.5, -1.0], [True, True, False, False])
    assert rep == {"mean_log_odds_yes": 0.25, "auroc": 0.75, "accuracy_at_0": 0.5,
                   "yes_rate_at_0": 0.5, "n": 4}
    # a constant shift moves the bias, not the discrimination
    shifted = score_stats([s - 3 for s in (2.0, -0.5, 0.5, -1.0)], [True, True, False, False])
    assert shifted["auroc"] == 0.75 and shifted["yes_rate_at_0"] == 0.0
    with pytest.raises(ValueError, match="one label per score"):
        score_stats([1.0], [True, False])


def test_threshold_stats_by_hand():
    rep = threshold_stats([10.0, 8.5, 7.0, 6.0, 9.0], [True, True, True, False, False],
                          mu_gt=9.5, mu_hal=8.0)
    assert rep["present_above_mu_gt"] == round(1 / 3, 4)
    assert rep["present_below_mu_hal"] == round(1 / 3, 4)
    assert rep["absent_below_mu_hal"] == 0.5
    assert rep["accuracy_at_mu_hal"] == 0.6        # 10, 8.5 yes; 7 missed; 6 no; 9 wrong
    # at 8.75: 10 yes and 6 no are right; 8.5 and 7 are missed, 9 is a false yes
    assert rep["accuracy_at_midpoint"] == 0.4


def _records(tmp_path, n: int = 6) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    recs = []
    for i in range(n):
        arr = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        recs.append({"image": f"{i}.png", "question": "Is there a cat in the image?",
                     "object": "cat" if i % 3 else "dog", "label": "yes" if i % 2 else "no"})
    return recs


def test_model_wrapper_scores_the_records_images(tiny_llava_dir, tmp_path):
    from visalign.eval.grounding import yes_no_scores
    from visalign.models import load_vlm

    vlm = load_vlm(str(tiny_llava_dir))
    vlm.model.eval()
    recs = _records(tmp_path)
    rep = yes_no_discrimination(vlm, recs, image_root=tmp_path)
    ims = [Image.open(tmp_path / r["image"]).convert("RGB") for r in recs]
    expected = score_stats(yes_no_scores(vlm, ims, [r["question"] for r in recs]),
                           [r["label"] == "yes" for r in recs])
    assert rep == expected
    with pytest.raises(DataError, match="'label'"):
        yes_no_discrimination(vlm, [{**recs[0], "label": "maybe"}], image_root=tmp_path)


def test_verifier_wrapper_scores_each_object_on_its_image(tiny_clip_dir, tmp_path):
    from visalign.verifier.calibration import auroc
    from visalign.verifier.scorer import ClipScorer

    scorer = ClipScorer.from_pretrained(tiny_clip_dir)
    recs = _records(tmp_path)
    rep = verifier_discrimination(scorer, recs, image_root=tmp_path,
                                  calibration={"mu_gt": 0.5, "mu_hal": 0.0})
    emb = scorer.image_embeddings([Image.open(tmp_path / r["image"]).convert("RGB")
                                   for r in recs])
    s = [float(scorer.score([r["object"]], emb[i]).reshape(-1)[0]) for i, r in enumerate(recs)]
    y = [r["label"] == "yes" for r in recs]
    assert rep["n"] == 6
    assert rep["auroc"] == round(auroc([v for v, t in zip(s, y) if t],
                                       [v for v, t in zip(s, y) if not t]), 4)
    assert rep["accuracy_at_mu_hal"] == threshold_stats(s, y, 0.5, 0.0)["accuracy_at_mu_hal"]


def test_category_reward_table_by_hand():
    rewards = [[0.5, -1.0, 0.0],
               [-0.5, 0.25, 0.0],
               [0.1, -0.5, 0.0]]
    present = [[True, False, True],
               [False, True, True],
               [False, False, True]]
    rep = category_reward_table(rewards, present, ["cat", "dog", "bus"])
    assert rep["per_category"]["cat"] == {"present": 0.5, "absent": -0.2,
                                          "p_positive_absent": 0.5, "n_present": 1}
    assert rep["per_category"]["dog"]["absent"] == -0.75
    # the bus is in every image: no absent mean, left out of the averages
    assert rep["per_category"]["bus"]["absent"] is None
    assert rep["mean_reward_present"] == round((0.5 + 0.25) / 2, 4)
    assert rep["mean_reward_absent"] == round((-0.2 - 0.75) / 2, 4)
    assert rep["categories_rewarded_when_absent"] == []
    with pytest.raises(ValueError, match="must both be"):
        category_reward_table(rewards, present, ["cat", "dog"])


def test_category_rewards_use_the_calibration(tiny_clip_dir, tmp_path):
    from visalign.verifier.reward import Calibration, normalized_reward
    from visalign.verifier.scorer import ClipScorer

    cal = Calibration(mu_gt=0.1, mu_hal=-0.1, s_min=-1.0, s_max=1.0)
    cal.to_json(tmp_path / "calibration.json")
    recs = _records(tmp_path, 4)
    ims = [Image.open(tmp_path / r["image"]).convert("RGB") for r in recs]
    gt = [{"cat"}, {"dog"}, {"cat", "dog"}, set()]
    rep = category_rewards(tmp_path / "calibration.json", tiny_clip_dir, ims, gt, ["cat", "dog"])
    sc = ClipScorer.from_pretrained(tiny_clip_dir)
    r = normalized_reward(sc.score(["cat", "dog"], sc.image_embeddings(ims)), cal)
    assert rep["pooling"] == "image" and rep["n_images"] == 4
    assert rep["per_category"]["cat"]["present"] == round(float(r[[0, 2], 0].mean()), 4)
    assert json.loads(json.dumps(rep)) == rep      # plain JSON, as the script prints it
