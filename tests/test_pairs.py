"""Preference-pair builders (GT-DPO, SeVa, SIMA, POVID), the SeVa/POVID diffusion noise, the pair
file format, and ``visalign pairs <method>`` end to end on a tiny LLaVA.

Expected values are written out by hand from the records below."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visalign.io import DataError
from visalign.methods import pairs as P
from visalign.methods.pairs.seva import CLIP_MEAN, CLIP_STD, alpha_bar, diffusion_noise


def rec(rid, answer, question="<image>\nDescribe the image.", image=None, image_id=None):
    r = {"id": rid, "image": image or f"images/{rid}.png",
         "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image_id is not None:
        r["image_id"] = image_id
    return r


# ---------------------------------------------------------------------------------------------
# GT-DPO
# ---------------------------------------------------------------------------------------------

def test_gt_dpo_chosen_is_ground_truth_rejected_is_model_answer_identical_skipped():
    records = [rec("a", "A red cup on a table.", image_id=7),
               rec("b", "Two dogs."),
               rec("c", "A cat.")]
    answers = [{"id": "a", "answer": "A blue cup on a table."},
               {"id": "b", "answer": "  two   DOGS "},           # same after normalisation
               {"id": "zzz", "answer": "unrelated"}]              # "c" has no answer
    pairs, stats = P.build_gt_dpo_pairs(records, answers)
    assert pairs == [{"id": "a", "image": "images/a.png", "prompt": "Describe the image.",
                      "chosen": "A red cup on a table.", "rejected": "A blue cup on a table.",
                      "image_id": 7, "meta": {"method": "gt-dpo"}}]
    assert stats["skipped_identical_ids"] == ["b"]
    assert stats["skipped_no_answer_ids"] == ["c"]
    assert stats["n_pairs"] == 1
    # a {id: answer} mapping works the same
    assert P.build_gt_dpo_pairs(records[:1], {"a": "Nothing."})[0][0]["rejected"] == "Nothing."


def test_pairs_use_first_exchange_and_reject_records_without_one():
    r = rec("a", "First answer.", question="Q1 <image>")
    r["conversations"] += [{"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]
    pairs, _ = P.build_gt_dpo_pairs([r], {"a": "Wrong."})
    assert (pairs[0]["prompt"], pairs[0]["chosen"]) == ("Q1", "First answer.")
    bad = {"id": "x", "image": "i.png", "conversations": [{"from": "human", "value": "Q"}]}
    with pytest.raises(DataError, match="record x.*conversations"):
        P.build_gt_dpo_pairs([bad], {"x": "A"})


# ---------------------------------------------------------------------------------------------
# SeVa and the diffusion noise
# ---------------------------------------------------------------------------------------------

def test_seva_chosen_is_clean_answer_rejected_is_noisy_answer():
    records = [rec("a", "GT a"), rec("b", "GT b"), rec("c", "GT c")]
    clean = [{"id": "a", "answer": "A red cup."}, {"id": "b", "answer": "A dog."},
             {"id": "c", "answer": "A cat."}]
    noisy = [{"id": "a", "answer": "A red cup and a bird.", "image": "noised/a_t500.png"},
             {"id": "b", "answer": "a dog"}]                    # identical; "c" missing
    pairs, stats = P.build_seva_pairs(records, clean, noisy, noise_step=500)
    assert len(pairs) == 1
    p = pairs[0]
    assert (p["chosen"], p["rejected"]) == ("A red cup.", "A red cup and a bird.")
    assert p["image"] == "images/a.png" and p["rejected_image"] == "noised/a_t500.png"
    assert p["meta"] == {"method": "seva", "noise_step": 500}
    assert stats["skipped_identical_ids"] == ["b"] and stats["skipped_no_answer_ids"] == ["c"]


def _img(rgb=(200, 40, 40), size=32):
    return Image.new("RGB", (size, size), rgb)


def test_diffusion_noise_is_deterministic_per_seed():
    im = _img()
    a, b = diffusion_noise(im, 500, seed=3), diffusion_noise(im, 500, seed=3)
    c = diffusion_noise(im, 500, seed=4)
    assert a.size == im.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.asarray(im).tolist() == np.asarray(_img()).tolist()   # input untouched


def test_diffusion_noise_grows_with_step():
    im = _img()
    x = np.asarray(im, dtype=float)
    err = [np.mean((np.asarray(diffusion_noise(im, t, seed=0), dtype=float) - x) ** 2)
           for t in (0, 200, 500, 800, 999)]
    assert all(e1 < e2 for e1, e2 in zip(err, err[1:])), err
    assert err[0] < 1.0   # step 0: β_0 ≈ 1e-5, the image barely changes


def test_alpha_bar_is_seva_vcd_sigmoid_schedule():
    # VCD/SeVa: betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5,
    # alphas_bar[t] = prod_{s<=t} (1 - betas[s])
    def beta(s):
        return 1 / (1 + math.exp(-(-6 + 12 * s / 999))) * (5e-3 - 1e-5) + 1e-5

    assert alpha_bar(0) == pytest.approx(1 - beta(0), abs=1e-12)
    assert alpha_bar(1) == pytest.approx((1 - beta(0)) * (1 - beta(1)), abs=1e-12)
    assert alpha_bar(500) == pytest.approx(math.prod(1 - beta(s) for s in range(501)), rel=1e-9)
    assert 0.74 < alpha_bar(500) < 0.75      # SeVa's default step: moderate noise
    assert alpha_bar(999) < 0.09
    for bad in (-1, 1000):
        with pytest.raises(ValueError):
            alpha_bar(bad)
    with pytest.raises(TypeError):
        alpha_bar(2.5)


def test_diffusion_noise_is_added_in_clip_normalised_space():
    # An image at the CLIP mean is 0 after normalisation, so x_t = sqrt(1 - ᾱ) ε and the pixel
    # noise std is sqrt(1 - ᾱ_t) * std_c * 255 per channel (no clipping at this level).
    mean_rgb = tuple(round(m * 255) for m in CLIP_MEAN)
    out = np.asarray(diffusion_noise(_img(mean_rgb, 64), 500, seed=0), dtype=float)
    for ch in range(3):
        expected = math.sqrt(1 - alpha_bar(500)) * CLIP_STD[ch] * 255   # ≈ 34.6, 33.7, 35.5
        assert out[..., ch].std() == pytest.approx(expected, rel=0.06)
        assert out[..., ch].mean() == pytest.approx(mean_rgb[ch], abs=2.5)


# ---------------------------------------------------------------------------------------------
# SIMA
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply,expected", [
    ("Response 1", 1), ("response 2.", 2), ("**Response 2** is better.", 2),
    ("2", 2), ("1.", 1), ("Answer 2", 2), ("The second response is more accurate.", 2),
    ("I choose Response 1 because it mentions no dog.", 1),
    ("Response 1 is better than Response 2.", 1),
    ("Response 2 is more accurate than Response 1.", 2),
    ("Response 1 is worse than Response 2.", 2),
    ("Response 1 is not better than Response 2.", 2),
    ("Response 2. Response 1 invents a dog.", 2),
    ("My verdict: Response 2, since Response 1 invents a dog", 2),
    ("Both Response 1 and Response 2 describe the image", None),
    ("", None), ("the cat sits on the mat", None), ("1 cat and 2 dogs", None),
    ("10", None),
])
def test_parse_critic_choice(reply, expected):
    assert P.parse_critic_choice(reply) == expected


def _responses_of(prompt):
    r1 = re.search(r"Response 1: (.*)\n", prompt).group(1)
    r2 = re.search(r"Response 2: (.*)\n", prompt).group(1)
    return r1, r2


def _errors(text):   # hallucinated words in the fake world (GT: "A cup.")
    return sum(w in text for w in ("dog", "cat", "bird"))


def fake_critic(images, prompts):
    """Prefers the response with fewer hallucinated words; says so in varied wordings."""
    out = []
    for p in prompts:
        assert "Ground truth: A cup." in p and "Question: Describe the image." in p
        assert all(m in p for m in ("object", "relationship", "attribute"))
        r1, r2 = _responses_of(p)
        out.append("Response 1 is better." if _errors(r1) <= _errors(r2) else
                   "**Response 2**")
    return out


SIMA_RESPONSES = ["A cup, a dog and a cat.", "A cup.", "A cup and a bird.", "A cup and a dog."]


def test_sima_ranker_orders_best_to_worst_with_fake_critic():
    ranker = P.SimaRanker(fake_critic)
    record = rec("a", "A cup.")
    # 0 has 2 errors, 1 none, 2 and 3 one each (tie broken by index)
    assert ranker(record, SIMA_RESPONSES) == [1, 2, 3, 0]
    assert ranker.stats == {"comparisons": 6, "parse_failures": 0, "likelihood_verdicts": 0}
    both = P.SimaRanker(fake_critic, both_orders=True)
    assert both(record, SIMA_RESPONSES) == [1, 2, 3, 0]
    assert both.stats["comparisons"] == 12


def test_sima_ranker_counts_parse_failures_and_falls_back_to_likelihood():
    def mute(images, prompts):
        return ["I am not sure."] * len(prompts)

    def forced(images, prompts):   # likelihood choice agrees with the fake critic
        return [1 if _errors(a) <= _errors(b) else 2 for a, b in map(_responses_of, prompts)]

    record = rec("a", "A cup.")
    gen_only = P.SimaRanker(mute)
    with pytest.raises(P.SimaRankError) as e:
        gen_only(record, SIMA_RESPONSES)
    assert e.value.reason == "rank_failed"
    assert gen_only.stats["parse_failures"] == 6
    auto = P.SimaRanker(mute, choice_fn=forced, verdict="auto")
    assert auto(record, SIMA_RESPONSES) == [1, 2, 3, 0]
    assert auto.stats == {"comparisons": 6, "parse_failures": 6, "likelihood_verdicts": 6}
    lik = P.SimaRanker(None, choice_fn=forced, verdict="likelihood")
    assert lik(record, SIMA_RESPONSES) == [1, 2, 3, 0]
    with pytest.raises(ValueError, match="choice_fn"):
        P.SimaRanker(mute, verdict="auto")


def test_sima_ranker_partial_failures_score_wins_minus_losses():
    # Only the comparison (0, 1) is decided (1 wins); 2 was never judged and must not be
    # ranked below the response that lost.
    def critic(images, prompts):
        return ["Response 2" if _responses_of(p) == (SIMA_RESPONSES[0], SIMA_RESPONSES[1])
                else "hmm" for p in prompts]

    order = P.SimaRanker(critic)(rec("a", "A cup."), SIMA_RESPONSES[:3])
    assert order[0] == 1 and order[-1] == 0


def test_sima_ranker_position_biased_critic_is_a_tie_not_a_pair():
    ranker = P.SimaRanker(lambda im, ps: ["Response 1"] * len(ps), both_orders=True)
    with pytest.raises(P.SimaRankError) as e:
        ranker(rec("a", "A cup."), SIMA_RESPONSES)
    assert e.value.reason == "tied"


def test_build_sima_pairs_best_vs_worst():
    records = [rec("a", "A cup.", image_id=1), rec("b", "A cup."), rec("c", "A cup."),
               rec("d", "A cup.")]
    samples = {"a": SIMA_RESPONSES + ["a cup"],       # duplicate of "A cup." collapsed
               "b": ["Same.", "same"],                 # one distinct response
               "c": ["x", "y"]}                        # "d": no samples
    seen = {}

    def rank_fn(record, responses):
        seen[record["id"]] = list(responses)
        if record["id"] == "c":
            raise P.SimaRankError("nope", "tied")
        return P.SimaRanker(fake_critic)(record, responses)

    pairs, stats = P.build_sima_pairs(records, samples, rank_fn)
    assert seen["a"] == SIMA_RESPONSES
    assert len(pairs) == 1
    p = pairs[0]
    assert (p["id"], p["chosen"], p["rejected"]) == ("a", "A cup.", "A cup, a dog and a cat.")
    assert p["meta"] == {"method": "sima", "n_samples": 5, "n_distinct": 4, "best": 1,
                         "worst": 0}
    assert p["image_id"] == 1
    assert stats["skipped"] == {"fewer_than_two_distinct": 1, "tied": 1, "no_samples": 1}
    assert stats["skipped_ids"]["no_samples"] == ["d"]
    with pytest.raises(ValueError, match="permutation"):
        P.build_sima_pairs(records[:1], samples, lambda r, rs: [0, 0, 1, 2])


# ---------------------------------------------------------------------------------------------
# POVID
# ---------------------------------------------------------------------------------------------

INSTANCES = {
    "images": [{"id": i, "file_name": f"{i:06d}.png", "width": 32, "height": 32}
               for i in (1, 2, 3)],
    "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "dog"},
                   {"id": 3, "name": "umbrella"}, {"id": 4, "name": "cat"},
                   {"id": 5, "name": "dining table"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8], "color": "red"},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [0, 0, 8, 8]},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 8, 8], "color": "blue"},
        {"id": 4, "image_id": 2, "category_id": 3, "bbox": [0, 0, 8, 8]},
        {"id": 5, "image_id": 3, "category_id": 1, "bbox": [0, 0, 8, 8]},
        {"id": 6, "image_id": 3, "category_id": 3, "bbox": [0, 0, 8, 8]},
        {"id": 7, "image_id": 3, "category_id": 2, "bbox": [0, 0, 8, 8]}],
}
# co-occurrence with "cup": umbrella 2 images, dog 1, dining table 1, cat 0


@pytest.fixture(scope="module")
def gt():
    from visalign.methods.nsft import GroundTruth

    return GroundTruth(INSTANCES)


@pytest.mark.parametrize("text,expected", [
    ("There is a cup.", "There is an umbrella."),          # article fixed
    ("Two cups are here.", "Two umbrellas are here."),     # plural kept
    ("A red cup.", "A red umbrella."),
])
def test_povid_object_edit_uses_most_cooccurring_absent_object(gt, text, expected):
    present = gt.present(1)                                  # cup, dining table
    assert present == {"cup", "dining table"}
    absent = [c for c in gt.categories if c not in present]  # cat, dog, umbrella
    e = P.object_edit(text, gt.mentions(text), present, absent, gt.cooccurrence(),
                      random.Random(0))
    assert e.kind == "object" and e.apply(text) == expected
    assert text[e.start:e.end] == e.old


def test_povid_object_edit_needs_a_present_mention(gt):
    text = "A dog."                                          # dog is not in image 1
    assert P.object_edit(text, gt.mentions(text), {"cup"}, ["umbrella"], gt.cooccurrence(),
                         random.Random(0)) is None


@pytest.mark.parametrize("text,colors,expected", [
    ("A red cup.", ["red", "blue"], "A blue cup."),
    ("There is a blue cube.", ["blue", "orange"], "There is an orange cube."),
    ("An orange cube.", ["orange", "red"], "A red cube."),
    ("The Red cup.", ["red", "green"], "The Green cup."),
])
def test_povid_attribute_edit_swaps_colour_and_article(text, colors, expected):
    e = P.attribute_edit(text, colors, random.Random(0))
    assert e.kind == "attribute" and e.apply(text) == expected


def test_povid_attribute_edit_leaves_protected_spans_and_unknown_colours():
    text = "An orange on a plate."
    assert P.attribute_edit(text, ["orange", "red"], random.Random(0), [(3, 9)]) is None
    assert P.attribute_edit("A teal cup.", ["red", "blue"], random.Random(0)) is None


@pytest.mark.parametrize("text,expected", [
    ("The cup is left of the dog.", "The cup is right of the dog."),
    ("The lamp is above the bed.", "The lamp is below the bed."),
    ("A cup on the table.", "A cup under the table."),
    ("A cat behind the sofa.", "A cat in front of the sofa."),
    ("A cat in front of the sofa.", "A cat behind the sofa."),
    ("A cup on the left.", "A cup on the right."),  # never "under the left"
    ("A cup on top of it.", None),
])
def test_povid_relation_edit(text, expected):
    e = P.relation_edit(text, random.Random(0))
    assert (e.apply(text) if e else None) == expected
    if e:
        assert e.kind == "relation"


def test_povid_rule_edits_always_change_exactly_their_span(gt):
    text = "A red cup is on the dining table, left of a blue umbrella."
    r = rec("x", text, image="images/000001.png")
    kinds = set()
    for seed in range(30):
        e = P.rule_edit(r, text, gt, gt.colors, ("object", "attribute", "relation"),
                         random.Random(seed))
        kinds.add(e.kind)
        out = e.apply(text)
        assert out != text
        assert out[:e.start] == text[:e.start] and out[e.start + len(e.new):] == text[e.end:]
    assert kinds == {"object", "attribute", "relation"}


def test_povid_stage1_rule_pairs_and_stage2_noisy_pairs(gt):
    records = [rec("r1", "There is a cup.", image="images/000001.png"),
               rec("r2", "Nothing to see.", image="images/000002.png"),
               rec("r3", "A red cup.", image="images/000003.png")]
    noisy = [{"id": "r1", "answer": "There is a cup and a dog.", "image": "n/r1.png"},
             {"id": "r2", "answer": "nothing to see"}]              # identical; r3 missing
    pairs, stats = P.build_povid_pairs(records, gt, random.Random(0), stages=(1, 2),
                                       edits=("object",), noisy_answers=noisy, noise_step=500)
    by_id = {p["id"]: p for p in pairs}
    assert sorted(by_id) == ["r1_s1", "r1_s2", "r3_s1"]
    s1 = by_id["r1_s1"]
    assert (s1["chosen"], s1["rejected"]) == ("There is a cup.", "There is an umbrella.")
    assert s1["meta"]["stage"] == 1 and s1["meta"]["edit"]["kind"] == "object"
    s2 = by_id["r1_s2"]
    assert (s2["chosen"], s2["rejected"]) == ("There is a cup.", "There is a cup and a dog.")
    assert s2["meta"] == {"method": "povid", "stage": 2, "noise_step": 500}
    assert s2["rejected_image"] == "n/r1.png" and s2["image"] == "images/000001.png"
    # r3: cup is present in image 3 with umbrella and dog; absent = cat, dining table
    assert by_id["r3_s1"]["rejected"] in ("A red cat.", "A red dining table.")
    assert stats["stage1_pairs"] == 2 and stats["stage2_pairs"] == 1
    assert stats["skipped"] == {"no_applicable_edit": 1, "identical": 1, "no_noisy_answer": 1}
    with pytest.raises(ValueError, match="stage 2 needs"):
        P.build_povid_pairs(records, gt, random.Random(0), stages=(2,))
    with pytest.raises(ValueError, match="unknown POVID edit"):
        P.build_povid_pairs(records, gt, random.Random(0), stages=(1,), edits=("colour",))


def test_povid_without_ground_truth_uses_attribute_and_relation_rules():
    records = [rec("a", "A red cup left of a box."), rec("b", "A cup.")]
    pairs, stats = P.build_povid_pairs(records, None, random.Random(1), stages=(1,))
    assert [p["id"] for p in pairs] == ["a_s1"]
    assert pairs[0]["meta"]["edit"]["kind"] in ("attribute", "relation")
    assert pairs[0]["rejected"] != pairs[0]["chosen"]
    assert stats["skipped"] == {"no_applicable_edit": 1}


def test_povid_llm_editor():
    class Client:
        def __init__(self, replies):
            self.replies, self.prompts = list(replies), []

        def chat(self, messages):
            self.prompts.append(messages[0]["content"])
            return self.replies.pop(0)

    client = Client(['Rewritten description: "A red cup next to a dog."', "a red cup."])
    records = [rec("a", "A red cup."), rec("b", "A red cup.")]
    pairs, stats = P.build_povid_pairs(records, None, random.Random(0), stages=(1,),
                                       editor="llm", client=client)
    assert [(p["id"], p["rejected"]) for p in pairs] == [("a_s1", "A red cup next to a dog.")]
    assert "Description: A red cup." in client.prompts[0]
    assert stats["skipped"] == {"llm_no_edit": 1}


# ---------------------------------------------------------------------------------------------
# Pair file format
# ---------------------------------------------------------------------------------------------

GOOD = {"id": "a", "image": "i.png", "prompt": "<image>\nQ?", "chosen": "Yes.", "rejected": "No."}


def test_write_and_load_pairs_round_trip(tmp_path):
    pairs = [dict(GOOD), {**GOOD, "id": 2, "meta": {"stage": 2}, "extra": [1]}]
    for name in ("p.json", "p.jsonl"):
        path = P.write_pairs(tmp_path / name, pairs)
        loaded = P.load_pairs(path)
        assert [p["id"] for p in loaded] == ["a", "2"]
        assert loaded[0]["prompt"] == "Q?" and loaded[0]["meta"] == {}
        assert loaded[1]["extra"] == [1] and loaded[1]["meta"] == {"stage": 2}
    assert (tmp_path / "p.jsonl").read_text().count("\n") == 2
    assert isinstance(json.loads((tmp_path / "p.json").read_text()), list)


@pytest.mark.parametrize("bad,field,msg", [
    ({"chosen": ""}, "chosen", "non-empty"),
    ({"rejected": None}, "rejected", "non-empty"),
    ({"image": 3}, "image", "non-empty"),
    ({"rejected": " yes "}, "rejected", "identical"),
    ({"id": "a"}, "id", "duplicate"),
    ({"id": True}, "id", "invalid id"),
    ({"meta": {"stage": 0}}, "meta.stage", "stage"),
    ({"meta": []}, "meta", "object"),
    ({"image_id": 1.5}, "image_id", "integer"),
])
def test_pair_file_errors_name_file_record_and_field(tmp_path, bad, field, msg):
    path = tmp_path / "pairs.jsonl"
    second = {**GOOD, "id": "b", **bad}
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(second) + "\n")
    with pytest.raises(DataError) as e:
        P.load_pairs(path)
    text = str(e.value)
    assert str(path) in text and f"field '{field}'" in text and msg in text
    assert "record 1" in text
    assert e.value.field == field


def test_pair_file_other_errors(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("[1]")
    with pytest.raises(DataError, match=r"p\.json: record 0: expected a JSON object"):
        P.load_pairs(path)
    path.write_text("[]")
    with pytest.raises(DataError, match="no pairs"):
        P.load_pairs(path)
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n{not json\n" + json.dumps({**GOOD, "id": "c"}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl"):
        P.load_pairs(bad)
    with pytest.raises(DataError, match="rejected"):   # write_pairs validates too
        P.write_pairs(tmp_path / "w.json", [{**GOOD, "rejected": "yes"}])
    assert not (tmp_path / "w.json").exists()


# ---------------------------------------------------------------------------------------------
# CLI on a tiny LLaVA
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Two hand-made LLaVA records with 64x64 PNGs, and COCO instances for them."""
    root = tmp_path_factory.mktemp("pairs_data")
    (root / "images").mkdir()
    colors = [(220, 30, 30), (30, 30, 220)]
    answers = ["There is a red cup on the dining table.", "A blue umbrella left of a cup."]
    records = []
    for i, (c, a) in enumerate(zip(colors, answers), start=1):
        Image.new("RGB", (64, 64), c).save(root / "images" / f"{i:06d}.png")
        records.append(rec(f"r{i}", a, image=f"images/{i:06d}.png", image_id=i))
    (root / "data.json").write_text(json.dumps(records))
    inst = {**INSTANCES, "images": INSTANCES["images"][:2],
            "annotations": INSTANCES["annotations"][:4]}
    (root / "instances.json").write_text(json.dumps(inst))
    return root


