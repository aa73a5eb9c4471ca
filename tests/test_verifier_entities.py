"""The entity set C: sources, inflect/WordNet expansion, canonical names, longest match."""

import os

import pytest

from visalign.verifier.entities import (COCO_CATEGORIES, ENTITY_NOUNS_PATH, EntityMention,
                                        EntitySet, normalize_entity, read_word_list)

HAS_WORDNET = os.path.exists("/usr/share/wordnet/index.noun")

SMALL = [["bicycle", "bike"], ["traffic light"], ["light"], ["hot dog"], ["dog"]]


@pytest.fixture(scope="module")
def small():
    return EntitySet.build(extra=SMALL, synonyms=None, nouns=False, wordnet=False)


def test_small_set_inflections_and_stats(small):
    # 6 base forms + their 6 plurals
    assert small.stats() == {"base": 6, "expanded": 12, "canonical": 5, "inflect_added": 6,
                             "wordnet_added": 0, "wordnet": False}
    assert small.canonical("bikes") == "bicycle"          # synonym table + plural
    assert small.canonical("Bike") == "bicycle"
    assert small.canonical("traffic lights") == "traffic light"
    assert small.canonical("hot-dogs") == "hot dog"       # hyphen == space
    assert small.canonical("cat") is None and "dogs" in small


def test_find_longest_match_first_with_char_spans(small):
    text = "Two Bikes near the traffic light, a hot-dog stand and DOGS."
    got = small.find(text)
    assert got == [EntityMention("Bikes", "bicycle", 4, 9),
                   EntityMention("traffic light", "traffic light", 19, 32),
                   EntityMention("hot-dog", "hot dog", 36, 43),
                   EntityMention("DOGS", "dog", 54, 58)]
    assert all(text[m.start:m.end] == m.surface for m in got)
    # words must be whole; punctuation breaks a multi-word entity
    assert small.find("a doghouse and a hotdog") == []
    assert [m.canonical for m in small.find("traffic, light")] == ["light"]
    assert [m.canonical for m in small.find("the dog's lights")] == ["dog", "light"]
    assert small.find("") == [] and small.find(text) == got      # cached path agrees


def test_precedence_extra_over_tables_and_listed_plural_kept():
    es = EntitySet.build(extra=[["bicycle", "bike"]], synonyms=[["motorcycle", "bike"]],
                         nouns=["glasses", "glass"], wordnet=False)
    assert es.canonical("bike") == "bicycle"        # extra vocabulary wins
    assert es.canonical("glasses") == "glasses"     # a listed word is not re-read as a plural
    assert es.canonical("glass") == "glass"


def test_packaged_resources_load():
    words = read_word_list(ENTITY_NOUNS_PATH)
    assert 300 <= len(words) <= 1300
    assert len(set(words)) == len(words)
    assert all(w == w.lower().strip() for w in words)
    es = EntitySet.build(wordnet=False)
    st = es.stats()
    assert st["base"] >= 1000 and st["expanded"] > st["base"] and st["wordnet"] is False
    for name in COCO_CATEGORIES:
        assert es.canonical(name) is not None, name
    found = [(m.surface, m.canonical) for m in es.find("A hot dog by the traffic lights.")]
    assert found == [("hot dog", "hot dog"), ("traffic lights", "traffic light")]


def test_save_load_roundtrip(tmp_path, small):
    path = small.save(tmp_path / "entities.json")
    again = EntitySet.load(path)
    assert again.forms == small.forms and again.stats() == small.stats()


def test_missing_wordnet_is_reported():
    with pytest.warns(UserWarning, match="WordNet not found"):
        es = EntitySet.build(extra=[["car"]], synonyms=None, nouns=False,
                             wordnet_root="/nonexistent/wordnet")
    assert es.stats()["wordnet"] is False and es.canonical("automobile") is None


@pytest.mark.skipif(not HAS_WORDNET, reason="no WordNet at /usr/share/wordnet")
def test_wordnet_synonyms_and_singulars():
    es = EntitySet.build(extra=[["car"], ["skis"], ["dog"]], synonyms=None, nouns=False)
    st = es.stats()
    assert st["wordnet"] is True and st["wordnet_added"] > 0
    assert st["expanded"] > st["base"] == 3
    assert es.canonical("automobile") == "car"       # WordNet synonym -> its source word
    assert es.canonical("automobiles") == "car"      # ... and its plural
    assert es.canonical("ski") == "skis"             # singular of a plural label
    assert es.canonical("frump") is None             # dog's 2nd sense is a person: dropped
    assert es.canonical("machine") is None           # car is not machine's main sense
    assert normalize_entity("Domestic_Dog".replace("_", " ")) in es.forms


def test_words_naming_the_picture_are_not_entities():
    from visalign.verifier.entities import EntitySet

    es = EntitySet.build(extra=[["painting"]], synonyms=None, nouns=["photo", "dog"],
                         wordnet=False)
    text = "This picture shows a photo of a dog next to a painting."
    assert [m.canonical for m in es.find(text)] == ["dog", "painting"]
    assert es.stats()["base"] == 2          # "photo" was listed but is not counted
    # a user vocabulary may still ask for them
    es = EntitySet.build(extra=[["photo"]], synonyms=None, nouns=False, wordnet=False)
    assert [m.surface for m in es.find(text)] == ["photo"]
