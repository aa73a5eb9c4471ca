"""The built-in real-data benchmarks of ``visalign eval suite``: CHAIR, POPE, MMHal-Bench and
Object HalBench, each generated and scored with its reference protocol (see the modules each
one calls, and docs/evaluation-protocols.md).

* ``chair``: "Please describe this image in detail." (less-is-more's and OPERA's prompt), 512 new
  tokens; images: less-is-more's ``chair-500.jsonl`` list (COCO ids shipped as
  ``resources/chair500_ids.txt``) or ``val2014:N``, a seeded sample; ground truth from COCO 2014
  train + val; scorer :class:`~visalign.eval.chair.Chair` or, with ``chair_variant=lemma``,
  :class:`~visalign.eval.chair_lemma.ChairLemma`.
* ``pope``: :mod:`visalign.eval.pope_protocol` (LLaVA-1.5's suffix, 128 tokens), images from the
  COCO root's val2014/.
* ``mmhal``: the question as the prompt (LLaVA-RLHF's ``--test-prompt ''``), 1,024 tokens; the
  judge of :mod:`visalign.eval.judge`; the answers are also written into a copy of the template
  (``mmhal_responses.json``) that the reference script reads as it is.
* ``objhal``: :mod:`visalign.eval.objhal`, 1,024 tokens.
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path
from typing import Any

from visalign.eval.registry import SuiteData, register
from visalign.io import DataError, read_json, write_json

__all__ = ["CHAIR_PROMPT", "chair500_ids", "ChairBenchmark", "PopeBenchmark", "MMHalBenchmark",
           "ObjHalBenchmark"]

CHAIR_PROMPT = "Please describe this image in detail."


def chair500_ids() -> list[int]:
    """The 500 COCO image ids of less-is-more's ``CHAIR-eval/data/chair-500.jsonl``, in order."""
    text = (resources.files("visalign") / "resources" / "chair500_ids.txt").read_text("utf-8")
    return [int(x) for x in text.split()]


def _work(data: SuiteData, sub: str) -> Path:
    if not data.work_dir:
        raise ValueError("SuiteData.work_dir is not set (the suite sets it to OUT/data)")
    return Path(data.work_dir) / sub


def _judge_client(data: SuiteData) -> Any:
    from visalign.eval.judge import JudgeClient

    return JudgeClient(data.judge)


class ChairBenchmark:
    name = "chair"
    max_new_tokens = 512

    def image_ids(self, data: SuiteData) -> list[int]:
        spec = data.chair_images
        if spec == "chair-500":
            return chair500_ids()
        if spec.startswith("val2014:"):
            try:
                n = int(spec.split(":", 1)[1])
            except ValueError:
                n = 0
            if n < 1:
                raise ValueError(f"--chair-images {spec}: N must be a positive integer")
            from visalign.data.coco import CocoRoot

            inst = read_json(CocoRoot(data.path("coco_root", "CHAIR")).instances_path("val2014"))
            ids = sorted(int(im["id"]) for im in inst.get("images") or [])
            if n > len(ids):
                raise ValueError(f"--chair-images {spec}: val2014 has only {len(ids)} images")
            return random.Random(data.chair_seed).sample(ids, n)
        raise ValueError(f"--chair-images {spec!r}: use chair-500 or val2014:N")

    def prompts(self, data: SuiteData) -> list[dict]:
        from visalign.data.coco import CocoRoot

        root = CocoRoot(data.path("coco_root", "CHAIR"))
        return [{"id": str(i), "image": str(root.find_image(i)), "prompt": CHAIR_PROMPT,
                 "image_id": i} for i in self.image_ids(data)]

    def score(self, prompts: list[dict], answers: dict[str, str], data: SuiteData,
              out: Path) -> dict:
        from visalign.eval.chair_lemma import CHAIR_VARIANTS, chair_class
        from visalign.data.coco import CocoRoot

        ids = [p["image_id"] for p in prompts]
        inst, caps = CocoRoot(data.path("coco_root", "CHAIR")).merged(image_ids=ids)
        chair = chair_class(data.chair_variant).from_coco(inst, caps)
        res = chair.evaluate([{"id": p["id"], "image_id": p["image_id"],
                               "caption": answers[p["id"]]} for p in prompts],
                             path="CHAIR answers")
        res["protocol"] = {"variant": data.chair_variant,
                           "scorer": CHAIR_VARIANTS[data.chair_variant],
                           "images": data.chair_images, "prompt": CHAIR_PROMPT,
                           "ground_truth": "COCO 2014 train + val instances and captions"}
        res.pop("variant", None)
        if data.chair_caption_metrics:
            from visalign.eval.captions import caption_metrics

            cm = caption_metrics([{"image_id": p["image_id"], "caption": answers[p["id"]]}
                                  for p in prompts], caps, meteor=False, path="CHAIR answers")
            res["metrics"].update(cm["metrics"])
            res["caption_tokenizer"] = cm["tokenizer"]
        write_json(out / "chair.json", res)
        return res