def _run_pairs(method, tiny_data, model, out, *extra):
    from visalign.cli import main

    flags = [x for x in extra if "=" not in x or x.startswith("--")]
    overrides = [x for x in extra if x not in flags]
    rc = main(["pairs", method, "--data", str(tiny_data / "data.json"), "--model", str(model),
               "--out", str(out), *flags, "--debug", "max_new_tokens=4", "batch_size=4",
               *overrides])
    assert rc == 0
    pairs = P.load_pairs(out)
    for p in pairs:   # the data's image paths (relative to its root); noised ones absolute
        assert (tiny_data / p["image"]).is_file(), p["image"]
        if "rejected_image" in p:
            assert Path(p["rejected_image"]).is_absolute()
            assert Path(p["rejected_image"]).is_file()
    stats = json.loads((out.parent / f"{out.name}.stats.json").read_text())
    assert stats["n_pairs"] == len(pairs)
    assert (out.parent / f"{out.name}.config.yaml").is_file()
    return pairs, stats


def test_cli_pairs_gt_dpo(tiny_data, tiny_llava_dir, tmp_path):
    pairs, _ = _run_pairs("gt-dpo", tiny_data, tiny_llava_dir, tmp_path / "sub" / "gt.jsonl")
    data = json.loads((tiny_data / "data.json").read_text())
    answers = [json.loads(x) for x in (tmp_path / "sub" / "gt_work" / "answers.jsonl")
               .read_text().splitlines()]
    assert [p["chosen"] for p in pairs] == [r["conversations"][1]["value"] for r in data]
    assert [p["rejected"] for p in pairs] == [a["answer"] for a in answers]
    assert [p["image"] for p in pairs] == [r["image"] for r in data]


