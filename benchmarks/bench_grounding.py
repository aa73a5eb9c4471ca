"""Does the base model use the image? Prints one JSON object.

For each POPE split of the world's held-out split: accuracy by answer likelihood with the real
image and with a blank grey one (a model that ignores the image scores the same on both), and
the share of answers that flip when the image is blanked. Then a linear probe on the vision
tower's mean-pooled patch features (train split → held-out split, macro per-category AUROC):
what the LM could read from the image if it used it.

    python benchmarks/bench_grounding.py --out runs/grounding            # the shipped base
    python benchmarks/bench_grounding.py --out runs/grounding --model DIR --world WORLD
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/grounding", help="work dir (world and model copies)")
    ap.add_argument("--world", default="", help="world dir (default: build small seed 0 in --out)")
    ap.add_argument("--model", default="", help="model dir (default: the shipped base)")
    ap.add_argument("--questions", type=int, default=300, help="POPE questions per split")
    ap.add_argument("--probe-images", type=int, default=2000, help="train images for the probe")
    ap.add_argument("--layer", type=int, default=-2, help="vision hidden layer for the probe")
    args = ap.parse_args(argv)

    import torch

    from visalign.methods.base_model.packaged import install_packaged_base
    from visalign.data.coco import load_coco_instances
    from visalign.eval.grounding import image_dependence, pooled_vision_features, \
        vision_probe_auroc
    from visalign.eval.pope import build_pope
    from visalign.eval.suite import EvalSettings, pope_questions_path
    from visalign.io import read_jsonl, write_jsonl
    from visalign.models import load_vlm
    from visalign.world import build_world, load_world, world_config
    from PIL import Image

    out = Path(args.out)
    world_dir = Path(args.world) if args.world else out / "world"
    if not (world_dir / "world.json").exists():
        build_world(world_config("small", seed=0), world_dir, overwrite=True, preset="small")
    world = load_world(world_dir)
    model_dir = Path(args.model) if args.model else out / "base"
    if not args.model and not (model_dir / "config.json").exists():   # a re-run reuses it
        install_packaged_base(world_dir, model_dir)
    vlm = load_vlm(str(model_dir))
    vlm.model.eval()

    report: dict = {"model": str(model_dir), "world": str(world_dir), "pope": {}}
    t = time.time()
    ev = EvalSettings()
    for split in ev.pope_splits:
        # the evaluation suite's cached questions (built here if no evaluation ran yet), so
        # these are the questions every model of this world is scored on
        path = pope_questions_path(world, world.eval_split, split, ev.pope_images,
                                   ev.pope_negatives, ev.seed)
        if not path.exists():
            write_jsonl(path, build_pope(world.instances_path(world.eval_split), split,
                                         ev.pope_images, ev.pope_negatives, ev.seed,
                                         image_root=world.image_root))
        recs = read_jsonl(path)[:args.questions]
        report["pope"][split] = image_dependence(vlm, recs, image_root=str(world.image_root))
    report["pope_seconds"] = round(time.time() - t, 2)

    t = time.time()

    def split_xy(split: str, limit: int):
        coco = load_coco_instances(world.instances_path(split))
        cats = sorted(coco.getCatIds())
        ids = sorted(coco.getImgIds())[:limit]
        images, y = [], torch.zeros(len(ids), len(cats))
        for i, img_id in enumerate(ids):
            info = coco.loadImgs(img_id)[0]
            with Image.open(Path(world.image_root) / info["file_name"]) as im:
                images.append(im.convert("RGB"))
            for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
                y[i, cats.index(a["category_id"])] = 1
        return pooled_vision_features(vlm, images, layer=args.layer), y

    tx, ty = split_xy("train", args.probe_images)
    vx, vy = split_xy(world.eval_split, 10 ** 9)
    report["vision_probe"] = {**vision_probe_auroc(tx, ty, vx, vy), "layer": args.layer,
                              "train_images": len(tx), "val_images": len(vx),
                              "seconds": round(time.time() - t, 2)}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
