"""A COCO directory as the COCO site ships it: paths by split, image files by id or name,
annotations loaded once, and one-line errors that name the missing file."""

from __future__ import annotations

import shutil

import pytest

from _tiny import COCO_IMAGES, build_coco_root
from visalign.data.coco import CocoRoot
from visalign.io import DataError


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_paths_names_and_annotations(coco_root):
    root = CocoRoot(coco_root)
    assert root.splits() == ["train2017", "val2014"]
    assert root.instances_path("val2014") == coco_root / "annotations/instances_val2014.json"
    assert root.captions_path("train2017") == coco_root / "annotations/captions_train2017.json"
    assert root.image_dir("val2014") == coco_root / "val2014"
    assert root.file_name("val2014", 42) == "COCO_val2014_000000000042.jpg"
    assert root.file_name("train2017", 9) == "000000000009.jpg"
    want = coco_root / "train2017/000000000009.jpg"
    # by id (int or digits), by file name, by a mix665k-style path
    for image in (9, "9", "000000000009.jpg", "coco/train2017/000000000009.jpg"):
        assert root.image_path("train2017", image) == want
    assert root.image_path("val2014", "COCO_val2014_000000000042.jpg") == \
        coco_root / "val2014/COCO_val2014_000000000042.jpg"
    for split, images in COCO_IMAGES.items():
        assert root.image_ids(split) == list(images)
        coco = root.instances(split)
        assert root.instances(split) is coco                  # loaded once
        for image_id, (objects, captions) in images.items():
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            assert sorted(coco.cats[a["category_id"]]["name"] for a in anns) == sorted(objects)
            assert root.captions(split)[image_id] == captions


def test_check_image_ids(coco_root, tmp_path):
    root = CocoRoot(coco_root)
    root.check_image_ids([{"id": "a", "image_id": 42}, {"id": "b", "image_id": "73"}],
                         "val2014", "answers.jsonl")
    with pytest.raises(DataError) as e:
        root.check_image_ids([{"id": "a", "image_id": 42}, {"id": "b", "image_id": 9}],
                             "val2014", "answers.jsonl")
    msg = _one_line(e)
    assert ("answers.jsonl: record b: field 'image_id': image id 9 is not in "
            f"{coco_root / 'annotations/instances_val2014.json'}") == msg
    with pytest.raises(DataError, match=r"record a: field 'image_id': missing"):
        root.check_image_ids([{"id": "a"}], "val2014", "answers.jsonl")


def test_missing_pieces_are_one_line_errors_naming_the_file(tmp_path):
    coco = build_coco_root(tmp_path)
    (coco / "annotations/captions_val2014.json").unlink()
    (coco / "train2017/000000000025.jpg").unlink()
    shutil.rmtree(coco / "val2014")
    root = CocoRoot(coco)
    with pytest.raises(DataError) as e:
        root.captions_path("val2014")
    msg = _one_line(e)
    assert str(coco / "annotations/captions_val2014.json") in msg and "not found" in msg
    assert "annotations_trainval2014.zip" in msg
    with pytest.raises(DataError) as e:
        root.captions("val2014")
    assert "captions_val2014.json" in _one_line(e)
    with pytest.raises(DataError) as e:
        root.instances_path("val2017")
    assert str(coco / "annotations/instances_val2017.json") in _one_line(e)
    with pytest.raises(DataError) as e:
        root.image_path("train2017", 25)
    msg = _one_line(e)
    assert str(coco / "train2017/000000000025.jpg") in msg and "image id 25" in msg
    with pytest.raises(DataError) as e:
        root.image_path("val2014", 42)
    msg = _one_line(e)
    assert str(coco / "val2014") in msg and "image folder not found" in msg
    with pytest.raises(DataError) as e:
        CocoRoot(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in _one_line(e)
    with pytest.raises(ValueError, match="unknown COCO split 'val'"):
        root.instances_path("val")


def test_a_bad_annotation_names_file_record_and_field(tmp_path):
    import json

    coco = build_coco_root(tmp_path, splits=("val2014",))
    p = coco / "annotations/instances_val2014.json"
    data = json.loads(p.read_text())
    data["annotations"][1]["image_id"] = 999
    p.write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        CocoRoot(coco).instances("val2014")
    msg = _one_line(e)
    assert str(p) in msg and "record annotations[1]" in msg and "field 'image_id'" in msg