def test_cli_pairs_seva(tiny_data, tiny_llava_dir, tmp_path):
    out = tmp_path / "seva.json"
    pairs, stats = _run_pairs("seva", tiny_data, tiny_llava_dir, out, "noise_step=800",
                              "noise_resize=32")
    assert stats["noise_step"] == 800 and pairs
    noised = sorted((tmp_path / "seva_work" / "noised").glob("*.png"))
    assert len(noised) == 2 and all(n.name.endswith("_t800_s0_r32.png") for n in noised)
    for p in pairs:
        assert p["meta"] == {"method": "seva", "noise_step": 800}
        assert "_t800_s0_r32" in p["rejected_image"]
        with Image.open(tiny_data / p["image"]) as im:
            colour = np.asarray(im, dtype=float)[0, 0]     # solid-colour source
        noisy = np.asarray(Image.open(p["rejected_image"]), dtype=float)
        assert noisy.shape == (32, 32, 3)                  # resized before noising
        assert np.abs(noisy - colour).mean() > 20          # ᾱ_800 ≈ 0.22: heavily noised


def test_cli_pairs_sima(tiny_data, tiny_llava_dir, tmp_path):
    # The untrained model cannot follow the critic instruction: the likelihood fallback ranks.
    pairs, stats = _run_pairs("sima", tiny_data, tiny_llava_dir, tmp_path / "sima.jsonl",
                              "num_samples=3", "critic_max_new_tokens=2")
    assert len(pairs) == 2
    assert stats["critic"]["comparisons"] == 6
    assert stats["critic"]["likelihood_verdicts"] + (6 - stats["critic"]["parse_failures"]) == 6
    samples = [json.loads(x) for x in (tmp_path / "sima_work" / "samples.jsonl")
               .read_text().splitlines()]
    assert sorted(s["id"] for s in samples) == ["r1#0", "r1#1", "r1#2", "r2#0", "r2#1", "r2#2"]
    for p in pairs:
        mine = [s["answer"] for s in samples if s["id"].startswith(p["id"] + "#")]
        assert p["chosen"] in mine and p["rejected"] in mine