class PopeBenchmark:
    name = "pope"
    max_new_tokens = 128

    def prompts(self, data: SuiteData) -> list[dict]:
        from visalign.eval.pope_protocol import pope_file, pope_prompts, read_pope_file

        if not data.pope_dir and not data.coco_root:
            raise ValueError("POPE needs --pope-dir (POPE's shipped question files) or "
                             "--coco-root (its val2014 images; the files are then built from "
                             "its annotations)")
        pope_dir = data.path("pope_dir", "POPE") if data.pope_dir else _built_pope(data)
        images = data.path("coco_root", "POPE (its images are COCO val2014)") / "val2014"
        out: list[dict] = []
        for split in data.pope_splits:
            out += pope_prompts(read_pope_file(pope_file(pope_dir, split)), split, images)
        return out

    def score(self, prompts: list[dict], answers: dict[str, str], data: SuiteData,
              out: Path) -> dict:
        from visalign.eval.pope_protocol import score_pope_answers

        res = score_pope_answers(prompts, answers, data.pope_parser)
        res["protocol"] = {"parser": data.pope_parser, "splits": list(data.pope_splits),
                           "files": data.pope_dir or
                           f"built from val2014 annotations ({data.pope_images} images per "
                           f"split, seed {data.pope_seed})"}
        write_json(out / "pope.json", res)
        return res


def _built_pope(data: SuiteData) -> Path:
    """POPE's three files in its own format, built from the COCO root's val2014 instances with
    POPE's sampling (:func:`visalign.eval.pope.build_pope`; seeded), for a user without the
    shipped files. Written once under ``work_dir``."""
    import json

    from visalign.data.coco import CocoRoot
    from visalign.eval.pope import build_pope
    from visalign.io import atomic_write_text

    root = CocoRoot(data.path("coco_root", "POPE (its images are COCO val2014)"))
    folder = _work(data, f"pope_built_{data.pope_images}_{data.pope_seed}")
    names = {img["id"]: img["file_name"]
             for img in root.instances("val2014").dataset["images"]}
    for split in data.pope_splits:
        path = folder / f"coco_pope_{split}.json"
        if path.exists():
            continue
        qs = build_pope(root.instances("val2014"), split, data.pope_images, 3, data.pope_seed)
        lines = [json.dumps({"question_id": i + 1, "image": names[q["image_id"]],
                             "text": q["question"], "label": q["label"]})
                 for i, q in enumerate(qs)]
        atomic_write_text(path, "\n".join(lines) + "\n")
    return folder


