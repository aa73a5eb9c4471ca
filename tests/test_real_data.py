"""LLaVA's instruction files as they ship: shared ids kept under unique keys, text-only records
skipped with a count, tasks recognised from the prompts, COCO image ids read from file names,
generation resuming on the unique keys; the micro-world's files load exactly as before."""

from __future__ import annotations

import json

import pytest

from _tiny import build_instruct_file
from visalign.data.coco import coco_image_id, coco_split_of
from visalign.data.instruct import recognise_task, source_id, unique_keys
from visalign.data.llava import load_llava_records
from visalign.io import DataError, read_jsonl, read_records


def _conv(*turns: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]


SHORT = "Answer the question using a single word or phrase."


@pytest.mark.parametrize("turns,task", [
    # detail_23k's questions, the paper's list, spacing/case/punctuation and <image> aside
    (("What do you see happening in this image?\n<image>", "A man walks."), "detail"),
    (("<image>\nWhat is this photo about'?", "A cat."), "detail"),
    (("<image>\nwhat's happening in the scene", "A cat."), "detail"),
    (("<image>\nWalk through the important details of the image.", "A cat."), "detail"),
    (("<image>\nDescribe this image in detail.", "A cat."), "detail"),
    (("<image>\nDescribe the image concisely.", "A cat."), "caption"),
    (("<image>\nProvide a one-sentence caption for the provided image.", "A cat."), "caption"),
    # yes/no: presence questions are 'existence' (POPE's form and kin), others 'yesno'
    (("Is there a dog in the image?\n<image>", "No, there is no dog."), "existence"),
    (("<image>\nAre there any cups on the table?", "Yes."), "existence"),
    (("<image>\nDoes the image contain a car? Please answer yes or no.", "Yes"), "existence"),
    (("<image>\nIs the man wearing a hat?", "Yes, a red one."), "yesno"),
    # LLaVA-1.5's short-answer and option prompts (VQAv2/GQA/OCR-VQA, A-OKVQA)
    ((f"<image>\nWho wrote this book?\n{SHORT}", "Homer", "Is it history?", "Yes"), "vqa"),
    ((f"<image>\nWhat color is the bus?\n{SHORT}", "Red"), "vqa"),
    (("<image>\nWhat is he holding?\nA. cup\nB. pen\nAnswer with the option's letter from the "
      "given choices directly.", "A"), "vqa"),
    (("<image>\nPlease provide a short description for this region: [0.1, 0.2, 0.5, 0.6]",
      "A dog."), "region"),
    # multi-turn conversations (conversation_58k) and single open questions (complex reasoning)
    (("<image>\nWhat are the people doing?", "Walking.", "Is it raining?", "No."),
     "conversation"),
    (("<image>\nWhy might the man be walking the dogs?", "To exercise them."), "reasoning"),
    (("<image>\nWhat is the man holding?", "A leash."), "reasoning"),
])
def test_recognise_task_from_prompts(turns, task):
    assert recognise_task(_conv(*turns)) == task


def test_recognised_tasks_agree_with_the_micro_worlds_labels(tiny_world_dir):
    """The micro-world labels its records; the recogniser, reading only the prompts, must give
    the same task (its short-answer tasks all read as 'vqa'), on every record."""
    from visalign.world import load_world

    expect = {"detail": "detail", "caption": "caption", "existence": "existence",
              "count": "vqa", "color": "vqa", "vqa": "vqa"}
    seen = set()
    for r in read_records(load_world(tiny_world_dir).llava_path("train")):
        if r["task"] in expect:
            assert recognise_task(r["conversations"]) == expect[r["task"]], r
            seen.add(r["task"])
    assert seen == set(expect)


@pytest.mark.parametrize("name,image_id,split", [
    ("000000033471.jpg", 33471, None),
    ("COCO_val2014_000000033471.jpg", 33471, "val2014"),
    ("coco/train2017/000000033471.jpg", 33471, "train2017"),
    ("/data/coco/val2014/COCO_val2014_000000000042.jpg", 42, "val2014"),
    ("gqa/images/2354786.jpg", None, None),            # GQA / Visual Genome ids
    ("vg/VG_100K/2.jpg", None, None),
    ("ocr_vqa/images/0140449132.jpg", None, None),     # an ISBN, not a COCO id
    ("textvqa/train_images/0054c91397f2fe05.jpg", None, None),
    ("000000033471.txt", None, None),
])
def test_coco_image_id_and_split_from_file_names(name, image_id, split):
    assert coco_image_id(name) == image_id
    assert coco_split_of(name) == split


