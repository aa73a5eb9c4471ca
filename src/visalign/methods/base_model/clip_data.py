"""What the base model's tokenizer and CLIP train on: the world's texts, and images paired with
captions and object phrases (with per-patch object labels for the dense term)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visalign.methods.base_model.config import PATCH_SIZE


def tokenizer_texts(world: Any) -> list[str]:
    from visalign.data.llava import load_llava_records
    from visalign.data.coco import load_coco_captions

    texts = []
    for r in load_llava_records(world.llava_path("train")):
        texts += [t["value"].replace("<image>", "") for t in r["conversations"]]
    for caps in load_coco_captions(world.captions_path("train")).values():
        texts += caps
    for words in synonym_table(world).values():
        texts += [f"a photo of a {w}." for w in words]
    return texts


def synonym_table(world: Any) -> dict[str, list[str]]:
    """Category name -> its surface words (name first), from the world's CHAIR synonyms file."""
    syn = {}
    for line in Path(world.synonyms_path).read_text().splitlines():
        words = [w.strip() for w in line.split(",") if w.strip()]
        if words:
            syn[words[0]] = words
    return syn


def clip_examples(world: Any, split: str, categories: list[str] | None = None,
                   patch_size: int = PATCH_SIZE) -> tuple[list, list[set[str]]]:
    """CLIP training examples of a split (with per-patch labels over ``categories`` if given)
    and the set of object names present in each image."""
    from PIL import Image

    from visalign.data.coco import load_coco_captions, load_coco_instances
    from visalign.methods.base_model.clip_train import ClipExample, patch_labels

    coco = load_coco_instances(world.instances_path(split))
    caps = load_coco_captions(world.captions_path(split))
    syn = synonym_table(world)
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    examples, present = [], []
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        names = sorted({cats[a["category_id"]] for a in anns})
        image = Image.open(Path(world.image_root) / info["file_name"]).convert("RGB")
        labels = None
        if categories:
            labels = patch_labels([(*a["bbox"], categories.index(cats[a["category_id"]]))
                                   for a in anns], world.image_size, patch_size)
        examples.append(ClipExample(image, caps.get(img_id, []) or [" "],
                                    [(n, syn.get(n, [n])) for n in names], labels))
        present.append(set(names))
    return examples, present


def generated_clip_examples(world: Any, start: int, n: int,
                             categories: list[str] | None = None,
                             patch_size: int = PATCH_SIZE) -> list:
    """``n`` more CLIP examples drawn in memory from the world's training distribution: train
    items ``start ..`` (``world.build.generate_scenes``), exactly the images and captions a
    world built with a larger ``n_train`` would hold. Nothing is written."""
    from visalign.world.build import generate_scenes
    from visalign.methods.base_model.clip_train import ClipExample, patch_labels

    syn = synonym_table(world)
    out = []
    for scene, image, caps in generate_scenes(world.config, world.vocab, world.train_split,
                                              start, n):
        names = sorted(scene.present())
        labels = None
        if categories:
            labels = patch_labels([(*o.bbox, categories.index(o.category))
                                   for o in scene.objects], world.image_size, patch_size)
        out.append(ClipExample(image, caps or [" "], [(c, syn.get(c, [c])) for c in names],
                               labels))
    return out


def clip_training_examples(world: Any, images: int, categories: list[str] | None = None,
                           patch_size: int = PATCH_SIZE) -> list:
    """The CLIP's training examples: the world's training split, then (when ``images`` is
    larger) generated items of the same distribution up to ``images`` in all."""
    examples, _ = clip_examples(world, world.train_split, categories, patch_size)
    if images > len(examples):
        examples += generated_clip_examples(world, len(examples), images - len(examples),
                                             categories, patch_size)
    return examples
