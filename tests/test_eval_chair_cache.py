"""CHAIR's annotation index cache: the same numbers with and without it; a changed annotation
file, caption file or synonym table is never served from an old index; an unwritable
annotation dir falls back to the user cache dir; damaged cache files are rebuilt; the command
uses it by default and not with --no-cache. Also: inflect imported without typeguard gives the
same singular forms, and result files with one record per line hold the same JSON."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from visalign.cli import main
from visalign.eval.chair import Chair, load_synonyms
from visalign.io import write_json, write_jsonl

FILLER = "a the of on in with and near two red large small sitting next to is there".split()


def _world(rng: random.Random, n_images: int = 120):
    table = load_synonyms(None)
    cats = [{"id": i + 1, "name": line[0]} for i, line in enumerate(table)]
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(n_images)]
    anns, caps, objs_of = [], [], []
    for im in range(n_images):
        objs = [rng.randrange(len(cats)) for _ in range(rng.randint(0, 4))]
        objs_of.append(objs or [rng.randrange(len(cats))])
        anns += [{"id": len(anns), "image_id": im, "category_id": c + 1} for c in objs]
        for _ in range(3):
            words = [rng.choice(FILLER) for _ in range(6)]
            w = rng.choice(table[rng.choice(objs_of[-1])])
            words.insert(rng.randrange(7), w + "s" if rng.random() < 0.3 else w)
            caps.append({"id": len(caps), "image_id": im, "caption": " ".join(words) + "."})
    inst = {"images": images, "categories": cats, "annotations": anns}
    records = []
    for im in range(n_images):
        words = []
        for _ in range(30):
            r = rng.random()
            if r < 0.15:
                words.append(rng.choice(table[rng.choice(objs_of[im])]))
            elif r < 0.25:
                words.append(rng.choice(rng.choice(table)) + ("s" if rng.random() < .3 else ""))
            else:
                words.append(rng.choice(FILLER))
        records.append({"image_id": im, "caption": " ".join(words)})
    return inst, {"images": images, "annotations": caps}, records


@pytest.fixture()
def coco(tmp_path, monkeypatch):
    monkeypatch.setenv("VISALIGN_CACHE_DIR", str(tmp_path / "user-cache"))
    inst, caps, records = _world(random.Random(0))
    d = tmp_path / "coco"
    write_json(d / "instances.json", inst)
    write_json(d / "captions.json", caps)
    return d, records


def _no_parsing(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the annotation files were parsed although the index is cached")
    monkeypatch.setattr(Chair, "_read_coco", fail)


def test_cached_index_gives_the_same_results(coco, monkeypatch):
    d, records = coco
    plain = Chair.from_coco(d / "instances.json", d / "captions.json").evaluate(records)
    cold = Chair.from_coco(d / "instances.json", d / "captions.json", cache=True)
    assert cold.index_path is not None and cold.index_path.parent == d / ".visalign-cache"
    assert cold.evaluate(records) == plain
    with monkeypatch.context() as m:
        _no_parsing(m)
        warm = Chair.from_coco(d / "instances.json", d / "captions.json", cache=True)
        assert warm.index_path == cold.index_path
        assert warm.evaluate(records) == plain
        assert not warm.has_image(10_000) and warm.has_image("3")
    # instances only: another index, the ground truth without the human captions
    plain_i = Chair.from_coco(d / "instances.json").evaluate(records)
    assert Chair.from_coco(d / "instances.json", cache=True).evaluate(records) == plain_i
    assert Chair.from_coco(d / "instances.json", cache=True).evaluate(records) == plain_i
    assert plain_i != plain
    assert len(list((d / ".visalign-cache").iterdir())) == 2


def test_changed_files_or_table_are_not_served_from_an_old_index(coco, monkeypatch):
    d, records = coco
    Chair.from_coco(d / "instances.json", d / "captions.json", cache=True)
    # one more object in image 0: its ground truth changes
    inst = json.loads((d / "instances.json").read_text())
    present = {a["category_id"] for a in inst["annotations"] if a["image_id"] == 0}
    new_cat = next(c["id"] for c in inst["categories"] if c["id"] not in present)
    inst["annotations"].append({"id": 10**6, "image_id": 0, "category_id": new_cat})
    write_json(d / "instances.json", inst)
    fresh = Chair.from_coco(d / "instances.json", d / "captions.json")
    cached = Chair.from_coco(d / "instances.json", d / "captions.json", cache=True)
    assert cached.gt_objects(0) == fresh.gt_objects(0)
    assert cached.evaluate(records) == fresh.evaluate(records)
    # the old index was replaced, not kept beside the new one
    assert len(list((d / ".visalign-cache").iterdir())) == 1
    # a human caption edited: its object joins the ground truth
    caps = json.loads((d / "captions.json").read_text())
    caps["annotations"].append({"id": 10**6, "image_id": 5, "caption": "a zebra."})
    write_json(d / "captions.json", caps)
    cached = Chair.from_coco(d / "instances.json", d / "captions.json", cache=True)
    assert "zebra" in cached.gt_objects(5)
    assert cached.evaluate(records) == Chair.from_coco(d / "instances.json",
                                                       d / "captions.json").evaluate(records)
    # another synonym table (puppy is no longer a dog): its own index
    table = [[w for w in line if w != "puppy"] for line in load_synonyms(None)]
    other = Chair.from_coco(d / "instances.json", d / "captions.json", table, cache=True)
    assert other.index_path != cached.index_path
    recs = [{"image_id": 1, "caption": "a puppy"}]
    assert other.evaluate(recs)["metrics"]["n_captions"] == 1
    assert other.mentions("a puppy") == [] and cached.mentions("a puppy") != []


def test_unwritable_annotation_dir_falls_back_to_the_user_cache(coco, tmp_path, monkeypatch):
    d, records = coco
    (d / ".visalign-cache").write_text("not a directory")  # so nothing can be written there
    plain = Chair.from_coco(d / "instances.json", d / "captions.json").evaluate(records)
    cold = Chair.from_coco(d / "instances.json", d / "captions.json", cache=True)
    assert cold.index_path.parent == tmp_path / "user-cache" / "chair"
    with monkeypatch.context() as m:
        _no_parsing(m)
        warm = Chair.from_coco(d / "instances.json", d / "captions.json", cache=True)
        assert warm.evaluate(records) == plain
    # an explicit directory is used as given
    mine = Chair.from_coco(d / "instances.json", d / "captions.json", cache=tmp_path / "mine")
    assert mine.index_path.parent == tmp_path / "mine"


@pytest.mark.parametrize("damage", ["truncated", "other_key", "bad_numbers"])
def test_damaged_cache_files_are_rebuilt(coco, damage):
    d, records = coco
    plain = Chair.from_coco(d / "instances.json", d / "captions.json").evaluate(records)
    path = Chair.from_coco(d / "instances.json", d / "captions.json", cache=True).index_path
    text = path.read_text()
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    else:
        data = json.loads(text)
        if damage == "other_key":
            data["key"] = "0" * 64
        else:
            data["images"][0][1] = [999]
        path.write_text(json.dumps(data))
    again = Chair.from_coco(d / "instances.json", d / "captions.json", cache=True)
    assert again.evaluate(records) == plain
    assert json.loads(path.read_text())["images"][0][1] != [999]


def test_command_caches_by_default_and_not_with_no_cache(coco, tmp_path):
    d, records = coco
    caps = tmp_path / "answers.jsonl"
    write_jsonl(caps, [{"id": str(i), **r} for i, r in enumerate(records)])
    args = ["eval", "chair", "--captions", str(caps), "--instances", str(d / "instances.json"),
            "--coco-captions", str(d / "captions.json")]
    assert main(args + ["--no-cache", "--out", str(tmp_path / "none.json")]) == 0
    assert not (d / ".visalign-cache").exists()
    for name in ("cold.json", "warm.json"):
        assert main(args + ["--out", str(tmp_path / name)]) == 0
    results = [json.loads((tmp_path / n).read_text()) for n in ("none.json", "cold.json",
                                                               "warm.json")]
    assert results[0]["inputs"]["index_cache"] is None
    assert Path(results[2]["inputs"]["index_cache"]).parent == d / ".visalign-cache"
    for key in ("metrics", "counts", "captions"):
        assert results[0][key] == results[1][key] == results[2][key]
    # one caption record per line
    lines = (tmp_path / "warm.json").read_text().splitlines()
    assert sum(line.strip().startswith('{"id"') for line in lines) == len(records)


def test_result_files_with_records_per_line_hold_the_same_json(tmp_path):
    obj = {"metrics": {"a": 1.5, "b": None}, "rows": [{"x": [1, 2], "y": "é\n"}, {"z": {}}],
           "plain": [1, 2], "keys": {1: "int", True: "bool", None: "none", 2.5: "float"},
           "empty": [], "nested": {"deep": [[1, 2], {"k": [3]}]}}
    write_json(tmp_path / "a.json", obj, records_per_line=True)
    write_json(tmp_path / "b.json", obj)
    a, b = (tmp_path / "a.json").read_text(), (tmp_path / "b.json").read_text()
    assert json.loads(a) == json.loads(b)
    assert '    {"x": [1, 2], "y": "é\\n"},' in a.splitlines()


def test_inflect_without_typeguard_gives_the_same_singular_forms():
    words = ("dogs cats buses glasses people children mice geese oxen knives leaves wolves "
             "sheep fish series species dishes boxes quizzes heroes photos cacti fungi criteria "
             "phenomena teeth feet women men news lens is was this his its us yes always "
             "scissors trousers pants jeans benches skis donuts umbrellas giraffes").split()
    code = {
        "fast": "from visalign.eval.chair import _inflect_engine; e = _inflect_engine()",
        "checked": "import inflect; e = inflect.engine()"}
    out = {}
    for mode, setup in code.items():
        script = (f"{setup}\nimport inflect, json, sys\n"
                  "names = inflect.engine.singular_noun.__code__.co_names\n"
                  "print(json.dumps({'checked': any('check_argument' in n for n in names),"
                  f" 'forms': [e.singular_noun(w) for w in {words!r}]}}))")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**os.environ}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        out[mode] = json.loads(proc.stdout)
    assert out["checked"]["checked"] and not out["fast"]["checked"]
    assert out["fast"]["forms"] == out["checked"]["forms"]


def test_a_subclass_that_finds_mentions_its_own_way_is_not_cached(coco):
    d, records = coco

    class NoDogs(Chair):  # another extraction rule the cache key knows nothing about
        def _mentions_and_len(self, caption):
            found, n = super()._mentions_and_len(caption)
            return [m for m in found if m.category != "dog"], n

    Chair.from_coco(d / "instances.json", d / "captions.json", cache=True)
    sub = NoDogs.from_coco(d / "instances.json", d / "captions.json", cache=True)
    assert sub.index_path is None
    assert sub.evaluate(records) == NoDogs.from_coco(d / "instances.json",
                                                     d / "captions.json").evaluate(records)
