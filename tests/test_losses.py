"""Pure losses against numbers computed by hand (written out in the comments)."""

import math

import pytest
import torch

from visalign.losses import (clipped_surrogate_loss, dpo_loss, full_kl_from_logits, kl_penalty,
                             masked_mean, masked_sum, reward_to_go, sft_loss)


def test_masked_mean_and_sum():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m = torch.tensor([[1, 0], [1, 1]])
    assert masked_sum(x, m).item() == 8.0
    assert masked_mean(x, m).item() == pytest.approx(8 / 3)
    assert masked_mean(x, m, dim=1).tolist() == [1.0, 3.5]
    # a row with nothing masked gives 0, not NaN
    assert masked_mean(x, torch.tensor([[0, 0], [1, 1]]), dim=1).tolist() == [0.0, 3.5]
    assert masked_mean(x, torch.zeros(2, 2)).item() == 0.0


def _ppo_batch():
    # ratios r = 0.5, 1.0, 1.5 in both rows; advantages +1 in row 0, -1 in row 1; eps = 0.2.
    old = torch.zeros(2, 3)
    logprobs = torch.log(torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    return logprobs, old, adv


def test_clipped_surrogate_by_hand():
    logprobs, old, adv = _ppo_batch()
    mask = torch.ones(2, 3)
    loss, stats = clipped_surrogate_loss(logprobs, old, adv, mask, clip_eps=0.2)
    # A=+1: min(r, clip(r)) = min(.5,.8)=.5, min(1,1)=1, min(1.5,1.2)=1.2 -> sum 2.7
    # A=-1: min(-r, -clip(r)) = min(-.5,-.8)=-.8, -1, min(-1.5,-1.2)=-1.5 -> sum -3.3
    # loss = -(2.7 - 3.3) / 6 = 0.1
    assert loss.item() == pytest.approx(0.1, abs=1e-6)
    # clipped term is the smaller one at (r=1.5, A=+1) and (r=0.5, A=-1): 2 of 6 tokens
    assert stats["clip_fraction"].item() == pytest.approx(1 / 3)
    # approx_kl = mean(old - new) = -(2 * ln(0.5 * 1 * 1.5)) / 6 = -ln(0.75) / 3
    assert stats["approx_kl"].item() == pytest.approx(-math.log(0.75) / 3, abs=1e-6)
    assert stats["ratio_mean"].item() == pytest.approx(1.0, abs=1e-6)
    loss.backward()
    g = logprobs.grad
    # clipped tokens get no gradient; unclipped: d(-r*A/6)/dlogp = -r*A/6
    assert g[0, 2].item() == 0.0 and g[1, 0].item() == 0.0
    assert g[0, 0].item() == pytest.approx(-0.5 / 6, abs=1e-6)
    assert g[1, 2].item() == pytest.approx(1.5 / 6, abs=1e-6)


def test_clipped_surrogate_reductions_with_mask():
    logprobs, old, adv = _ppo_batch()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # per-token losses: row 0 [-.5, -1, -1.2], row 1 [.8, 1, (1.5 masked)]
    tok, _ = clipped_surrogate_loss(logprobs, old, adv, mask)
    assert tok.item() == pytest.approx((-2.7 + 1.8) / 5, abs=1e-6)       # -0.18
    seq, _ = clipped_surrogate_loss(logprobs, old, adv, mask, reduction="sequence")
    assert seq.item() == pytest.approx((-0.9 + 0.9) / 2, abs=1e-6)       # 0
    s, _ = clipped_surrogate_loss(logprobs, old, adv, mask, reduction="sum")
    assert s.item() == pytest.approx(-0.9, abs=1e-6)
    with pytest.raises(ValueError):
        clipped_surrogate_loss(logprobs, old, adv, mask, reduction="mean")


def test_kl_estimators():
    lp = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.5]))
    ln2 = math.log(2)
    # log r = +ln2 and -ln2
    assert kl_penalty(lp, ref, "k1").tolist() == pytest.approx([ln2, -ln2])
    assert kl_penalty(lp, ref, "k2").tolist() == pytest.approx([0.5 * ln2 ** 2] * 2)
    # k3 = exp(-log r) - 1 + log r: 0.5 - 1 + ln2 = 0.19315, 2 - 1 - ln2 = 0.30685 (both >= 0)
    assert kl_penalty(lp, ref, "k3").tolist() == pytest.approx([ln2 - 0.5, 1 - ln2])
    for kind in ("k1", "k2", "k3"):
        assert kl_penalty(lp, lp, kind).abs().max().item() == 0.0
    with pytest.raises(ValueError):
        kl_penalty(lp, ref, "k4")


def test_full_kl_from_logits():
    # p_theta = [.5, .5], p_ref = [.75, .25]
    logits = torch.zeros(1, 2, 2)
    ref = torch.tensor([[[math.log(3), 0.0], [math.log(3), 0.0]]])
    kl = full_kl_from_logits(logits, ref)
    # KL(ref||theta) = .75 ln(1.5) + .25 ln(.5) = 0.130812
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl[0].tolist() == pytest.approx([expected, expected], abs=1e-6)
    # KL(theta||ref) = .5 ln(.5/.75) + .5 ln(.5/.25) = 0.143841
    rev = full_kl_from_logits(logits, ref, direction="theta_ref", chunk_size=1)
    assert rev[0, 0].item() == pytest.approx(0.5 * math.log(2 / 3) + 0.5 * math.log(2), abs=1e-6)
    masked = full_kl_from_logits(logits, ref, torch.tensor([[1, 0]]))
    assert masked[0, 1].item() == 0.0
    assert full_kl_from_logits(ref, ref).abs().max().item() < 1e-7


