"""FiSAO trainer pieces on hand-made data and the tiny LLaVA: Eq. 8 rewards on rollouts (token
level, margin λ, sentence-level ablation), the KL term, one PPO step's direction, micro-batching,
and a 2-process (gloo) run against a 1-process run with the same global batch."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from _launch import launch_2proc
from visalign.io import write_json
from visalign.methods.fisao import (FisaoConfig, batch_logprobs, ppo_epoch, score_rollout,
                                    shaped_rewards, slice_batch, train_fisao)
from visalign.verifier.entities import EntitySet
from visalign.verifier.reward import Calibration

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")
TIMEOUT = 300  # a safety net against hangs on a loaded machine, not a speed check

# Token level: mu_gt + lam = .625, mu_hal - lam = .125 on S in [0, 1] (as test_verifier_reward).
CAL = Calibration(mu_gt=0.5, mu_hal=0.25, s_min=0.0, s_max=1.0, lam=0.125)
SCAL = Calibration(mu_gt=0.6, mu_hal=0.4, s_min=0.0, s_max=1.0, level="sentence")


class _FakeScorer:
    def __init__(self, words: dict, sentences: dict):
        self.words, self.sentences = words, sentences

    def image_embeddings(self, images):
        return torch.zeros(len(images), 4)

    def score(self, words, image_emb):
        assert image_emb.shape == (4,)
        return torch.tensor([self.words[w] for w in words])

    def sentence_score(self, texts, image_emb):
        assert image_emb.shape == (len(texts), 4)
        return torch.tensor([self.sentences[t] for t in texts])


def _fake_rollout():
    """Two responses after a 3-token prompt: "a dog and two cats" (tokens a| dog| and| two| ca|
    ts|</s>) and "nothing here" (nothing| here|</s>), right padded to T = 10."""
    t0, t1 = "a dog and two cats", "nothing here"
    off0 = [(0, 1), (1, 5), (5, 9), (9, 13), (13, 16), (16, 18), (18, 18)]
    off1 = [(0, 7), (7, 12), (12, 12)]
    labels = torch.full((2, 10), -100)
    labels[0, 3:10] = torch.arange(7) + 10
    labels[1, 3:6] = torch.arange(3) + 10
    return SimpleNamespace(texts=[t0, t1], response_offsets=[off0, off1],
                           batch={"labels": labels}, finished=[True, True])


ENTS = EntitySet.build(extra=[["dog"], ["cat"]], synonyms=None, nouns=False, wordnet=False)
SCORER = _FakeScorer({"dog": 0.9, "cat": 0.05},
                     {"a dog and two cats": 0.8, "nothing here": 0.2})


def _score(**kw):
    cfg = FisaoConfig(**kw)
    return score_rollout(_fake_rollout(), [None, None], SCORER, ENTS, CAL, cfg, SCAL)


def test_token_rewards_land_on_the_word_tokens_with_the_calibrations_margin():
    sc = _score()                                      # lam=None -> the calibration's .125
    # dog: (.9 - .625) / .375; cats (plural -> cat, two tokens, reward on the last: "ts"):
    # (.05 - .125) / .125 = -.6
    assert sc.is_entity.nonzero().tolist() == [[0, 4], [0, 8]]
    assert sc.rewards[0, 4].item() == pytest.approx(0.275 / 0.375)
    assert sc.rewards[0, 8].item() == pytest.approx(-0.6)
    assert sc.rewards.abs().sum().item() == pytest.approx(0.275 / 0.375 + 0.6)
    assert (sc.n_entities, sc.n_pos, sc.n_neg) == (2, 1, 1)
    assert [d["canonical"] for d in sc.details[0]] == ["dog", "cat"] and sc.details[1] == []
    every = _score(reward_position="all")
    assert every.is_entity.nonzero().tolist() == [[0, 4], [0, 7], [0, 8]]
    assert every.rewards[0, 7].item() == every.rewards[0, 8].item()


def test_margin_lam_ablation_changes_rewards_as_expected():
    zero = _score(lam=0.0)       # thresholds at mu_gt = .5 and mu_hal = .25
    assert zero.rewards[0, 4].item() == pytest.approx(0.4 / 0.5)             # .8
    assert zero.rewards[0, 8].item() == pytest.approx(-0.2 / 0.25)           # -.8
    wide = _score(lam=0.2)       # thresholds .7 and .05: cat's .05 is not below .05
    assert wide.rewards[0, 4].item() == pytest.approx(0.2 / 0.3)
    assert wide.rewards[0, 8].item() == 0.0 and wide.n_neg == 0
    huge = _score(lam=0.5)       # nothing fires
    assert huge.rewards.abs().sum().item() == 0.0 and huge.n_pos == huge.n_neg == 0


def test_reward_branches_diagnostic_keeps_one_side_of_eq8():
    neg = _score(reward_branches="negative")
    assert neg.rewards[0, 4].item() == 0.0                       # dog's positive reward dropped
    assert neg.rewards[0, 8].item() == pytest.approx(-0.6)
    assert neg.is_entity.nonzero().tolist() == [[0, 4], [0, 8]]  # still entity tokens (KL)
    assert (neg.n_pos, neg.n_neg) == (0, 1)
    pos = _score(reward_branches="positive")
    assert pos.rewards[0, 4].item() == pytest.approx(0.275 / 0.375)
    assert pos.rewards[0, 8].item() == 0.0 and (pos.n_pos, pos.n_neg) == (1, 0)
    sent = _score(reward_level="sentence", reward_branches="negative")
    assert sent.rewards[0, 9].item() == 0.0
    assert sent.rewards[1, 5].item() == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="reward_branches"):
        _score(reward_branches="neither")


def test_existence_reward_signs_the_asked_objects_reward_by_the_answer():
    """Extension (existence_reward): a yes/no answer gets ±Eq. 8 reward of the object asked
    about on its first token; the asked object is parsed from the question."""
    from visalign.methods.fisao import asked_object, yes_no_span

    assert asked_object("Is there a dog in this picture? Please answer yes or no.", ENTS) == "dog"
    assert asked_object("Does the image contain two cats?", ENTS) == "cat"
    assert asked_object("Is there a dog or a cat?", ENTS) is None      # ambiguous
    assert asked_object("Is there anything here?", ENTS) is None
    assert [yes_no_span(t)[0] for t in ("Yes", "no.", " Yes, there is.", "Nope", "")] == [
        1, -1, 1, 0, 0]
    assert yes_no_span(" Yes, there is.")[1] == (1, 4) and yes_no_span("Nope")[1] is None
    # responses as a chat template makes them: a bare-space token, the answer, </s>; the
    # reward belongs on the answer word, not on the space before it
    texts = [" Yes", " No", " Yes", " Maybe"]
    labels = torch.full((4, 7), -100)
    labels[:, 3:6] = 7
    ro = SimpleNamespace(texts=texts, response_offsets=[[(0, 1), (1, len(t)), (len(t), len(t))]
                                                        for t in texts],
                         batch={"labels": labels}, finished=[True] * 4)
    sc = score_rollout(ro, [None] * 4, SCORER, ENTS, CAL, FisaoConfig(existence_reward=True),
                       asks=["dog", "dog", "cat", "dog"])
    dog, cat = 0.275 / 0.375, -0.6                      # as in the token-level test
    assert sc.rewards[0, 4].item() == pytest.approx(dog)        # "Yes" to a seen dog
    assert sc.rewards[1, 4].item() == pytest.approx(-dog)       # "No" to it
    assert sc.rewards[2, 4].item() == pytest.approx(cat)        # "Yes" to an unseen cat
    assert sc.rewards[3].abs().sum().item() == 0.0 and not sc.is_entity[3].any()
    assert sc.is_entity.nonzero().tolist() == [[0, 4], [1, 4], [2, 4]]
    assert (sc.n_entities, sc.n_pos, sc.n_neg) == (3, 1, 2)
    assert sc.details[1][0]["canonical"] == "dog"
    # items without a question (asks None) still get the paper's entity rewards
    mixed = score_rollout(_fake_rollout(), [None, None], SCORER, ENTS, CAL,
                          FisaoConfig(existence_reward=True), asks=[None, None])
    assert torch.equal(mixed.rewards, _score().rewards)


def test_existence_reward_loads_the_yes_no_prompts_with_their_object(tiny_world_dir, tmp_path):
    from visalign.methods.fisao import load_prompts
    from visalign.world import load_world

    world = load_world(tiny_world_dir)
    data = str(world.llava_path("train"))
    ents = EntitySet.build(extra=str(world.synonyms_path), synonyms=None, nouns=False,
                           wordnet=False)
    ents.save(tmp_path / "entities.json")
    root = str(world.image_root)
    plain = load_prompts(FisaoConfig(data=data, image_root=root,
                                     entities=str(tmp_path / "entities.json")))
    both = load_prompts(FisaoConfig(data=data, image_root=root,
                                    entities=str(tmp_path / "entities.json"),
                                    existence_reward=True))
    assert all("asks" not in it for it in plain)
    asked = [it for it in both if "asks" in it]
    assert asked and len(both) == len(plain) + len(asked)
    for it in asked:
        assert it["asks"] in ents.canonicals
        assert it["asks"] in {m.canonical for m in ents.find(it["prompt"].split("?")[0])}
    with pytest.raises(ValueError, match="reward_level=token"):
        train_fisao(FisaoConfig(data=data, existence_reward=True, reward_level="sentence",
                                out=str(tmp_path / "x")))


def test_reward_shuffle_control_permutes_rewards_among_rewarded_tokens():
    from visalign.methods.fisao import shuffled_rewards

    rewards = torch.zeros(3, 6)
    is_entity = torch.zeros(3, 6, dtype=torch.bool)
    for (i, t), r in zip([(0, 1), (0, 4), (1, 2), (2, 0), (2, 5)], [0.9, -0.5, 0.1, -1.0, 0.3]):
        rewards[i, t], is_entity[i, t] = r, True
    out = shuffled_rewards(rewards, is_entity, seed=3)
    assert torch.equal(out[~is_entity], rewards[~is_entity])            # zeros stay zeros
    assert sorted(out[is_entity].tolist()) == sorted(rewards[is_entity].tolist())
    assert not torch.equal(out, rewards)                                  # this seed permutes
    assert torch.equal(out, shuffled_rewards(rewards, is_entity, seed=3))  # seeded
    assert torch.equal(rewards[0, 1], torch.tensor(0.9))                  # input untouched
    cen = shuffled_rewards(rewards, is_entity, seed=3, centered=True)
    assert torch.allclose(cen[is_entity], out[is_entity] + 0.04)          # mean of rewards: -0.04
    assert cen[is_entity].sum().abs().item() < 1e-6 and torch.equal(cen[~is_entity],
                                                                       rewards[~is_entity])


def test_sentence_level_ablation_rewards_whole_responses_on_their_last_token():
    sc = _score(reward_level="sentence")
    # response 0: (.8 - .6) / .4 = .5 on its last token (</s>, position 9);
    # response 1 (no entity at all still gets one): (.2 - .4) / .4 = -.5 at position 5
    assert sc.is_entity.nonzero().tolist() == [[0, 9], [1, 5]]
    assert sc.rewards[0, 9].item() == pytest.approx(0.5)
    assert sc.rewards[1, 5].item() == pytest.approx(-0.5)
    assert sc.rewards.abs().sum().item() == pytest.approx(1.0)
    # the sentence calibration is used, not the token one, and the margin applies to it
    sc = _score(reward_level="sentence", lam=0.1)
    assert sc.rewards[0, 9].item() == pytest.approx(0.1 / 0.3)
    assert sc.rewards[1, 5].item() == pytest.approx(-0.1 / 0.3)
    with pytest.raises(ValueError, match="sentence"):
        score_rollout(_fake_rollout(), [None, None], SCORER, ENTS, CAL,
                      FisaoConfig(reward_level="sentence"), None)


def test_annotation_oracle_rewards_present_and_absent_objects_by_ground_truth():
    from visalign.eval.chair import Chair

    # image 1 holds a dog only, image 2 a cat only: the verifier's scores (dog .9, cat .05)
    # are replaced by +1 / -1 from the annotations; response 1 has no mention
    chair = Chair.from_annotations({1: ["dog"], 2: ["cat"]}, synonyms=[["dog"], ["cat"]])
    for img, dog, cat in ((1, 1.0, -1.0), (2, -1.0, 1.0)):
        sc = score_rollout(_fake_rollout(), [None, None], SCORER, ENTS, CAL, FisaoConfig(),
                           SCAL, chair, [img, img])
        assert sc.is_entity.nonzero().tolist() == [[0, 4], [0, 8]]
        assert (sc.rewards[0, 4].item(), sc.rewards[0, 8].item()) == (dog, cat)
        assert (sc.n_pos, sc.n_neg) == (1, 1) and sc.rewards[1].abs().sum() == 0
        # the verifier's score stays in the log next to the oracle's reward
        assert [d["score"] for d in sc.details[0]] == pytest.approx([0.9, 0.05])
    # a mention CHAIR does not know gets no reward
    unknown = Chair.from_annotations({1: ["dog"]}, synonyms=[["dog"]])
    sc = score_rollout(_fake_rollout(), [None, None], SCORER, ENTS, CAL, FisaoConfig(), SCAL,
                       unknown, [1, 1])
    assert (sc.rewards[0, 4].item(), sc.rewards[0, 8].item()) == (1.0, 0.0)
    assert (sc.n_pos, sc.n_neg, sc.n_entities) == (1, 0, 2)


def test_shaped_rewards_kl_placement_and_reward_to_go():
    rewards = torch.tensor([[0.0, 0.5, 0.0, -1.0]])
    is_ent = torch.tensor([[False, True, False, True]])
    mask = torch.tensor([[False, True, True, True]])
    lp = torch.tensor([[0.0, -1.0, -2.0, -0.5]])
    ref = torch.tensor([[0.0, -1.5, -1.0, -0.5]])
    # k1 = lp - ref = [0, .5, -1, 0] on the response
    adv, kl = shaped_rewards(rewards, is_ent, mask, lp, ref, FisaoConfig(xi=0.2))
    assert kl.tolist() == [[0.0, 0.5, -1.0, 0.0]]
    assert adv[0].tolist() == pytest.approx([0.0, 0.4, 0.0, -1.0])           # entity tokens only
    adv, _ = shaped_rewards(rewards, is_ent, mask, lp, ref, FisaoConfig(xi=0.2, kl_on="all"))
    assert adv[0].tolist() == pytest.approx([0.0, 0.4, 0.2, -1.0])
    adv, _ = shaped_rewards(rewards, is_ent, mask, lp, ref, FisaoConfig(xi=0.2, kl_on="none"))
    assert adv[0].tolist() == pytest.approx([0.0, 0.5, 0.0, -1.0])
    adv, kl = shaped_rewards(rewards, is_ent, mask, lp, ref,
                             FisaoConfig(xi=0.2, kl_estimator="k2", advantage="reward_to_go"))
    # k2 = .5 * log_r^2 = [0, .125, .5, 0]; rewards .5 - .025 = .475, -1 -> returns from the end
    assert kl[0].tolist() == pytest.approx([0.0, 0.125, 0.5, 0.0])
    assert adv[0].tolist() == pytest.approx([0.0, 0.475 - 1.0, -1.0, -1.0])


# ----------------------------------------------------------------------------- with a model


def _lora_vlm(model_dir: Path, seed: int = 0):
    from visalign.models import load_vlm
    from visalign.training import prepare_model

    torch.manual_seed(seed)
    vlm = load_vlm(model_dir)
    cfg = FisaoConfig()
    cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = 4, 8, 0.0
    return vlm, prepare_model(vlm, cfg)


def _fixed_batch(vlm, answers=("a red ball and a blue cube",)):
    from _tiny import solid_images

    convs = [[{"from": "human", "value": "<image>\nDescribe the image."},
              {"from": "gpt", "value": a}] for a in answers]
    return vlm.encode(solid_images(len(answers)), convs)


def _one_step(model_dir, signs):
    vlm, model = _lora_vlm(model_dir)
    batch = _fixed_batch(vlm)
    mask = batch["labels"] != -100
    pos = mask[0].nonzero().flatten().tolist()
    p_a, p_b = pos[1], pos[4]
    old = batch_logprobs(model, batch)
    adv = torch.zeros_like(old)
    adv[0, p_a], adv[0, p_b] = signs
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.eval()
    st = ppo_epoch(model, batch, old, adv, mask, opt, clip_eps=0.2,
                   n_tokens_global=float(mask.sum()))
    new = batch_logprobs(model, batch)
    assert st["grad_norm"] > 0 and st["clipped"] == 0.0   # r_t = 1 on the first epoch
    return (new - old)[0, p_a].item(), (new - old)[0, p_b].item()


def test_one_ppo_step_moves_logprobs_in_the_rewarded_direction(tiny_llava_dir):
    up, down = _one_step(tiny_llava_dir, (1.0, -1.0))
    assert up > 0 > down
    # flipping the rewards flips the movement (it is the reward, not the data, that decides)
    down2, up2 = _one_step(tiny_llava_dir, (-1.0, 1.0))
    assert down2 < 0 < up2


def test_ppo_minibatches_give_the_same_update(tiny_llava_dir):
    deltas = []
    for mb in (0, 1):
        vlm, model = _lora_vlm(tiny_llava_dir, seed=1)
        model.eval()
        batch = _fixed_batch(vlm, ["a ball", "a red ball and a blue cube", "a cube"])
        mask = batch["labels"] != -100
        old = batch_logprobs(model, batch, minibatch=2)
        assert torch.allclose(old, batch_logprobs(model, batch), atol=1e-6)
        adv = torch.linspace(-1, 1, mask.numel()).reshape(mask.shape) * mask
        params = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        opt = torch.optim.SGD(params, lr=1.0)
        ppo_epoch(model, batch, old, adv, mask, opt, clip_eps=0.2,
                  n_tokens_global=float(mask.sum()), minibatch=mb)
        deltas.append(torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)]))
    assert deltas[0].abs().max() > 0
    assert torch.allclose(deltas[0], deltas[1], atol=1e-6, rtol=1e-4)
    # slicing keeps per-row tensors aligned
    part = slice_batch(batch, 1, 3)
    assert part["input_ids"].shape[0] == part["pixel_values"].shape[0] == 2


# ----------------------------------------------------------------------------- 1 vs 2 processes


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def two_proc_setup(tmp_path_factory, tiny_llava_dir, tiny_clip_dir):
    """Data with one prompt text (no padding differences), a calibration at the tiny CLIP's
    scale, and an entity set made of the words the policy actually samples (found by a first
    1-process run that logs its samples), so that rewards are not all zero."""
    from _tiny import solid_images

    from visalign.verifier.scorer import ClipScorer

    root = tmp_path_factory.mktemp("fisao2")
    recs = []
    for i, im in enumerate(solid_images(4)):
        im.save(root / f"{i}.png")
        recs.append({"id": f"r{i}", "image": f"{i}.png", "task": "detail", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": "A ball."}]})
    write_json(root / "data.json", recs)
    scale = ClipScorer.from_pretrained(tiny_clip_dir).scale
    Calibration(mu_gt=0.0, mu_hal=0.0, s_min=-scale, s_max=scale, scale=scale,
                template="{}").to_json(root / "calibration.json")
    EntitySet({"zzz": "zzz"}).save(root / "entities.json")
    args = dict(model=str(tiny_llava_dir), verifier=str(tiny_clip_dir),
                data=str(root / "data.json"),
                image_root=str(root), calibration=str(root / "calibration.json"),
                entities=str(root / "entities.json"), max_steps=2, ppo_epochs=2,
                max_new_tokens=10, lr=5e-3, clip_eps=0.1, xi=0.5, warmup_ratio=0.25,
                schedule="cosine", progress=False, save_merged=False)
    cfg = FisaoConfig(**args, rollout_batch=4, out=str(root / "probe"), log_samples=4)
    cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = 4, 8, 0.0
    train_fisao(cfg)
    texts = [json.loads(ln)["response"] for ln in (root / "probe" / "samples.jsonl").open()]
    words = sorted({w.lower() for t in texts for w in re.findall(r"[^\W_]+", t)})
    assert words, texts
    EntitySet({w: w for w in words}).save(root / "entities.json")
    return root, args


def test_adaptive_kl_controller_moves_xi_and_logs_it(two_proc_setup):
    root, args = two_proc_setup
    out = root / "adaptive"
    a = {**args, "max_steps": 3}
    cfg = FisaoConfig(**a, rollout_batch=4, out=str(out), kl_on="all", kl_target=1e-12,
                      kl_horizon=4)
    cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = 4, 8, 0.0
    train_fisao(cfg)
    log = [json.loads(ln) for ln in (out / "log.jsonl").open()]
    xs, kls = [r["xi"] for r in log], [r["kl"] for r in log]
    # rollout 1: LoRA starts at the reference, KL 0 < target -> ξ falls 20 %; afterwards the
    # policy has moved, KL > target -> ξ rises 20 % per rollout (4 samples, horizon 4)
    assert xs[0] == pytest.approx(0.5) and kls[0] == pytest.approx(0.0, abs=1e-6)
    assert xs[1] == pytest.approx(0.4)
    assert kls[1] > 0 and xs[2] == pytest.approx(0.48)
    with pytest.raises(ValueError, match="kl_target"):
        train_fisao(FisaoConfig(**a, rollout_batch=4, out=str(root / "bad"), kl_on="none",
                                kl_target=0.1))


def test_anchor_holds_the_yes_no_answers_near_the_reference(two_proc_setup):
    """Extension (anchor_weight): a KL(pi_ref || pi_theta) term on the first answer token of the
    data's existence prompts. It is 0 while the policy is the reference and stays smaller with a
    large weight than with a negligible one (same rollouts otherwise)."""
    root, args = two_proc_setup
    recs = json.loads(Path(args["data"]).read_text())
    recs += [{"id": f"e{i}", "image": r["image"], "task": "existence", "conversations": [
        {"from": "human", "value": "<image>\nIs there a ball in the image?"},
        {"from": "gpt", "value": "Yes"}]} for i, r in enumerate(recs)]
    write_json(root / "data_anchor.json", recs)
    kls = {}
    for w in (1e-6, 50.0):
        out = root / f"anchor{w:g}"
        cfg = FisaoConfig(**{**args, "data": str(root / "data_anchor.json"), "max_steps": 3},
                          rollout_batch=4, out=str(out), anchor_weight=w)
        cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = 4, 8, 0.0
        train_fisao(cfg)
        log = _log(out)
        assert log[0]["entities_per_response"] > 0        # the PPO part has rewards to follow
        assert all("anchor_kl" in r for r in log)
        kls[w] = [r["anchor_kl"] for r in log]
    # logged: the mean over the PPO epochs of a rollout (the first epoch of the first rollout
    # is at the reference); the policy moves its yes/no answer unless anchored
    assert 0 <= kls[1e-6][0] < kls[1e-6][-1]
    assert kls[50.0][-1] < kls[1e-6][-1]
    from PIL import Image

    from visalign.methods.fisao import (anchor_kl, first_answer_logprobs, load_anchor_items,
                                        whitespace_token_ids)
    from visalign.models import load_vlm
    vlm = load_vlm(args["model"])
    items = load_anchor_items(FisaoConfig(data=str(root / "data_anchor.json"),
                                          image_root=args["image_root"]))
    assert len(items) == 4
    batch = vlm.encode([Image.open(it["image"]).convert("RGB") for it in items],
                       [it["conversation"] for it in items])
    tok = vlm.processor.tokenizer
    ws = whitespace_token_ids(tok)
    assert ws and all(tok.decode([i]).strip() == "" for i in ws)
    with torch.no_grad():
        ref = first_answer_logprobs(vlm.model, batch, ws)
        assert ref.shape[0] == 4 and torch.allclose(ref.exp().sum(-1), torch.ones(4))
        assert anchor_kl(vlm.model, batch, ref, ws).item() == pytest.approx(0.0, abs=1e-6)
    # the position read is the answer word's: its label decodes to "Yes"
    lab = batch["labels"][0]
    first = next(t for t in range(len(lab)) if lab[t] != -100 and int(lab[t]) not in ws)
    assert tok.decode([int(lab[first])]).strip() == "Yes"
    with pytest.raises(Exception, match="existence"):
        cfg = FisaoConfig(**args, rollout_batch=4, out=str(root / "noanchor"), anchor_weight=1.0)
        train_fisao(cfg)


def test_grad_accum_splits_the_rollout_and_gives_the_same_run(two_proc_setup, monkeypatch):
    """grad_accum = G accumulates G slices of each rollout into one optimiser step: the run
    equals the whole-batch run; TrainConfig fields FiSAO does not use are refused, not
    ignored."""
    from visalign.methods.fisao import effective_minibatch

    import visalign.methods.fisao.train as fisao_mod

    root, args = two_proc_setup
    seen: list = []
    real = fisao_mod.ppo_epoch

    def spy(*a, **kw):
        seen.append(kw["minibatch"])
        return real(*a, **kw)

    monkeypatch.setattr(fisao_mod, "ppo_epoch", spy)
    runs = {}
    for name, extra in (("whole", {}), ("accum", {"grad_accum": 2})):
        seen.clear()
        cfg = FisaoConfig(**args, rollout_batch=4, out=str(root / f"ga_{name}"), **extra)
        cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = 4, 8, 0.0
        train_fisao(cfg)
        # each PPO step went through rollout_batch / grad_accum rows at a time
        assert seen and set(seen) == {0 if not extra else 2}
        runs[name] = (_log(root / f"ga_{name}"), _adapter(root / f"ga_{name}"))
    (log_w, ad_w), (log_a, ad_a) = runs["whole"], runs["accum"]
    assert log_w[-1]["grad_norm"] > 0
    for rw, ra in zip(log_w, log_a):
        assert ra["loss"] == pytest.approx(rw["loss"], rel=1e-4, abs=1e-7)
    moved = max(float(v.abs().max()) for v in ad_w.values())
    for k in ad_w:
        assert torch.allclose(ad_w[k], ad_a[k], atol=1e-3 * max(moved, 1e-9), rtol=1e-3)
    assert effective_minibatch(FisaoConfig(rollout_batch=16, grad_accum=4)) == 4
    assert effective_minibatch(FisaoConfig(rollout_batch=5, grad_accum=2)) == 3
    assert effective_minibatch(FisaoConfig(rollout_batch=16, ppo_minibatch=8)) == 8
    with pytest.raises(ValueError, match="set one of them"):
        effective_minibatch(FisaoConfig(rollout_batch=16, grad_accum=4, ppo_minibatch=8))
    for bad, hint in (({"batch_size": 4}, "rollout_batch"), ({"max_length": 64},
                      "max_new_tokens"), ({"log_every": 1}, "every rollout")):
        with pytest.raises(ValueError, match=hint):
            effective_minibatch(FisaoConfig(**bad))


def test_two_processes_match_one_process_with_the_same_global_batch(two_proc_setup):
    root, args = two_proc_setup
    one = root / "one"
    cfg = FisaoConfig(**args, rollout_batch=4, out=str(one))
    cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = 4, 8, 0.0
    train_fisao(cfg)

    two = root / "two"
    over = [f"{k}={v}" for k, v in args.items() if k not in ("model", "data", "image_root")]
    res = launch_2proc(["-m", "visalign.cli", "train", "fisao", "--model", args["model"],
                        "--data", args["data"], "--image-root", args["image_root"],
                        "--out", str(two), *over, "rollout_batch=2", "lora.r=4", "lora.alpha=8",
                        "lora.dropout=0.0"], timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-4000:]
    assert json.loads((two / "train_summary.json").read_text())["processes"] == 2

    log1, log2 = _log(one), _log(two)
    assert [r["step"] for r in log1] == [r["step"] for r in log2] == [1, 2]
    # the rewards were not all zero, so the comparison says something
    assert log1[0]["entities_per_response"] > 0 and log1[0]["grad_norm"] > 0
    assert log1[1]["kl"] != 0.0           # the second rollout is sampled from π_θ != π_ref
    # 4 updates, 1 of warm-up, cosine: the second rollout starts at cos-progress 1/3
    assert log1[1]["lr"] == pytest.approx(args["lr"] * 0.75)
    for a, b in zip(log1, log2):
        for k in ("loss", "mean_reward", "pos_share", "neg_share", "kl", "clip_fraction",
                  "grad_norm", "approx_kl", "entities_per_response", "response_tokens",
                  "lr"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-7), (k, a[k], b[k])
    w1, w2 = _adapter(one), _adapter(two)
    assert w1.keys() == w2.keys()
    assert max(w1[k].abs().max().item() for k in w1 if "lora_B" in k) > 0   # B starts at 0
    # Adam divides by sqrt(v): elements with tiny gradients move by ~lr whatever their size, so
    # float-level noise there shows up as ~1e-3 of one step; compare at 1% of lr.
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-2 * args["lr"], rtol=0), k


def test_rollouts_never_sample_the_image_token(tiny_llava_dir):
    """A sampled image placeholder would make the response unreplayable (the PPO forward then
    fails on 'image features and image tokens do not match'); generation suppresses it."""
    from _tiny import solid_images

    from visalign.models import load_vlm, sequence_logprobs

    vlm = load_vlm(tiny_llava_dir)
    image_id = vlm._image_token_ids()[0]
    head = vlm.model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, i, out: out.index_add(
        -1, torch.tensor([image_id]), torch.full((*out.shape[:-1], 1), 50.0)))
    try:
        ro = vlm.rollout(solid_images(2), ["Describe the image."] * 2, max_new_tokens=6,
                         seeds=[1, 2])
        assert all(image_id not in ids for ids in ro.response_ids)
        assert all(len(ids) == 6 for ids in ro.response_ids)   # it was not EOS either
        lp = sequence_logprobs(vlm.model, ro.batch)           # replayable
    finally:
        hook.remove()
    assert torch.isfinite(lp).all()
