"""Eq. 8 / App. A.1.5 reward shaping on hand-made scores, and its KL / sentence helpers."""

import pytest
import torch

from visalign.io import DataError
from visalign.verifier.entities import EntitySet
from visalign.verifier.reward import (Calibration, add_kl_penalty, normalized_reward,
                                      response_entity_scores, sentence_rewards, token_rewards)

# mu_gt = .5, mu_hal = .25, lambda = .125, S in [0, 1]:
# positive threshold mu_gt + lam = .625 (denominator 1 - .625 = .375)
# negative threshold mu_hal - lam = .125 (denominator .125 - 0 = .125)
CAL = Calibration(mu_gt=0.5, mu_hal=0.25, s_min=0.0, s_max=1.0, n_gt=10, n_hal=5, lam=0.125)


def test_branches_boundaries_and_extremes():
    scores = torch.tensor([[1.0, 0.8125, 0.625, 0.4, 0.125, 0.0625, 0.0]])
    r = token_rewards(scores, torch.ones_like(scores, dtype=torch.bool), CAL)
    # 1 -> +1 (S_max); .8125 -> .1875/.375 = .5; .625 -> 0 (exactly at mu_gt + lam);
    # .4 -> 0 (between thresholds); .125 -> 0 (exactly at mu_hal - lam);
    # .0625 -> (.0625 - .125)/.125 = -.5; 0 -> -1 (S_min)
    assert r.tolist() == [[1.0, 0.5, 0.0, 0.0, 0.0, -0.5, -1.0]]


def test_negative_branch_uses_hal_threshold_not_printed_typo():
    # The printed denominator (mu_gt - lam) - S_min = .375 would map S_min to -1/3, not -1.
    r = normalized_reward(torch.tensor([0.0]), CAL)
    assert r.item() == -1.0


def test_clamping_keeps_unseen_extremes_in_range():
    r = normalized_reward(torch.tensor([2.0, -3.0, 1e9]), CAL)
    assert r.tolist() == [1.0, -1.0, 1.0]
    # range over a dense sweep
    sweep = normalized_reward(torch.linspace(-5, 5, 1001), CAL)
    assert sweep.min().item() == -1.0 and sweep.max().item() == 1.0


def test_non_entities_get_zero_and_lam_override():
    scores = torch.tensor([[1.0, 0.0, 0.75]])
    is_ent = torch.tensor([[False, False, True]])
    # lam=0: positive threshold .5, .75 -> .25/.5 = .5
    assert token_rewards(scores, is_ent, CAL, lam=0.0).tolist() == [[0.0, 0.0, 0.5]]


def test_overlapping_thresholds_negative_branch_first():
    cal = Calibration(mu_gt=0.25, mu_hal=0.75, s_min=0.0, s_max=1.0)
    # .5 is both < mu_hal and > mu_gt: Eq. 8 lists the hallucinated branch first
    assert normalized_reward(torch.tensor([0.5]), cal).item() == pytest.approx(-1 / 3)


def test_sentence_rewards_on_last_token():
    scores = torch.tensor([1.0, 0.0, 0.4])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 0]])
    out = sentence_rewards(scores, CAL, mask=mask)
    assert out.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, 0.0]]
    assert sentence_rewards(scores, CAL).tolist() == [1.0, -1.0, 0.0]


def test_add_kl_penalty():
    rewards = torch.tensor([[0.5, 0.0, -1.0]])
    kl = torch.tensor([[0.2, 0.4, 1.0]])
    mask = torch.tensor([[1, 1, 0]])
    # every valid token: .5 - .5*.2 = .4, 0 - .5*.4 = -.2, masked last token untouched
    assert add_kl_penalty(rewards, kl, 0.5, mask)[0].tolist() == pytest.approx([0.4, -0.2, -1.0])
    # Eq. 8 literally: only where a branch fired (reward != 0)
    out = add_kl_penalty(rewards, kl, 0.5, mask, entity_only=True)
    assert out[0].tolist() == pytest.approx([0.4, 0.0, -1.0])
    out = add_kl_penalty(rewards, kl, 0.5, entity_only=True,
                         active=torch.tensor([[False, True, False]]))
    assert out[0].tolist() == pytest.approx([0.5, -0.2, -1.0])