def test_unique_keys():
    assert unique_keys(["a", "b", "a", 7, "7", "a"]) == ["a", "b", "a#1", "7", "7#1", "a#2"]
    # a key some record already has as its id is passed over
    assert unique_keys(["a", "a", "a#1"]) == ["a", "a#2", "a#1"]
    # prefix-stable: a record's key does not depend on the records after it
    ids = ["x", "y", "x", "x", "y"]
    assert all(unique_keys(ids[:n]) == unique_keys(ids)[:n] for n in range(len(ids)))


def test_llava_instruct_150k_as_it_ships(coco_root, tmp_path, capsys):
    """Shared ids kept as ID#k with source_id, tasks recognised (FiSAO's default 'detail'
    finds its records), image ids from the bare COCO file names, images under train2017."""
    path = build_instruct_file(tmp_path, coco_root, kind="llava_instruct_150k")
    raw = read_records(path)
    recs = load_llava_records(path, image_root=coco_root / "train2017", check_images=True)
    assert [r["id"] for r in recs] == ["000000000009", "000000000009#1", "000000000009#2",
                                      "000000000025", "000000000025#1", "000000000030"]
    assert [source_id(r) for r in recs] == [r["id"] for r in raw]
    assert "source_id" not in recs[0] and recs[1]["source_id"] == "000000000009"
    assert [r["task"] for r in recs] == ["conversation", "detail", "reasoning", "detail",
                                        "existence", "detail"]
    assert [r["image_id"] for r in recs] == [9, 9, 9, 25, 25, 30]
    assert [r for r in recs if r["task"] == "detail"]
    # the rest of each record is as read
    for r, orig in zip(recs, raw):
        assert {k: v for k, v in r.items() if k not in ("id", "source_id", "task",
                                                        "image_id")} == \
            {k: v for k, v in orig.items() if k != "id"}
    err = capsys.readouterr().err
    assert "kept 3 records that repeat an earlier record's id" in err
    assert "text-only" not in err


def test_mix665k_skips_text_only_records_with_a_count(instruct_file, capsys):
    raw = read_records(instruct_file)
    recs = load_llava_records(instruct_file, check_images=True)
    assert len(raw) - len(recs) == 2 and all("image" in r for r in recs)
    err = capsys.readouterr().err
    assert "skipped 2 text-only records (no image)" in err and str(instruct_file) in err
    by_id = {r["id"]: r for r in recs}
    assert by_id["000000000034"]["task"] == "vqa" and by_id["000000000034"]["image_id"] == 34
    # not a COCO image: no image id invented
    assert by_id["0140449132"]["task"] == "vqa" and "image_id" not in by_id["0140449132"]
    with pytest.raises(DataError, match=r"record 3 \(id 'i6IyJda_0'\): field 'image'"):
        load_llava_records(instruct_file, text_only="error")


def test_micro_world_records_load_unchanged(tiny_world_dir, capsys):
    """visalign's own files (unique ids, task and image_id on every record) come back exactly
    as read, and nothing is printed."""
    from visalign.world import load_world

    w = load_world(tiny_world_dir)
    for split in ("train", "val"):
        p = w.llava_path(split)
        assert load_llava_records(p) == read_records(p)
    assert capsys.readouterr().err == ""


def test_given_task_and_image_id_are_kept(tmp_path):
    recs = [{"id": 1, "image": "000000000009.jpg", "task": "mine", "image_id": 5,
             "conversations": _conv("<image>\nDescribe this image in detail.", "A dog.")}]
    p = tmp_path / "r.json"
    p.write_text(json.dumps(recs))
    assert load_llava_records(p) == recs
    bare = [{k: v for k, v in recs[0].items() if k not in ("task", "image_id")}]
    p.write_text(json.dumps(bare))
    assert load_llava_records(p, infer=False) == bare
    assert load_llava_records(p) == [{**bare[0], "task": "detail", "image_id": 9}]


def test_no_usable_records_is_one_line_error(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps([{"id": "t1", "model": "", "conversations": _conv("Hi", "Hello")},
                             {"id": "t2", "conversations": _conv("Joke?", "No.")}]))
    with pytest.raises(DataError) as e:
        load_llava_records(p)
    msg = str(e.value)
    assert "\n" not in msg and msg == (f"{p}: no usable records: all 2 records are text-only "
                                       "(no image)")