def test_reward_to_go():
    r = torch.tensor([[1.0, 0.0, 2.0, 3.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    assert reward_to_go(r, m).tolist() == [[3.0, 2.0, 2.0, 0.0]]
    # gamma .5: G2 = 2, G1 = 0 + .5*2 = 1, G0 = 1 + .5*1 = 1.5
    assert reward_to_go(r, m, gamma=0.5).tolist() == [[1.5, 1.0, 2.0, 0.0]]
    # left padding: the 5 under the mask is ignored
    r2 = torch.tensor([[5.0, 1.0, 0.0, 2.0]])
    assert reward_to_go(r2, torch.tensor([[0, 1, 1, 1]])).tolist() == [[0.0, 3.0, 2.0, 2.0]]


def test_dpo_loss_by_hand():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -2.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    loss, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # z0 = .5 * ((-1+2) - (-3+2)) = 1 -> -log sigmoid(1) = ln(1 + e^-1) = 0.3132617
    # z1 = 0 -> ln 2
    l0, l1 = math.log1p(math.exp(-1)), math.log(2)
    assert loss.item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    assert cr.tolist() == [0.5, 0.0] and rj.tolist() == [-0.5, 0.0]
    loss_ls, _, _ = dpo_loss(pc[:1], pr[:1], rc[:1], rr[:1], beta=0.5, label_smoothing=0.1)
    # .9 * ln(1 + e^-1) + .1 * ln(1 + e) = 0.4132617
    assert loss_ls.item() == pytest.approx(0.9 * l0 + 0.1 * math.log1p(math.e), abs=1e-6)


def test_sft_loss_shift_and_ignore():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[-100, 1, 0]])
    # pos 0 predicts label 1 with p=.5 -> ln2; pos 1 predicts label 0 with p=.75 -> -ln .75
    assert sft_loss(logits, labels).item() == pytest.approx(
        (math.log(2) - math.log(0.75)) / 2, abs=1e-6)
    assert sft_loss(logits, torch.full((1, 3), -100)).item() == 0.0


def test_sft_loss_fixed_normaliser_weighs_every_token_alike():
    """With a fixed normaliser the loss of two batches adds up to the loss of their union, so
    a token's weight does not depend on how many answer tokens share its batch; the batch mean
    gives the tokens of a short batch more weight."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 5, generator=g)
    labels = torch.randint(0, 5, (2, 6), generator=g)
    labels[0, 3:] = -100                  # row 0: 2 answer tokens, row 1: 5
    n = int((labels[:, 1:] != -100).sum())
    assert sft_loss(logits, labels, normaliser=n).item() == pytest.approx(
        sft_loss(logits, labels).item(), abs=1e-6)
    a, b = sft_loss(logits[:1], labels[:1], normaliser=n), sft_loss(logits[1:], labels[1:],
                                                                     normaliser=n)
    assert (a + b).item() == pytest.approx(sft_loss(logits, labels, normaliser=n).item(),
                                           abs=1e-6)
    mean_a, mean_b = sft_loss(logits[:1], labels[:1]), sft_loss(logits[1:], labels[1:])
    assert ((mean_a + mean_b) / 2).item() != pytest.approx(
        sft_loss(logits, labels).item(), abs=1e-3)
    with pytest.raises(ValueError, match="normaliser"):
        sft_loss(logits, labels, normaliser=0)


def test_repetition_unlikelihood_matches_hand_computation_and_respects_turns():
    from visalign.losses import repetition_unlikelihood_loss

    torch.manual_seed(0)
    logits = torch.randn(1, 8, 5)
    # two answers: [1, 2, 1, 3] then [1, 4]; position j predicts labels[j + 1]
    labels = torch.tensor([[-100, 1, 2, 1, 3, -100, 1, 4]])
    p = logits.softmax(-1)[0]
    # candidates: j=1 {1}; j=2 {2} (target 1 is not one); j=3 {1, 2}; j=6 {1} of its own
    # answer only (the first answer's 2 and 3 are not candidates there)
    hand = -(torch.log(1 - p[1, 1]) + torch.log(1 - p[2, 2]) + torch.log(1 - p[3, 1])
             + torch.log(1 - p[3, 2]) + torch.log(1 - p[6, 1]))
    assert torch.allclose(repetition_unlikelihood_loss(logits, labels), hand / 6, atol=1e-6)
    assert torch.allclose(repetition_unlikelihood_loss(logits, labels, normaliser=2.0),
                          hand / 2, atol=1e-6)
    # no counted label -> 0
    assert repetition_unlikelihood_loss(logits, torch.full_like(labels, -100)).item() == 0.0
    with pytest.raises(ValueError):
        repetition_unlikelihood_loss(logits, labels, normaliser=0.0)


def test_repetition_unlikelihood_gradient_lowers_an_already_written_token():
    from visalign.losses import repetition_unlikelihood_loss

    logits = torch.zeros(1, 4, 6, requires_grad=True)
    labels = torch.tensor([[-100, 2, 3, 5]])
    repetition_unlikelihood_loss(logits, labels).backward()
    # at position 2 (predicting 5) the earlier answer tokens 2 and 3 are pushed down
    g = logits.grad[0, 2]
    assert g[2] > 0 and g[3] > 0 and g[5] < 0