def test_calibration_json_roundtrip_and_errors(tmp_path):
    p = CAL.to_json(tmp_path / "calib.json")
    assert Calibration.from_json(p) == CAL
    (tmp_path / "bad.json").write_text('{"mu_gt": 1, "mu_hal": 0, "s_min": 0, "s_max": 1, '
                                       '"bogus": 3}')
    with pytest.raises(DataError, match="bogus"):
        Calibration.from_json(tmp_path / "bad.json")
    (tmp_path / "missing.json").write_text('{"mu_gt": 1}')
    with pytest.raises(DataError, match="mu_hal"):
        Calibration.from_json(tmp_path / "missing.json")
    with pytest.raises(ValueError):
        Calibration(mu_gt=0.5, mu_hal=0.2, s_min=1.0, s_max=0.0)


class _FakeScorer:
    """Scores from a table; counts what it was asked."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def score(self, words, image_emb):
        self.calls.append(list(words))
        return torch.tensor([self.table[w] for w in words])


def test_response_entity_scores_places_scores_on_last_subtoken():
    es = EntitySet.build(extra=[["bicycle", "bike"], ["traffic light"], ["dog"]], synonyms=None,
                         nouns=False, wordnet=False)
    text = "Two bikes by a traffic light."
    # hand-made tokens: "Two", " bi", "kes", " by", " a", " traffic", " light", "."
    offsets = [(0, 3), (3, 6), (6, 9), (9, 12), (12, 14), (14, 22), (22, 28), (28, 29)]
    scorer = _FakeScorer({"bicycle": 0.9, "traffic light": 0.4})
    scores, is_ent, mentions = response_entity_scores(text, offsets, torch.zeros(4), es, scorer)
    assert [m.canonical for m in mentions] == ["bicycle", "traffic light"]
    assert scorer.calls == [["bicycle", "traffic light"]]
    assert is_ent.nonzero().flatten().tolist() == [2, 6]
    assert scores[2].item() == pytest.approx(0.9) and scores[6].item() == pytest.approx(0.4)
    r = token_rewards(scores[None], is_ent[None], CAL)
    # .9 -> (.9 - .625)/.375 = .7333; .4 is between the thresholds -> 0
    assert r[0, 2].item() == pytest.approx(0.275 / 0.375) and r[0, 6].item() == 0.0


def test_branch_ranges_on_a_dense_sweep():
    s = torch.linspace(-0.5, 1.5, 4001)
    r = normalized_reward(s, CAL)
    below = s < CAL.neg_threshold
    above = s > CAL.pos_threshold
    # hallucinated branch: [-1, 0), strictly negative right up to its threshold
    assert (r[below] >= -1.0).all() and (r[below] < 0.0).all()
    # correct branch: (0, 1]
    assert (r[above] > 0.0).all() and (r[above] <= 1.0).all()
    assert (r[~below & ~above] == 0.0).all()
    # monotone non-decreasing in the score
    assert (r[1:] >= r[:-1]).all()


def test_margin_widens_the_neutral_band():
    s = torch.tensor([0.05, 0.2, 0.3, 0.55, 0.7, 0.95])
    bands = []
    for lam in (0.0, 0.125, 0.2):
        r = normalized_reward(s, CAL, lam)
        bands.append((r == 0).sum().item())
    # a larger margin never makes a reward larger in magnitude, and zeroes more of them
    r0, r1 = normalized_reward(s, CAL, 0.0), normalized_reward(s, CAL, 0.2)
    assert (r1.abs() <= r0.abs()).all()
    assert bands == sorted(bands) and bands[0] < bands[-1]
    # lam = 0: thresholds at mu_gt = .5 and mu_hal = .25 themselves
    assert normalized_reward(torch.tensor([0.55, 0.2]), CAL, 0.0).tolist() == pytest.approx(
        [0.05 / 0.5, -0.05 / 0.25])


def test_adaptive_kl_coef_follows_ziegler_and_clips_the_error():
    from visalign.verifier.reward import adaptive_kl_coef

    # KL at twice the target: error clipped to +0.2; 16 of a 160-sample horizon -> +2 %
    assert adaptive_kl_coef(0.1, 0.2, 0.1, 16, 160) == pytest.approx(0.1 * 1.02)
    # KL 5 % under target: error -0.05, full horizon -> -5 %
    assert adaptive_kl_coef(0.1, 0.095, 0.1, 100, 100) == pytest.approx(0.095)
    # no KL at all (first rollout of a LoRA policy): the largest decrease
    assert adaptive_kl_coef(0.5, 0.0, 0.1, 4, 4) == pytest.approx(0.4)
    assert adaptive_kl_coef(0.5, 0.1, 0.1, 4, 4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="target and horizon"):
        adaptive_kl_coef(0.1, 0.1, 0.0, 4, 4)