def test_cli_pairs_povid(tiny_data, tiny_llava_dir, tmp_path):
    out = tmp_path / "povid.jsonl"
    pairs, stats = _run_pairs("povid", tiny_data, tiny_llava_dir, out,
                              "--instances", str(tiny_data / "instances.json"),
                              "povid_edits=[object]")
    s1 = [p for p in pairs if p["meta"]["stage"] == 1]
    s2 = [p for p in pairs if p["meta"]["stage"] == 2]
    assert [p["id"] for p in s1] == ["r1_s1", "r2_s1"]
    # r1: cup, dining table present; absent umbrella co-occurs with cup in 1 image (image 2)
    assert s1[0]["rejected"] in ("There is a red umbrella on the dining table.",
                                 "There is a red cup on the umbrella.",
                                 "There is a red cup on the dog.", "There is a red cup on the cat.")
    assert all(p["meta"]["edit"]["kind"] == "object" for p in s1)
    noisy = {json.loads(x)["id"]: json.loads(x)["answer"] for x in next(
        (tmp_path / "povid_work").glob("answers_noise_*.jsonl")).read_text().splitlines()}
    assert s2 and all(p["rejected"] == noisy[p["id"][:-3]] for p in s2)
    assert stats["stage1_pairs"] == 2


@pytest.mark.parametrize("method,overrides", [("gt-dpo", {}),
                                              ("seva", {"noise_step": 800, "noise_resize": 32})])
