"""AMBER scored as its inference.py: the expected numbers and nouns below come from running
AMBER's inference.py (nltk 3.10, WordNet 3.0) on the fixture of tests/_amber.py, with a spaCy
stand-in giving exact-match similarities ("exact") or the table of _amber.SIMILARITIES."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from _amber import GENERATIVE, TableNLP, build_amber_dir, responses
from visalign.eval.amber import (AmberBenchmark, AmberData, AmberScorer, amber_metrics,
                                 normalize_answer, score_amber)
from visalign.eval.amber_text import AmberResourceError, NounExtractor, make_similarity
from visalign.io import DataError

NLTK_DATA = Path(__file__).parent / "data" / "nltk_data"

# inference.py --evaluation_type a, similarity by string equality
REF_EXACT = {
    "generative": {"CHAIR": 36.4, "Cover": 84.6, "Hal": 100.0, "Cog": 58.3},
    "discriminative": {"Accuracy": 41.7, "Precision": 75.0, "Recall": 42.9, "F1": 54.6},
    "existence": {"Accuracy": 33.3, "Precision": 99.9, "Recall": 50.0, "F1": 66.6},
    "attribute": {"Accuracy": 33.3, "Precision": 49.9, "Recall": 33.3, "F1": 39.9},
    "state": {"Accuracy": 50.0, "Precision": 0.0, "Recall": 0.0, "F1": 0.0},
    "number": {"Accuracy": 0.0, "Precision": 0.0, "Recall": 0.0, "F1": 0.0},
    "action": {"Accuracy": 50.0, "Precision": 99.9, "Recall": 99.9, "F1": 99.9},
    "relation": {"Accuracy": 66.6, "Precision": 99.9, "Recall": 50.0, "F1": 66.6},
}
# the same with the similarity table: "house" ~ "building", "desk" ~ "plate"
REF_TABLE_GENERATIVE = {"CHAIR": 27.3, "Cover": 92.3, "Hal": 75.0, "Cog": 58.3}
# inference.py on the responses after first-word normalisation
REF_FIRST_WORD = {
    "discriminative": {"Accuracy": 75.0, "Precision": 85.7, "Recall": 85.7, "F1": 85.7},
    "existence": {"Accuracy": 100.0, "Precision": 100.0, "Recall": 100.0, "F1": 100.0},
    "attribute": {"Accuracy": 50.0, "Precision": 66.6, "Recall": 66.6, "F1": 66.6},
    "state": {"Accuracy": 100.0, "Precision": 99.9, "Recall": 99.9, "F1": 99.9},
    "number": {"Accuracy": 0.0, "Precision": 0.0, "Recall": 0.0, "F1": 0.0},
    "action": {"Accuracy": 50.0, "Precision": 99.9, "Recall": 99.9, "F1": 99.9},
    "relation": {"Accuracy": 100.0, "Precision": 100.0, "Recall": 100.0, "F1": 100.0},
}
# inference.py's extract_nouns (capitalised nouns keep their case and so never match AMBER's
# lower-case words; "there is no dog" still yields "dog"; the tagger makes "sleeps" a noun)
REF_NOUNS = {
    GENERATIVE[0][2]: ["Man", "dog", "road", "cloud", "sky", "grass", "street", "sign", "people"],
    GENERATIVE[1][2]: ["cup", "sleep", "Table", "bench", "light", "window", "man"],
    GENERATIVE[2][2]: ["house", "river", "vehicle", "truck", "tree", "bird", "water"],
    GENERATIVE[3][2]: ["cat", "plate", "desk"],
    "There is no dog.": ["dog"],
    "Dogs and Cats play; the People watch the TREES.": ["Dogs", "Cats", "People", "TREES"],
    "Two women, three children and some leaves, glasses, buses, mice.":
        ["woman", "child", "leaf", "glass", "bus", "mouse"],
    "Yes, there is a bench.": ["bench"],
    "": [],
}


@pytest.fixture(scope="module")
def extractor():
    """NLTK's noun extraction on the vendored tokenizer/tagger (tests/data/nltk_data) and the
    system WordNet (Debian's wordnet-base, which scripts/setup.sh installs)."""
    try:
        return NounExtractor(nltk_data=NLTK_DATA)
    except AmberResourceError as e:
        pytest.skip(f"no WordNet for the lemmatiser: {e}")


@pytest.fixture()
def amber_dir(tmp_path):
    return build_amber_dir(tmp_path)


def _write(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _blocks(result: dict) -> dict:
    return {k: result[k] for k in REF_EXACT if k in result}


# ----------------------------------------------------------------------------- nouns


def test_nouns_match_inference_py(extractor):
    for text, nouns in REF_NOUNS.items():
        assert extractor(text) == nouns, text


# ----------------------------------------------------------------------------- scoring


def test_scores_match_inference_py_with_its_nouns(amber_dir):
    # the matching and the arithmetic alone, fed inference.py's own nouns (no NLTK data needed)
    scorer = AmberScorer(AmberData.load(amber_dir), REF_NOUNS.__getitem__,
                         make_similarity("exact"))
    result = scorer.score(responses())
    assert _blocks(result) == REF_EXACT
    assert result["amber_score"] == round((100 - 36.4 + 54.6) / 2, 1) == 59.1
    assert result["query_set"] == "all" and result["answers"] == "exact"
    first = result["descriptions"][0]
    assert first["nouns"] == ["dog", "road", "cloud", "sky", "grass", "street", "people"]
    assert first["hallucinated"] == ["dog", "cloud"]  # "there is no cloud" still counts
    assert first["covered"] == ["sky", "grass", "person", "road"]
    assert result["descriptions"][1]["hallu_mentioned"] == ["chair"]  # "bench" ~ chair's word
    assert result["counts"]["not_yes_no"] == 5 and result["counts"]["nouns"] == 22


def test_exact_similarity_end_to_end(amber_dir, extractor, tmp_path):
    result = score_amber(_write(tmp_path / "r.json", responses()), amber_dir,
                         similarity="exact", nltk_data=NLTK_DATA)
    assert _blocks(result) == REF_EXACT
    assert result["similarity"].startswith("exact")
    assert result["metrics"] == {
        "amber_chair": 0.364, "amber_cover": 0.846, "amber_hal": 1.0, "amber_cog": 0.583,
        "amber_accuracy": 0.417, "amber_precision": 0.75, "amber_recall": 0.429,
        "amber_f1": 0.546, "amber_score": 0.591}


def test_spacy_similarity_end_to_end(amber_dir, extractor):
    nlp = TableNLP()
    result = score_amber(responses(), amber_dir, similarity="spacy", nlp=nlp,
                         nltk_data=NLTK_DATA)
    assert result["generative"] == REF_TABLE_GENERATIVE
    assert result["discriminative"] == REF_EXACT["discriminative"]
    assert result["similarity"].startswith("spacy") and "0.8" in result["similarity"]
    assert "house" not in result["descriptions"][2]["hallucinated"]  # ~ building (0.9)
    # desk ~ plate (0.82) covers plate; desk ~ cat (0.8) is not > 0.8
    assert result["descriptions"][3]["hallucinated"] == []
    assert len(nlp.texts) == len(set(nlp.texts))  # one spaCy doc per word


def test_real_spacy_pipeline():
    spacy = pytest.importorskip("spacy", reason="spaCy not installed (pip install "
                                                "'visalign[amber]')")
    import warnings

    import numpy as np

    nlp = spacy.blank("en")
    for word, vec in {"house": [1, 0, 0], "building": [0.9, 0.3, 0], "dog": [0, 0, 1]}.items():
        nlp.vocab.set_vector(word, np.array(vec, dtype="float32"))
    similar = make_similarity("spacy", nlp=nlp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # spaCy's no-vector warning is silenced, as there
        assert similar("house", "building")  # cosine 0.95
        assert not similar("house", "dog")
        assert similar("zebra", "zebra") and not similar("zebra", "house")  # no vector


def test_first_word_answers(amber_dir):
    scorer = AmberScorer(AmberData.load(amber_dir), REF_NOUNS.__getitem__,
                         make_similarity("exact"), answers="first-word")
    result = scorer.score(responses())
    assert {k: result[k] for k in REF_FIRST_WORD} == REF_FIRST_WORD
    assert result["generative"] == REF_EXACT["generative"]
    assert result["answers"] == "first-word" and result["counts"]["not_yes_no"] == 1  # ""


def test_normalize_answer():
    assert normalize_answer("Yes, there is a dog.", "first-word") == "Yes"
    assert normalize_answer("no.", "first-word") == "No"
    assert normalize_answer("  NO", "first-word") == "No"
    assert normalize_answer("Not really", "first-word") == "Not really"
    assert normalize_answer("yes", "exact") == "yes"
    with pytest.raises(ValueError, match="first-word"):
        normalize_answer("Yes", "fuzzy")


def test_query_subsets(amber_dir, monkeypatch):
    rows = responses()
    # yes/no questions only: no NLTK data or spaCy needed
    import nltk.data

    monkeypatch.setattr(nltk.data, "path", [])
    exist = score_amber([r for r in rows if 5 <= r["id"] <= 7], amber_dir, similarity="spacy")
    assert exist["query_set"] == "existence" and exist["existence"] == REF_EXACT["existence"]
    assert "generative" not in exist and "discriminative" not in exist
    assert exist["amber_score"] is None and "amber_score" not in exist["metrics"]
    assert exist["similarity"].startswith("not used")
    gen = AmberScorer(AmberData.load(amber_dir), REF_NOUNS.__getitem__,
                      make_similarity("exact")).score(rows[:4])
    assert gen["query_set"] == "generative" and gen["generative"] == REF_EXACT["generative"]
    assert set(gen["metrics"]) == {"amber_chair", "amber_cover", "amber_hal", "amber_cog"}


def test_amber_metrics_scale():
    assert amber_metrics({"generative": {"CHAIR": 7.8, "Cover": 51.0, "Hal": 36.4, "Cog": 4.2},
                          "discriminative": {"Accuracy": 71.5, "Precision": 88.1,
                                             "Recall": 63.3, "F1": 74.7},
                          "amber_score": 83.5}) == {
        "amber_chair": 0.078, "amber_cover": 0.51, "amber_hal": 0.364, "amber_cog": 0.042,
        "amber_accuracy": 0.715, "amber_precision": 0.881, "amber_recall": 0.633,
        "amber_f1": 0.747, "amber_score": 0.835}


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("rows, match", [
    (lambda r: r[:-1], r"all query set .*1 ids missing \(first: 16\)"),
    (lambda r: r[:3], r"generative query set .*1 ids missing \(first: 4\)"),
    (lambda r: r + [{"id": 17, "response": "Yes"}], r"id 17 is not an AMBER query"),
    (lambda r: r + [r[0]], r"id 1 appears twice"),
    (lambda r: [{"id": "1", "response": "x"}], r"id must be an integer"),
    (lambda r: [{"id": 1, "response": None}], r"field 'response'"),
    (lambda r: [], r"no responses"),
])
def test_bad_responses(amber_dir, tmp_path, rows, match):
    path = _write(tmp_path / "responses.json", rows(responses()))
    with pytest.raises(DataError, match=match) as e:
        score_amber(path, amber_dir, similarity="exact")
    assert "responses.json" in str(e.value) and "\n" not in str(e.value)


def test_responses_for_another_query_set(amber_dir):
    rows = [r for r in responses() if 5 <= r["id"] <= 7]
    with pytest.raises(DataError, match=r"attribute query set .*6 ids missing.*3 ids not in it"):
        score_amber(rows, amber_dir, similarity="exact", query_set="attribute")


def test_bad_amber_dir(amber_dir, tmp_path):
    rel = json.loads((amber_dir / "relation.json").read_text())
    del rel["cloud"]
    (amber_dir / "relation.json").write_text(json.dumps(rel))
    with pytest.raises(DataError, match=r"relation.json: object word 'cloud' of annotations"):
        AmberData.load(amber_dir)
    with pytest.raises(DataError, match="AMBER data folder not found"):
        AmberData.load(tmp_path / "nowhere")


def test_missing_spacy_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import fails
    with pytest.raises(AmberResourceError) as e:
        make_similarity("spacy")
    msg = str(e.value)
    assert "en_core_web_lg" in msg and "similarity exact" in msg and "\n" not in msg
    fake = types.ModuleType("spacy")

    def load(name):
        raise OSError(f"[E050] Can't find model '{name}'")

    fake.load = load
    monkeypatch.setitem(sys.modules, "spacy", fake)
    with pytest.raises(AmberResourceError, match=r"en_core_web_lg is not installed.*"
                                                 r"python -m spacy download en_core_web_lg.*"
                                                 r"similarity exact"):
        make_similarity("spacy")


def test_missing_nltk_data_is_one_line(monkeypatch, tmp_path):
    import nltk.data

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(AmberResourceError, match=r"nltk.downloader punkt_tab") as e:
        NounExtractor()
    assert "\n" not in str(e.value)


def test_missing_wordnet_is_one_line(monkeypatch, tmp_path):
    import nltk.data

    monkeypatch.setattr(nltk.data, "path", [str(NLTK_DATA)])
    with pytest.raises(AmberResourceError, match=r"nltk.downloader wordnet"):
        NounExtractor(wordnet=tmp_path / "no-wordnet")


# ----------------------------------------------------------------------------- command


def test_cli(amber_dir, extractor, tmp_path, capsys):
    from visalign.cli import main

    answers = _write(tmp_path / "responses.json", responses())
    out = tmp_path / "amber.json"
    assert main(["eval", "amber", "--answers", str(answers), "--amber-dir", str(amber_dir),
                 "--similarity", "exact", "--nltk-data", str(NLTK_DATA), "--out",
                 str(out)]) == 0
    res = json.loads(out.read_text())
    assert _blocks(res) == REF_EXACT and res["amber_score"] == 59.1
    assert res["metrics"]["amber_score"] == 0.591 and res["similarity"].startswith("exact")
    md = out.with_suffix(".md").read_text()
    assert "amber_chair" in md and "5 answers were neither 'Yes' nor 'No'" in md
    printed = capsys.readouterr().out
    assert "CHAIR  36.4" in printed and "published LLaVA-1.5-7B" in printed

    bad = _write(tmp_path / "bad.json", responses()[:-2])
    assert main(["eval", "amber", "--answers", str(bad), "--amber-dir", str(amber_dir),
                 "--similarity", "exact", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.json" in err and "2 ids missing" in err
    assert not (tmp_path / "x.json").exists()


# ----------------------------------------------------------------------------- suite entry


class _Data:
    def __init__(self, amber_dir):
        self.amber_dir = amber_dir


def test_benchmark_prompts_and_score(amber_dir, extractor, tmp_path):
    bench = AmberBenchmark(similarity="exact", nltk_data=str(NLTK_DATA),
                           yes_no_suffix="\nAnswer the question using a single word or phrase.")
    assert bench.name == "amber" and bench.max_new_tokens == 512
    prompts = bench.prompts(_Data(amber_dir))
    assert [p["id"] for p in prompts] == [str(i) for i in range(1, 17)]
    assert prompts[0]["prompt"] == "Describe this image." and prompts[0]["task"] == "generative"
    assert prompts[4]["prompt"].endswith("in this image?\nAnswer the question using a single "
                                         "word or phrase.")
    assert prompts[4]["task"] == "existence" and prompts[4]["max_new_tokens"] == 16
    assert all(Path(p["image"]).is_absolute() and Path(p["image"]).is_file() for p in prompts)

    answers = {str(r["id"]): r["response"] for r in responses()}
    result = bench.score(prompts, answers, _Data(amber_dir), tmp_path / "out")
    assert result["metrics"]["amber_chair"] == 0.364 and result["metrics"]["amber_f1"] == 0.546
    assert result["protocol"]["yes_no_suffix"].startswith("\nAnswer")
    saved = json.loads((tmp_path / "out" / "amber_responses.json").read_text())
    assert saved == responses()  # AMBER's own format, for its inference.py
    assert json.loads((tmp_path / "out" / "amber.json").read_text())["amber_score"] == 59.1

    del answers["16"]
    with pytest.raises(DataError, match=r"1 AMBER prompts have no answer \(first: 16\)"):
        bench.score(prompts, answers, _Data(amber_dir), tmp_path / "out")


def test_benchmark_query_set_and_images(amber_dir, tmp_path):
    prompts = AmberBenchmark(query_set="relation").prompts(_Data(amber_dir))
    assert [p["id"] for p in prompts] == ["14", "15", "16"]
    bare = build_amber_dir(tmp_path / "bare", images=False)
    with pytest.raises(DataError, match="AMBER image folder not found"):
        AmberBenchmark().prompts(_Data(bare))
    with pytest.raises(ValueError, match="amber_dir"):
        AmberBenchmark().prompts(_Data(None))


def test_two_answer_files_and_generate_records(amber_dir, extractor, tmp_path):
    rows = responses()
    # the descriptions as visalign generate writes them (the query record plus "answer")
    gen = _write(tmp_path / "gen.json", [{"id": r["id"], "image": f"AMBER_{r['id']}.jpg",
                                          "query": "Describe this image.",
                                          "answer": r["response"]} for r in rows[:4]])
    yes_no = _write(tmp_path / "yes_no.json", rows[4:])
    result = score_amber([gen, yes_no], amber_dir, similarity="exact", nltk_data=NLTK_DATA)
    assert result["query_set"] == "all" and _blocks(result) == REF_EXACT
    with pytest.raises(DataError, match=r"gen.json: record 0: field 'id': id 1 appears twice"):
        score_amber([gen, gen], amber_dir, similarity="exact")
