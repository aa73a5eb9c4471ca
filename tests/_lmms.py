"""A local lmms-eval task on a tiny dataset (JSON lines + PNG images), in lmms-eval's YAML task
format, for offline tests of ``visalign eval lmms``."""

from __future__ import annotations

import json
from pathlib import Path

TASK = "visalign_tiny_vqa"

_UTILS = '''from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"
'''

_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "\\nAnswer the question using a single word or phrase."
metadata:
  - version: 0.0
"""

POST_PROMPT = "\nAnswer the question using a single word or phrase."


def build_task(root: Path, docs: list[dict]) -> Path:
    """Write the task folder under ``root`` (docs: question, answer, PIL ``image``); returns it."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, d in enumerate(docs):
        img = root / "images" / f"{i}.png"
        d["image"].save(img)
        lines.append(json.dumps({"question": d["question"], "answer": d["answer"],
                                 "image": str(img)}))
    data = root / "docs.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "utils.py").write_text(_UTILS, encoding="utf-8")
    (root / f"{TASK}.yaml").write_text(_YAML.format(task=TASK, data=data), encoding="utf-8")
    return root