def test_library_build_method_pairs_matches_cli(tiny_data, tiny_llava_dir, tmp_path, method,
                                                overrides):
    from visalign.methods.pairs import PairModel, build_method_pairs

    cli_out = tmp_path / "cli" / "pairs.jsonl"
    cli_pairs, cli_stats = _run_pairs(method, tiny_data, tiny_llava_dir, cli_out,
                                      *(f"{k}={v}" for k, v in overrides.items()))
    records = json.loads((tiny_data / "data.json").read_text())
    cfg = P.PairsConfig(max_new_tokens=4, batch_size=4, **overrides)
    # A model dir (loaded inside) and a loaded PairModel, shared by calls, give the same pairs.
    for model in (str(tiny_llava_dir), PairModel(tiny_llava_dir, cfg, tiny_data)):
        work = tmp_path / f"lib_{type(model).__name__}"
        pairs, stats = build_method_pairs(method, records, cfg=cfg, model=model,
                                          work_dir=work, image_root=tiny_data)
        assert (work / "answers.jsonl").is_file()
        # noised images live in each work dir: compare their names, not their dirs
        assert [{**p, "rejected_image": Path(p["rejected_image"]).name} if "rejected_image" in p
                else p for p in P.validate_pairs(pairs)] == \
            [{**p, "rejected_image": Path(p["rejected_image"]).name} if "rejected_image" in p
             else p for p in cli_pairs]
        assert stats == {k: v for k, v in cli_stats.items() if k != "inputs"}


