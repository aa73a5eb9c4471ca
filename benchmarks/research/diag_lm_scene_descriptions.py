"""How well does the base's language model describe a scene it is *told*? Prints one JSON object.

The micro-world LM is pre-trained with each image's true scene written out in words where the
image goes (``world/base.py``, ``lm_text=scene``). Giving it that text for held-out images and
asking "Describe this image in detail." measures its description skill with perfect vision: the
recall here is a ceiling on what the VLM's descriptions can reach through that LM. Also reports
how often an object sentence only repeats objects the description already named (the main way
the micro-world base loses recall).

    python benchmarks/research/diag_lm_scene_descriptions.py --world W \
        --model STAGES/lm_pretrain/model [--tokenizer STAGES/tokenizer] \
        [--scene-order random|reading|category|rank] [--images 100] [--out captions.json]
    python benchmarks/research/diag_lm_scene_descriptions.py --chair-json EVALDIR/chair.json \
        [--world W]
        # the same repetition statistics for a VLM's evaluated descriptions (with --world also
        # recall over objects with a large instance vs small-only objects)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path


def main() -> int:
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from visalign.analysis.recall_by_object import recall_by_size_class
    from visalign.analysis.repetition import object_repetition
    from visalign.data.coco import load_coco_instances
    from visalign.eval.chair import Chair, load_synonyms
    from visalign.io import read_json
    from visalign.world import load_world
    from visalign.methods.base_model import scene_text, world_chat_template
    from visalign.world.vocab import KEYED_ORDERS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world")
    ap.add_argument("--model", help="a base stage's model dir (lm_pretrain/model)")
    ap.add_argument("--chair-json", help="only report repetition of an evaluated chair.json")
    ap.add_argument("--tokenizer", default=None,
                    help="default: the stages dir's tokenizer/ next to the model's stage")
    ap.add_argument("--scene-order", choices=("random", "reading", "category", "rank"),
                    default="random",
                    help="object order of the scene text (the base's scene_order)")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", default=None, help="also write the descriptions here")
    args = ap.parse_args()
    if args.chair_json:
        res = json.loads(Path(args.chair_json).read_text())
        row = {"chair_json": args.chair_json, "chair": res["metrics"],
               "repetition": object_repetition(res["captions"])}
        if args.world:
            world = load_world(args.world)
            row["recall_by_size"] = recall_by_size_class(
                res["captions"], read_json(world.instances_path(world.eval_split)))
        print(json.dumps(row, indent=1))
        return 0
    if not (args.world and args.model):
        ap.error("--world and --model are required (or --chair-json)")
    world = load_world(args.world)
    tok_dir = args.tokenizer or str(Path(args.model).resolve().parent.parent / "tokenizer")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    coco = load_coco_instances(world.instances_path(world.eval_split))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    rng = random.Random(0)
    prompt = world_chat_template()[0]
    keys = (world.vocab.order_keys(args.scene_order)
            if args.scene_order in KEYED_ORDERS else None)
    rows = []
    ids = sorted(coco.getImgIds())[: args.images]
    for i in range(0, len(ids), 16):
        batch = ids[i:i + 16]
        texts = []
        for img in batch:
            info = coco.loadImgs(img)[0]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img))
            scene = scene_text(str(info.get("theme", "scene")), anns, names, rng,
                               args.scene_order, keys)
            texts.append(prompt.format(q=scene + "\nDescribe this image in detail."))
        enc = tok(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 max_new_tokens=args.max_new_tokens, do_sample=False)
        for img, o in zip(batch, out[:, enc["input_ids"].shape[1]:]):
            rows.append({"image_id": img, "caption": tok.decode(o, skip_special_tokens=True)
                         .strip()})
    chair = Chair.from_coco(world.instances_path(world.eval_split),
                            synonyms=load_synonyms(world.synonyms_path))
    res = chair.evaluate(rows)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print(json.dumps({"model": args.model, "images": len(rows), "chair": res["metrics"],
                      "repetition": object_repetition(res["captions"]),
                      "examples": [r["caption"] for r in rows[:3]]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