class MMHalBenchmark:
    name = "mmhal"
    max_new_tokens = 1024

    def _records(self, data: SuiteData) -> tuple[Path, list[dict]]:
        path = data.path("mmhal_file", "MMHal-Bench")
        recs = read_json(path)
        if not isinstance(recs, list) or not recs:
            raise DataError(path, "expected MMHal-Bench's response_template.json: a JSON list "
                                  "of question records")
        for i, r in enumerate(recs):
            for f in ("question", "gt_answer", "image_content"):
                if not isinstance(r, dict) or f not in r:
                    raise DataError(path, "missing field", record=i, field=f)
        return path, recs

    def prompts(self, data: SuiteData) -> list[dict]:
        path, recs = self._records(data)
        image_dir = Path(data.mmhal_images) if data.mmhal_images else path.parent / "images"
        out = []
        for i, r in enumerate(recs):
            if r.get("image_path"):
                img = Path(r["image_path"])
                img = img if img.is_absolute() else path.parent / img
            elif r.get("image_src"):
                img = image_dir / str(r["image_src"]).rsplit("/", 1)[-1]
            else:
                raise DataError(path, "no image_src or image_path", record=i, field="image_src")
            if not img.exists():
                raise DataError(path, f"image not found: {img} (set --mmhal-images)", record=i,
                                field="image_src")
            out.append({"id": str(i), "image": str(img), "prompt": r["question"],
                        "question_type": r.get("question_type")})
        return out

    def score(self, prompts: list[dict], answers: dict[str, str], data: SuiteData,
              out: Path) -> dict:
        from visalign.eval.judge import judge_records

        path, recs = self._records(data)
        if len(recs) != len(prompts):
            raise DataError(path, f"{len(recs)} records but {len(prompts)} prompts")
        filled = [{**r, "model_answer": answers[str(i)]} for i, r in enumerate(recs)]
        write_json(out / "mmhal_responses.json", filled)
        client = _judge_client(data)
        res = judge_records("mmhal", client, filled, records_path=path,
                            workers=data.judge.workers)
        m = res["metrics"]
        metrics = {"mmhal_score": m["mmhal_score"],
                   "mmhal_hallucination_rate": m["mmhal_hallucination_rate"],
                   "mmhal_judge_unparsed": m["judge_unparsed"], "mmhal_n": m["judge_n"]}
        for t, v in res["mmhal_by_type"].items():
            metrics[f"mmhal_{t}_score"] = v
        res["metrics"] = metrics
        res["protocol"] = {"judge_model": client.model, "prompt": "LLaVA-RLHF eval_gpt_mmhal.py "
                           "(verbatim)", "temperature": data.judge.temperature}
        write_json(out / "mmhal.json", res)
        return res


class ObjHalBenchmark:
    name = "objhal"
    max_new_tokens = 1024

    def prompts(self, data: SuiteData) -> list[dict]:
        from visalign.eval.objhal import objhal_prompts, read_objhal_file

        path = data.path("objhal_file", "Object HalBench")
        return objhal_prompts(read_objhal_file(path), _work(data, "objhal_images"), path)

    def score(self, prompts: list[dict], answers: dict[str, str], data: SuiteData,
              out: Path) -> dict:
        from visalign.data.coco import CocoRoot
        from visalign.eval.objhal import ObjHalScorer

        if not data.objhal_synonyms:
            raise ValueError("Object HalBench needs --objhal-synonyms: RLAIF-V's "
                             "eval/data/synonyms_refine.txt (not shipped: CC BY-NC data), or "
                             "'coco' for visalign's packaged CHAIR table")
        scorer = ObjHalScorer(data.objhal_synonyms, mode=data.objhal_mode, nlp=data.objhal_nlp)
        ids = sorted({int(p["image_id"]) for p in prompts})
        inst, caps = CocoRoot(data.path("coco_root", "Object HalBench's ground truth")).merged(
            image_ids=ids)
        scorer.load_ground_truth(inst, caps, ids)
        items = [{"id": p["id"], "image_id": p["image_id"], "question": p["question"],
                  "answer": answers[p["id"]]} for p in prompts]
        client = _judge_client(data) if data.objhal_mode == "judge" else None
        res = scorer.score(items, client, workers=data.judge.workers)
        if client is not None:
            res["protocol"]["judge_model"] = client.model
        write_json(out / "objhal.json", res)
        return res


for _b in (ChairBenchmark(), PopeBenchmark(), MMHalBenchmark(), ObjHalBenchmark()):
    register(_b)
