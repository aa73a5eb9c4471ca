"""visalign.analysis.recall_by_object and .repetition: per-object recall and repeated object
sentences, on hand-made annotations and captions whose answers are counted by hand."""

from __future__ import annotations

import pytest

from visalign.analysis.recall_by_object import object_areas, recall_by_object, \
    recall_by_size_class
from visalign.analysis.repetition import object_repetition
from visalign.eval.chair import Chair
from visalign.io import DataError

INSTANCES = {
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}],
    "annotations": [
        {"image_id": 1, "category_id": 1, "area": 300.0, "size": "large"},
        {"image_id": 1, "category_id": 1, "area": 400.0, "size": "large"},
        {"image_id": 1, "category_id": 2, "area": 50.0, "size": "small"},
        {"image_id": 2, "category_id": 3, "area": 200.0, "size": "small"},
        {"image_id": 2, "category_id": 3, "area": 80.0, "size": "large"},
    ],
}


def test_object_areas_keep_each_category_largest_instance():
    assert object_areas(INSTANCES) == {1: {"cat": 400.0, "dog": 50.0}, 2: {"bird": 200.0}}
    bad = {**INSTANCES, "annotations": [{"image_id": 1, "category_id": 9, "area": 1.0}]}
    with pytest.raises(DataError, match="category_id"):
        object_areas(bad)


def test_recall_by_rank_size_and_objects_per_image():
    # image 1 (cat 400, dog 50) names the cat; image 2 (bird 200) names nothing
    rec = recall_by_object({1: {"cat"}, 2: set()}, object_areas(INSTANCES), small_area=100.0)
    assert rec["rank_0"] == {"recall": 0.5, "objects": 2}       # cat hit, bird missed
    assert rec["rank_1"] == {"recall": 0.0, "objects": 1}       # the dog
    assert rec["large"] == {"recall": 0.5, "objects": 2}
    assert rec["small"] == {"recall": 0.0, "objects": 1}
    assert rec["categories_2"] == {"recall": 0.5, "objects": 2}
    assert rec["categories_1"] == {"recall": 0.0, "objects": 1}
    assert rec["all"] == {"recall": round(1 / 3, 4), "objects": 3}
    with pytest.raises(DataError, match="image 7"):
        recall_by_object({7: set()}, object_areas(INSTANCES))


def test_recall_by_size_attribute():
    # the bird has one large instance, so it counts as large although its largest area is 200
    caps = [{"image_id": 1, "mentions": [{"category": "dog"}]},
            {"image_id": 2, "mentions": [{"category": "bird"}]}]
    rec = recall_by_size_class(caps, INSTANCES)
    assert rec["large"] == {"objects": 2, "recall": 0.5}        # cat missed, bird named
    assert rec["small_only"] == {"objects": 1, "recall": 1.0}   # the dog


def test_object_repetition_counts_sentences_that_only_repeat():
    chair = Chair.from_annotations({1: ["dog", "cat"]})
    caps = chair.evaluate([
        {"image_id": 1, "caption": "A dog is in the center. A dog is at the top. A cat is here. "
                                   "The cat is left of the dog. The sky is blue."},
        {"image_id": 1, "caption": "A cat sits."},
    ])["captions"]
    rep = object_repetition(caps)
    # object sentences after the first: dog (repeat), cat (new), cat+dog (repeat); the sky
    # names no object
    assert (rep["object_sentences"], rep["repeat_only_sentences"]) == (3, 2)
    assert rep["repeat_only_share"] == round(2 / 3, 4)
    assert rep["unique_objects_per_caption"] == 1.5
    assert object_repetition([])["repeat_only_share"] is None


def test_script_on_a_world(tiny_world_dir, tmp_path, load_benchmark):
    from visalign.io import read_json, write_jsonl
    from visalign.world import load_world

    world = load_world(tiny_world_dir)
    areas = object_areas(read_json(world.instances_path("val")))
    # each description names exactly the image's largest category
    answers = [{"image_id": i, "answer": f"There is a {max(c, key=c.get)}."}
               for i, c in areas.items()]
    write_jsonl(tmp_path / "answers.jsonl", answers)
    rep = load_benchmark("diag_recall_by_object").main(
        ["--world", str(tiny_world_dir), "--answers", str(tmp_path / "answers.jsonl")])
    assert rep["recall"]["rank_0"]["recall"] == 1.0
    assert rep["recall"].get("rank_1", {"recall": 0.0})["recall"] == 0.0
    assert 0 < rep["training_descriptions"]["recall"] <= 1
