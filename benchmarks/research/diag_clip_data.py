"""How much does the micro-world's CLIP gain from more distinct images at the same compute?

The shipped recipe trains the tiny CLIP (the VLM's vision tower and FiSAO's verifier) for 12
epochs on the 3,000 training images. A ViT trained from scratch on 3,000 images sees each one 12
times; a real CLIP is pre-trained on far more images than the VLM's instruction data. This
script trains the same CLIP (same architecture, settings and number of optimiser steps) on the
first N training images of a larger world for E epochs and measures, on the held-out split:

- ``auroc``: the verifier's present/absent AUROC of "a photo of a {object}" (as ``world base``);
- ``patch_acc``: the share of object patches whose projected feature is closest to the right
  category phrase (the dense term's own read-out), overall and for large / small objects;
- ``object_acc``: the same decision per object, from the mean logits of its patches;
- the same accuracies on 500 of the run's own training images (the gap is over-fitting).

A world's first N training scenes do not depend on ``n_train`` (per-image seeds), so
``--world`` built with ``n_train=36000`` holds the shipped world's 3,000 images as its first
3,000. The tokenizer is the packaged base's (trained on the seed-0 small world), so every run
tokenises the same way.

    visalign world build --out W36 --preset small --seed 0 n_train=36000
    python benchmarks/research/diag_clip_data.py --world W36 --runs 3000:12 36000:1 \
        --out clip_data.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _patch_eval(clip, proc, examples, annots, cats, template, image_size, patch_size):
    """Patch- and object-level accuracy of the dense read-out on ``examples``."""
    import torch

    from visalign.methods.base_model.clip_train import _pixel_values, encode_clip_texts, patch_labels

    tok = proc.tokenizer
    with torch.no_grad():
        enc = encode_clip_texts(tok, [template.format(c) for c in cats],
                                clip.config.text_config.max_position_embeddings)
        t = clip.get_text_features(**enc).pooler_output
        t = t / t.norm(dim=-1, keepdim=True)
    hits = {"all": [0, 0], "large": [0, 0], "small": [0, 0]}
    obj_hits = {"all": [0, 0], "large": [0, 0], "small": [0, 0]}
    for i in range(0, len(examples), 128):
        chunk = examples[i:i + 128]
        with torch.no_grad():
            out = clip.vision_model(pixel_values=_pixel_values(proc, [e.image for e in chunk]))
            p = clip.visual_projection(clip.vision_model.post_layernorm(
                out.last_hidden_state[:, 1:]))
            p = p / p.norm(dim=-1, keepdim=True)
            logits = p @ t.T                                   # (b, patches, categories)
        for b, anns in enumerate(annots[i:i + 128]):
            # patch -> annotation index (smallest box on top, as in training)
            owner = patch_labels([(*a["bbox"], k) for k, a in enumerate(anns)], image_size,
                                 patch_size)
            for k, a in enumerate(anns):
                idx = [j for j, o in enumerate(owner) if o == k]
                if not idx:
                    continue
                y = cats.index(a["name"])
                pred = logits[b, idx].argmax(-1)
                n_ok = int((pred == y).sum())
                ok_obj = int(logits[b, idx].mean(0).argmax()) == y
                for key in ("all", a.get("size", "large")):
                    hits[key][0] += n_ok
                    hits[key][1] += len(idx)
                    obj_hits[key][0] += int(ok_obj)
                    obj_hits[key][1] += 1
    return ({f"patch_acc_{k}": round(v[0] / max(1, v[1]), 4) for k, v in hits.items()}
            | {f"object_acc_{k}": round(v[0] / max(1, v[1]), 4) for k, v in obj_hits.items()}
            | {"n_object_patches": hits["all"][1], "n_objects": obj_hits["all"][1]})


def _annotations(world, split):
    from visalign.data.coco import load_coco_instances

    coco = load_coco_instances(world.instances_path(split))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    out = []
    for img_id in sorted(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        out.append([{**a, "name": names[a["category_id"]]} for a in anns])
    return out


def run_one(world, tok, examples_all, annots_train, val_ex, val_present, annots_val, cats,
            n_images: int, epochs: float, seed: int, work: Path, overrides: dict) -> dict:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from visalign.models.tiny import build_tiny_clip
    from visalign.methods.base_model import PATCH_SIZE, base_config
    from visalign.methods.base_model.clip_train import object_auroc, train_clip

    cfg = base_config("small", {"clip": {"epochs": epochs, **overrides}, "seed": seed})
    a = cfg.clip_arch
    init = work / f"init_{n_images}_{epochs}_{seed}"
    build_tiny_clip(init, tok, image_size=world.image_size, patch_size=PATCH_SIZE,
                    vision_hidden=a.vision_hidden, text_hidden=a.text_hidden,
                    layers=(a.vision_layers, a.text_layers), projection_dim=a.projection_dim,
                    heads=a.heads, seed=seed)
    clip = CLIPModel.from_pretrained(init)
    proc = CLIPProcessor.from_pretrained(init)
    if n_images > len(examples_all):
        raise SystemExit(f"--world has {len(examples_all)} training images, run asks {n_images}")
    ex = examples_all[:n_images]
    torch.manual_seed(seed)
    summary = train_clip(clip, proc, ex, cfg.clip, seed=seed, categories=cats, progress=False)
    res = {"n_images": n_images, "epochs": epochs, "seed": seed, "overrides": overrides,
           "steps": summary["steps"], "train_seconds": summary["seconds"],
           "final_loss": round(summary["loss"], 4),
           "final_dense_loss": round(summary["dense_loss"], 4)}
    res["auroc"] = round(object_auroc(clip, proc, [e.image for e in val_ex], val_present, cats,
                                      cfg.clip.template), 4)
    res["val"] = _patch_eval(clip, proc, val_ex, annots_val, cats, cfg.clip.template,
                             world.image_size, PATCH_SIZE)
    res["train"] = _patch_eval(clip, proc, ex[:500], annots_train[:500], cats, cfg.clip.template,
                               world.image_size, PATCH_SIZE)
    save = work / f"clip_{n_images}_{epochs}_{seed}"
    clip.save_pretrained(save)
    proc.save_pretrained(save)
    res["saved"] = str(save)
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, help="world dir (n_train >= the largest run)")
    ap.add_argument("--runs", nargs="+", default=["3000:12", "36000:1"],
                    help="N:EPOCHS[:SEED] per run (first N training images, E epochs)")
    ap.add_argument("--tokenizer", default="", help="tokenizer dir (default: packaged base)")
    ap.add_argument("--set", nargs="*", default=[], help="clip.KEY=VALUE for every run")
    ap.add_argument("--work", default="runs/clip_data", help="where the CLIPs are saved")
    ap.add_argument("--out", default="", help="write the JSON here too")
    args = ap.parse_args(argv)

    import torch
    import yaml
    from transformers import AutoTokenizer

    from visalign.world import load_world
    from visalign.methods.base_model import clip_examples

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tok_dir = args.tokenizer or str(Path(__file__).resolve().parents[1] / "src" / "visalign"
                                    / "resources" / "microworld_base")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    world = load_world(args.world)
    cats = [c.name for c in world.vocab.categories]
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    t0 = time.time()
    examples, _ = clip_examples(world, "train", cats)
    val_ex, val_present = clip_examples(world, world.eval_split)
    annots_train, annots_val = _annotations(world, "train"), _annotations(world, world.eval_split)
    load_s = time.time() - t0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.runs:
        parts = spec.split(":")
        n, e = int(parts[0]), float(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else 0
        row = run_one(world, tok, examples, annots_train, val_ex, val_present, annots_val, cats,
                      n, e, seed, work, overrides)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"world": str(args.world), "tokenizer": tok_dir, "load_seconds": round(load_s, 1),
              "runs": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
