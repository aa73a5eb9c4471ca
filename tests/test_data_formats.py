"""Record formats: every validation error names the file, the record and the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from PIL import Image

from visalign.data.coco import load_coco_captions, load_coco_instances
from visalign.data.llava import load_llava_records, validate_llava_record
from visalign.io import DataError


def _rec(i: int = 0, image: str = "a.png") -> dict:
    return {"id": f"r{i}", "image": image, "task": "detail",
            "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                              {"from": "gpt", "value": "A cup."}]}


def _write(path: Path, records: list, jsonl: bool = False) -> Path:
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def _expect(path: Path, records: list, field: str, record: str, **kw) -> DataError:
    _write(path, records)
    with pytest.raises(DataError) as e:
        load_llava_records(path, **kw)
    msg = str(e.value)
    assert str(path) in msg and f"record {record}" in msg and f"field '{field}'" in msg, msg
    return e.value


# -- LLaVA ----------------------------------------------------------------------------------
def test_valid_json_list_and_jsonl_pass_through_extra_fields(tmp_path):
    recs = [_rec(0), _rec(1)]
    for jsonl in (False, True):
        p = _write(tmp_path / f"r{jsonl}.json", recs, jsonl=jsonl)
        out = load_llava_records(p)
        assert out == recs and out[0]["task"] == "detail"
    multi = _rec(2)
    multi["conversations"] += [{"from": "human", "value": "And?"},
                               {"from": "gpt", "value": "Nothing."}]
    assert load_llava_records(_write(tmp_path / "m.json", [multi]))[0]["id"] == "r2"
    int_id = dict(_rec(3), id=3)
    assert validate_llava_record(int_id, "x.json", 0) is int_id


def _bad(mutate) -> dict:
    r = copy.deepcopy(_rec(1))
    mutate(r)
    return r


@pytest.mark.parametrize("mutate,field", [
    (lambda r: r.pop("id"), "id"),
    (lambda r: r.update(id=1.5), "id"),
    (lambda r: r.update(id=True), "id"),
    (lambda r: r.update(id=""), "id"),
    (lambda r: r.pop("image"), "image"),
    (lambda r: r.update(image=3), "image"),
    (lambda r: r.update(image=""), "image"),
    (lambda r: r.pop("conversations"), "conversations"),
    (lambda r: r.update(conversations=[]), "conversations"),
    (lambda r: r.update(conversations="hi"), "conversations"),
    (lambda r: r["conversations"].__setitem__(1, "A cup."), "conversations[1]"),
    (lambda r: r["conversations"][0].update({"from": "gpt"}), "conversations[0].from"),
    (lambda r: r["conversations"][1].update({"from": "human"}), "conversations[1].from"),
    (lambda r: r["conversations"][1].pop("from"), "conversations[1].from"),
    (lambda r: r["conversations"][1].update(value=None), "conversations[1].value"),
    (lambda r: r["conversations"][0].update(value="Describe."), "conversations[0].value"),
    (lambda r: r["conversations"][0].update(value="<image><image>\nDescribe."),
     "conversations[0].value"),
    (lambda r: r["conversations"][1].update(value="<image> A cup."), "conversations[1].value"),
    (lambda r: r["conversations"].pop(), "conversations[0]"),
])
def test_malformed_record_names_file_record_and_field(tmp_path, mutate, field):
    bad = _bad(mutate)
    record = "1 (id 'r1')" if "id" in bad and bad["id"] == "r1" else "1"
    _expect(tmp_path / "bad.json", [_rec(0), bad], field, record)


def test_non_object_record_and_duplicate_id(tmp_path):
    p = _write(tmp_path / "x.json", [_rec(0), ["not", "a", "dict"]])
    with pytest.raises(DataError, match=r"x\.json: record 1: expected a JSON object"):
        load_llava_records(p)
    with pytest.raises(DataError, match=r"record 1: expected a JSON object"):
        validate_llava_record("text", "y.json", 1)
    # shared ids are kept as ID#k by default (LLaVA-Instruct's layout); shared_ids="error"
    # rejects them
    e = _expect(tmp_path / "dup.json", [_rec(0), _rec(1), _rec(1)], "id", "2 (id 'r1')",
                shared_ids="error")
    assert "first used by record 1" in str(e)
    # 7 and "7" collide once written out as strings
    _expect(tmp_path / "dup2.json", [dict(_rec(0), id=7), dict(_rec(1), id="7")], "id",
            "1 (id '7')", shared_ids="error")
    assert [r["id"] for r in load_llava_records(tmp_path / "dup2.json")] == [7, "7#1"]


def test_invalid_json_and_missing_file(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text(json.dumps(_rec(0)) + "\n{oops\n")
    with pytest.raises(DataError, match=r"broken\.jsonl: record line 2"):
        load_llava_records(p)
    with pytest.raises(DataError, match="file not found"):
        load_llava_records(tmp_path / "nope.json")


def test_check_images(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "a.png")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ok = [_rec(0, "a.png"), _rec(1, "a.png"), _rec(2, str(root / "a.png"))]
    assert len(load_llava_records(_write(tmp_path / "ok.json", ok), image_root=root,
                                  check_images=True)) == 3
    # default image root: the records file's directory
    assert load_llava_records(_write(root / "local.json", [_rec(0, "a.png")]),
                              check_images=True)
    # without check_images nothing is opened
    assert load_llava_records(_write(tmp_path / "m.json", [_rec(0, "missing.png")]))

    e = _expect(tmp_path / "miss.json", [_rec(0, "a.png"), _rec(1, "missing.png")], "image",
                "1 (id 'r1')", image_root=root, check_images=True)
    assert "image file not found" in str(e) and str(root / "missing.png") in str(e)
    e = _expect(tmp_path / "corrupt.json", [_rec(0, "bad.png")], "image", "0 (id 'r0')",
                image_root=root, check_images=True)
    assert "unreadable image" in str(e) and str(root / "bad.png") in str(e)


# -- COCO -----------------------------------------------------------------------------------
def _instances() -> dict:
    return {
        "images": [{"id": 1, "file_name": "1.png", "width": 64, "height": 64},
                   {"id": 2, "file_name": "2.png", "width": 64, "height": 64}],
        "categories": [{"id": 1, "name": "cup", "supercategory": "kitchen"},
                       {"id": 2, "name": "traffic light", "supercategory": "street"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 12]},
                        {"id": 2, "image_id": 2, "category_id": 2,
                         "bbox": [5.0, 5.0, 6.0, 6.0], "area": 36.0, "iscrowd": 0}],
    }


def _captions() -> dict:
    return {"images": [{"id": 1}, {"id": 2}],
            "annotations": [{"id": 1, "image_id": 2, "caption": "A traffic light."},
                            {"id": 2, "image_id": 2, "caption": "A stoplight."}]}


def test_coco_instances_and_captions_load(tmp_path):
    p = tmp_path / "instances.json"
    p.write_text(json.dumps(_instances()))
    coco = load_coco_instances(p)
    assert sorted(coco.getImgIds()) == [1, 2]
    assert coco.loadCats(coco.getCatIds(catNms=["traffic light"]))[0]["id"] == 2
    assert coco.loadAnns(coco.getAnnIds(imgIds=1))[0]["area"] == 120
    q = tmp_path / "captions.json"
    q.write_text(json.dumps(_captions()))
    assert load_coco_captions(q) == {1: [], 2: ["A traffic light.", "A stoplight."]}


def _coco_expect(tmp_path: Path, data, loader, fragments: list[str]) -> None:
    p = tmp_path / "coco.json"
    p.write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        loader(p)
    msg = str(e.value)
    assert str(p) in msg and all(f in msg for f in fragments), msg


def _mut(base, fn):
    d = copy.deepcopy(base)
    fn(d)
    return d


@pytest.mark.parametrize("mutate,fragments", [
    (lambda d: d.pop("annotations"), ["field 'annotations'", "missing"]),
    (lambda d: d.update(images={}), ["field 'images'", "must be a list"]),
    (lambda d: d["images"][1].pop("id"), ["record images[1]", "field 'id'"]),
    (lambda d: d["images"][1].update(id="2"), ["record images[1]", "field 'id'"]),
    (lambda d: d["images"][1].update(id=1), ["record images[1]", "field 'id'", "duplicate"]),
    (lambda d: d["categories"][0].pop("name"), ["record categories[0]", "field 'name'"]),
    (lambda d: d["categories"][1].update(id=1), ["record categories[1]", "field 'id'"]),
    (lambda d: d["annotations"][0].pop("bbox"), ["record annotations[0]", "field 'bbox'"]),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]),
     ["record annotations[0]", "field 'bbox'"]),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]),
     ["record annotations[0]", "field 'bbox'"]),
    (lambda d: d["annotations"][1].update(image_id=9),
     ["record annotations[1]", "field 'image_id'", "not in 'images'"]),
    (lambda d: d["annotations"][1].update(category_id=9),
     ["record annotations[1]", "field 'category_id'"]),
    (lambda d: d["annotations"][1].update(id=1), ["record annotations[1]", "field 'id'"]),
    (lambda d: d["annotations"].append("x"), ["record annotations[2]", "expected an object"]),
])
def test_coco_instances_errors(tmp_path, mutate, fragments):
    _coco_expect(tmp_path, _mut(_instances(), mutate), load_coco_instances, fragments)


def test_coco_instances_file_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_coco_instances(tmp_path / "missing.json")
    _coco_expect(tmp_path, [1, 2], load_coco_instances, ["top level"])
    p = tmp_path / "trunc.json"
    p.write_text('{"images": [')
    with pytest.raises(DataError, match=r"trunc\.json: invalid JSON"):
        load_coco_instances(p)


@pytest.mark.parametrize("mutate,fragments", [
    (lambda d: d.pop("images"), ["field 'images'"]),
    (lambda d: d["annotations"][0].pop("caption"), ["record annotations[0]",
                                                    "field 'caption'"]),
    (lambda d: d["annotations"][1].update(caption=5), ["record annotations[1]",
                                                       "field 'caption'"]),
    (lambda d: d["annotations"][1].pop("image_id"), ["record annotations[1]",
                                                     "field 'image_id'"]),
    (lambda d: d["annotations"][0].update(image_id=7), ["record annotations[0]",
                                                        "field 'image_id'"]),
    (lambda d: d["images"][0].update(id=None), ["record images[0]", "field 'id'"]),
])
def test_coco_captions_errors(tmp_path, mutate, fragments):
    _coco_expect(tmp_path, _mut(_captions(), mutate), load_coco_captions, fragments)
    with pytest.raises(DataError, match="file not found"):
        load_coco_captions(tmp_path / "missing.json")


def test_pack_by_image():
    """Single-turn records of one image become one valid multi-turn conversation: every QA
    kept, ``<image>`` once in the first turn, order seeded and varied."""
    from visalign.data.llava import pack_by_image, validate_llava_record

    recs = []
    for img in ("a.png", "b.png"):
        for k in range(4 if img == "a.png" else 2):
            recs.append({"id": f"{img}-{k}", "image": img, "image_id": 1 if img == "a.png" else 2,
                         "task": f"t{k}", "conversations": [
                             {"from": "human", "value": f"<image>\nQ{k} {img}?"},
                             {"from": "gpt", "value": f"A{k} {img}"}]})
    packed = pack_by_image(recs, seed=0)
    assert [p["image"] for p in packed] == ["a.png", "b.png"]
    assert pack_by_image(recs, seed=0) == packed
    for p in packed:
        validate_llava_record(p)
        conv = p["conversations"]
        mine = [r for r in recs if r["image"] == p["image"]]
        assert len(conv) == 2 * len(mine) and sorted(p["packed_ids"]) == [r["id"] for r in mine]
        assert conv[0]["value"].startswith("<image>\n")
        assert sum("<image>" in t["value"] for t in conv) == 1
        pairs = {(conv[i]["value"].replace("<image>\n", ""), conv[i + 1]["value"])
                 for i in range(0, len(conv), 2)}
        assert pairs == {(r["conversations"][0]["value"].replace("<image>\n", ""),
                          r["conversations"][1]["value"]) for r in mine}
        assert p["tasks"] == [next(r["task"] for r in mine if r["id"] == i)
                              for i in p["packed_ids"]]
    assert packed[0]["image_id"] == 1
    orders = {tuple(pack_by_image(recs, seed=s)[0]["packed_ids"]) for s in range(8)}
    assert len(orders) > 1
