"""`visalign eval suite` end to end: a tiny LLaVA (as a LoRA adapter dir on its base), a COCO
root, POPE files, MMHal-Bench's template and Object HalBench's file in their shipped layouts, and
a fake judge endpoint."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from test_eval_judge import FakeEndpoint
from visalign.cli import main
from visalign.eval.registry import SuiteData, get, names, register
from visalign.io import DataError, write_json

VAL_IDS = [42, 43, 44, 45]
CATS = ["person", "dog", "car", "chair"]


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="JPEG")
    return buf.getvalue()


def build_data(root):
    coco = root / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2014").mkdir()
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CATS)]
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in VAL_IDS]
    anns = [{"id": k + 1, "image_id": i, "category_id": 1 + k % 4, "bbox": [0, 0, 4, 4]}
            for k, i in enumerate(VAL_IDS)]
    caps = [{"id": k + 1, "image_id": i, "caption": "A man with a dog near a car."}
            for k, i in enumerate(VAL_IDS)]
    for split, imgs, a, c in (("val2014", images, anns, caps), ("train2014", [], [], [])):
        write_json(coco / "annotations" / f"instances_{split}.json",
                   {"images": imgs, "annotations": a, "categories": cats})
        write_json(coco / "annotations" / f"captions_{split}.json",
                   {"images": imgs, "annotations": c})
    for k, i in enumerate(VAL_IDS):
        (coco / "val2014" / f"COCO_val2014_{i:012d}.jpg").write_bytes(
            _jpeg((60 * k, 100, 200 - 40 * k)))
    pope = root / "pope"
    pope.mkdir()
    for split in ("random", "popular", "adversarial"):
        with open(pope / f"coco_pope_{split}.json", "w") as f:
            for q, (i, obj, label) in enumerate([(42, "person", "yes"), (43, "cat", "no")]):
                f.write(json.dumps({"question_id": q + 1, "image": f"COCO_val2014_{i:012d}.jpg",
                                    "text": f"Is there a {obj} in the image?",
                                    "label": label}) + "\n")
    mmhal = root / "mmhal"
    (mmhal / "images").mkdir(parents=True)
    recs = []
    for k, qtype in enumerate(["attribute", "adversarial", "comparison"]):
        (mmhal / "images" / f"photo_{k}_o.jpg").write_bytes(_jpeg((20 * k, 20, 20)))
        recs.append({"question_type": qtype, "question_topic": "outdoor", "image_id": f"h{k}",
                     "image_src": f"https://example.org/8/photo_{k}_o.jpg",
                     "image_content": ["Dog", "Car"], "question": f"What is in picture {k}?",
                     "gt_answer": "A dog.", "model_answer": ""})
    write_json(mmhal / "response_template.json", recs)
    objhal = root / "obj_halbench_300_with_image.jsonl"
    with open(objhal, "w") as f:
        for i in VAL_IDS[:2]:
            f.write(json.dumps({"image_id": i, "question": "Describe the image in detail.",
                                "image": base64.b64encode(_jpeg((5, 5, 5))).decode()}) + "\n")
    return coco, pope, mmhal / "response_template.json", objhal


@pytest.fixture
def adapter_dir(tiny_llava_dir, tmp_path):
    from visalign.models import load_vlm
    from visalign.models.lora import add_lora

    vlm = load_vlm(tiny_llava_dir)
    model = add_lora(vlm.model, r=4, alpha=8, dropout=0.0)
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


@pytest.fixture
def judge(monkeypatch):
    ep = FakeEndpoint()
    monkeypatch.setattr(FakeEndpoint, "reply", staticmethod(lambda m: "Fine.\nRating: 4"))
    for v in ("VISALIGN_JUDGE_BASE_URL", "VISALIGN_JUDGE_MODEL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(v, raising=False)
    yield ep
    ep.close()


def test_suite_end_to_end_and_resume(adapter_dir, judge, tmp_path, nltk_tagger_data,
                                     wordnet_available, capsys):
    coco, pope, mmhal, objhal = build_data(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["eval", "suite", "--model", str(adapter_dir), "--out", str(out),
            "--benchmarks", "chair,pope,mmhal,objhal", "--coco-root", str(coco),
            "--pope-dir", str(pope), "--mmhal-file", str(mmhal), "--objhal-file", str(objhal),
            "--objhal-synonyms", "coco", "--objhal-mode", "words", "--chair-images",
            "val2014:3", "--max-new-tokens", "chair=6,pope=3,mmhal=5,objhal=6",
            "--batch-size", "4", "--dtype", "float32", "--device", "cpu", "--method", "base",
            "--judge-model", "judge-1", "--judge-base-url", judge.url, "--judge-cache-dir",
            str(tmp_path / "cache"), "--no-progress", "judge.backoff=0.01"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[chair] max_new_tokens=6, greedy, variant=reference" in printed
    assert "[mmhal] max_new_tokens=5, greedy, judge_model=judge-1" in printed
    assert "published LLaVA-1.5-7B: 0.859" in printed

    res = json.loads((out / "results.json").read_text())
    (row,) = res["rows"]
    assert row["method"] == "base" and row["data_size"] == 0
    m = row["metrics"]
    assert m["n_captions"] == 3 and 0 <= m["chair_s"] <= 1
    for split in ("random", "popular", "adversarial"):
        assert 0 <= m[f"pope_{split}_yes_ratio"] <= 1
    assert m["mmhal_score"] == 4.0 and m["mmhal_hallucination_rate"] == 0.0
    assert m["mmhal_attribute_score"] == 4.0 and m["mmhal_judge_unparsed"] == 0
    assert m["objhal_n"] == 2 and "objhal_response_hall" in m
    protocols = res["config"]["protocols"]
    assert protocols["chair"]["max_new_tokens"] == 6 and protocols["chair"]["n_prompts"] == 3
    assert protocols["pope"]["parser"] == "llava" and protocols["objhal"]["mode"] == "words"
    assert set(res["timings"]) >= {"chair_generate", "chair_score", "objhal_score"}
    md = (out / "results.md").read_text()
    assert "CHAIR_s" in md and "max_new_tokens=6" in md and "nSFT paper, Table 9" in md
    assert (out / "results.png").exists()
    # the answers follow each protocol's prompt
    pope_ans = [json.loads(x) for x in (out / "answers_pope.jsonl").read_text().splitlines()]
    assert len(pope_ans) == 6 and pope_ans[0]["prompt"].endswith(
        "\nAnswer the question using a single word or phrase.")
    filled = json.loads((out / "mmhal_responses.json").read_text())
    assert len(filled) == 3 and all(isinstance(r["model_answer"], str) for r in filled)

    # a re-run generates nothing new and asks the judge nothing new
    before = {p.name: p.read_text() for p in out.glob("answers_*.jsonl")}
    n_requests = len(judge.requests)
    assert main(argv) == 0
    assert {p.name: p.read_text() for p in out.glob("answers_*.jsonl")} == before
    assert len(judge.requests) == n_requests
    assert json.loads((out / "results.json").read_text())["rows"] == res["rows"]


def test_bad_input_is_one_line(tmp_path, capsys):
    coco, pope, mmhal, objhal = build_data(tmp_path / "data")
    rc = main(["eval", "suite", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
               "--benchmarks", "pope"])
    assert rc == 2 and "POPE needs --pope-dir" in capsys.readouterr().err
    rc = main(["eval", "suite", "--model", "x", "--out", str(tmp_path / "o"),
               "--benchmarks", "chair,nope", "--coco-root", str(coco)])
    assert rc == 2 and "unknown benchmark 'nope'" in capsys.readouterr().err
    data = SuiteData(coco_root=str(coco), chair_images="chair-500")
    with pytest.raises(DataError, match="image 2239 not found"):
        get("chair").prompts(data)


def test_registry_takes_new_benchmarks():
    class Toy:
        name = "toy"
        max_new_tokens = 4

        def prompts(self, data):
            return []

        def score(self, prompts, answers, data, out):
            return {"metrics": {}}

    from visalign.eval import registry

    register(Toy())
    try:
        assert get("toy").max_new_tokens == 4
        assert {"chair", "pope", "mmhal", "objhal", "toy"} <= set(names())
        with pytest.raises(TypeError):
            register(object())
    finally:
        registry._REGISTRY.pop("toy")


def test_chair500_list_is_less_is_mores():
    from visalign.eval.benchmarks import chair500_ids

    ids = chair500_ids()
    assert len(ids) == len(set(ids)) == 500 and ids[:3] == [2239, 2302, 3001]