def test_library_build_method_pairs_inputs(tiny_data):
    from visalign.config import ConfigError
    from visalign.methods.pairs import build_method_pairs

    records = json.loads((tiny_data / "data.json").read_text())
    pairs, stats = build_method_pairs("gt-dpo", records, answers={"r1": "A dog."})
    assert [(p["id"], p["rejected"]) for p in pairs] == [("r1", "A dog.")]
    assert stats["skipped_no_answer_ids"] == ["r2"]
    for method, kwargs, msg in [("sima", {}, "a model is required"),
                                ("gt-dpo", {}, "give a model or answers"),
                                ("seva", {"answers": {}}, "give a model or noisy_answers"),
                                ("povid", {}, "give a model or noisy_answers"),
                                ("dpo", {}, "unknown method")]:
        with pytest.raises(ConfigError, match=msg):
            build_method_pairs(method, records, **kwargs)
    # POVID stage 1 alone needs no model
    pairs, _ = build_method_pairs("povid", records, cfg=P.PairsConfig(povid_stages=[1]))
    assert pairs and all(p["meta"]["stage"] == 1 for p in pairs)


def test_cli_pairs_needs_model_or_answers(tiny_data, tmp_path, capsys):
    from visalign.cli import main

    assert main(["pairs", "gt-dpo", "--data", str(tiny_data / "data.json"),
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "--answers" in capsys.readouterr().err
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"id": "r1", "answer": "A dog."}) + "\n")
    assert main(["pairs", "gt-dpo", "--data", str(tiny_data / "data.json"), "--answers",
                 str(answers), "--out", str(tmp_path / "x.json")]) == 0
    assert [p["id"] for p in P.load_pairs(tmp_path / "x.json")] == ["r1"]