def test_generation_resumes_on_shared_ids(tiny_llava_dir, coco_root, tmp_path):
    """Generating over llava_instruct_150k (shared ids): every record answered once under its
    unique key, source_id and image_id added; a resumed run answers only what is left and ends
    with the answers of an uninterrupted run."""
    from visalign.models import load_vlm
    from visalign.models.generation import GenerationConfig, generate_answers

    path = build_instruct_file(tmp_path, coco_root, kind="llava_instruct_150k")
    raw = read_records(path)
    vlm = load_vlm(tiny_llava_dir)
    cfg = dict(batch_size=2, max_new_tokens=3, device="cpu", progress=False,
               image_root=str(coco_root / "train2017"))
    clean = generate_answers(vlm, path, tmp_path / "clean.jsonl", cfg=GenerationConfig(**cfg))
    part = tmp_path / "part.jsonl"
    generate_answers(vlm, path, part, cfg=GenerationConfig(**cfg, limit=4))
    first = read_jsonl(part)
    assert [r["id"] for r in first] == unique_keys(r["id"] for r in raw)[:4]
    generate_answers(vlm, path, part, cfg=GenerationConfig(**cfg))
    rows = read_jsonl(part)
    assert rows[:4] == first                       # resumed: nothing done twice
    assert rows == read_jsonl(clean)
    keys = [r["id"] for r in rows]
    assert keys == unique_keys(r["id"] for r in raw) and len(set(keys)) == len(raw)
    assert [source_id(r) for r in rows] == [r["id"] for r in raw]
    assert [r["image_id"] for r in rows] == [9, 9, 9, 25, 25, 30]


def test_generation_skips_text_only_records(tiny_llava_dir, instruct_file, tmp_path, capsys):
    from visalign.models import load_vlm
    from visalign.models.generation import GenerationConfig, generate_answers

    out = generate_answers(load_vlm(tiny_llava_dir), instruct_file, tmp_path / "a.jsonl",
                           cfg=GenerationConfig(max_new_tokens=2, device="cpu", progress=False))
    rows = read_jsonl(out)
    assert len(rows) == len(read_records(instruct_file)) - 2
    assert all(r.get("image") for r in rows)
    assert "skipped 2 text-only records" in capsys.readouterr().err


def _cal_cfg(coco_root, answers, out, model, verifier, **kw):
    from visalign.data.coco import CocoRoot
    from visalign.methods.fisao.calibrate import CalibrateConfig

    root = CocoRoot(coco_root)
    return CalibrateConfig(model=str(model), verifier=str(verifier), answers=str(answers),
                           image_root=str(root.image_dir("train2017")),
                           instances=str(root.instances_path("train2017")),
                           captions=str(root.captions_path("train2017")), out=str(out),
                           wordnet=False, **kw)


def test_calibration_on_real_formats(coco_root, llava15_hf_dir, openai_clip_dir, tiny_clip_dir,
                                     tmp_path):
    """Answers as generation writes them for llava_instruct_150k (COCO file names, shared ids,
    no image_id) calibrate against a COCO root's train2017 with the llava-1.5's own CLIP; a
    verifier that is not its tower is refused before anything is written."""
    from visalign.io import write_jsonl
    from visalign.methods.fisao.calibrate import calibrate_verifier
    from visalign.verifier.tower import VerifierMismatch

    said = {9: ["A man walks two dogs on a path.", "A cat sleeps next to the man."],
            25: ["A cat sits on a chair.", "A dog and a cat sit on a chair."],
            30: ["A person stands by a car.", "A car, a person and a dog."],
            34: ["A cup on a dining table.", "A cup and a car on a table."]}
    answers = [{"id": f"{i:012d}" if k == 0 else f"{i:012d}#{k}", "image": f"{i:012d}.jpg",
                "answer": a} for i, texts in said.items() for k, a in enumerate(texts)]
    path = tmp_path / "answers.jsonl"
    write_jsonl(path, answers)
    bad_out = tmp_path / "bad"
    with pytest.raises(VerifierMismatch):
        calibrate_verifier(_cal_cfg(coco_root, path, bad_out, llava15_hf_dir, tiny_clip_dir))
    assert not bad_out.exists()                      # refused before any work
    out = tmp_path / "cal"
    rep = calibrate_verifier(_cal_cfg(coco_root, path, out, llava15_hf_dir, openai_clip_dir,
                                      device="cpu"))
    rows = read_jsonl(out / "scores.jsonl")
    assert {r["image_id"] for r in rows} == set(said)      # read from the file names
    assert rep["n_gt"] > 0 and rep["n_hal"] > 0
    hal = {(r["image_id"], r["category"]) for r in rows if r["hallucinated"]}
    assert (9, "cat") in hal and (25, "dog") in hal and (34, "car") in hal
