"""Fluency guard next to CHAIR: out-of-vocabulary words, word triples, bigram repetition."""

from __future__ import annotations

import pytest

from visalign.eval.fluency import build_vocabulary, fluency, words, world_vocabulary

VOCAB = build_vocabulary(["The image shows a big black dog in the center.",
                          "A small cup is on the left."])


def test_words_and_vocabulary():
    assert words("A big-black DOG, 3 cups!") == ["a", "big", "black", "dog", "cups"]
    assert {"the", "dog", "cup", "left"} <= VOCAB and "cups" not in VOCAB


def test_fluent_text_scores_clean():
    m = fluency(["A big black dog is in the center.", "A small cup is on the left."], VOCAB)
    assert m == {"oov_word_rate": 0.0, "degenerate_share": 0.0, "distinct_2": 1.0}


def test_broken_words_and_triples_are_flagged():
    texts = ["A bigimalies is in the center.",          # 1 OOV word of 6
             "A big a a a dog.",                        # in-vocabulary triple
             "The dog is in the center."]               # fine
    m = fluency(texts, VOCAB)
    assert m["oov_word_rate"] == pytest.approx(1 / (6 + 6 + 6))
    assert m["degenerate_share"] == pytest.approx(2 / 3)
    # "a a" appears twice among the 5 bigrams of the second text
    assert m["distinct_2"] == pytest.approx((1 + 4 / 5 + 1) / 3)


def test_repetition_lowers_distinct_2_and_errors():
    rep = fluency(["the dog the dog the dog"], VOCAB)
    assert rep["distinct_2"] == pytest.approx(2 / 5) and rep["degenerate_share"] == 0.0
    with pytest.raises(ValueError, match="empty vocabulary"):
        fluency(["a dog"], set())
    assert fluency([], VOCAB)["degenerate_share"] == 0.0


def test_world_vocabulary_covers_its_own_text(tiny_world_dir):
    from visalign.data.llava import load_llava_records
    from visalign.world import load_world

    world = load_world(tiny_world_dir)
    vocab = world_vocabulary(world)
    # splits the world lacks are skipped, not an error (an eval-only world may lack test)
    assert world_vocabulary(world, splits=("train", "no-such-split")) <= vocab
    train = load_llava_records(world.llava_path("train"))
    answers = [r["conversations"][1]["value"] for r in train[:50]]
    assert fluency(answers, vocab)["oov_word_rate"] == 0.0
    # held-out text of the same world is the same closed language
    val = load_llava_records(world.llava_path("val"))
    assert fluency([r["conversations"][1]["value"] for r in val], vocab)["oov_word_rate"] < 0.01
