"""Tiny saved models for tests (import as ``from _tiny import build_tiny_llava_dir``).

Each builder returns a fresh copy under the caller's ``tmp_path`` (safe to modify), made from a
per-process cache so the models are built once. All share one locally trained tokenizer. The
LLaVA's vision tower is a copy of the tiny CLIP's vision model (as in the micro-world), so
``build_tiny_clip_dir`` is its exact FiSAO verifier.

Real file formats, for the real-model path: ``build_llava15_hf_dir`` (llava-hf's llava-1.5
layout) and its verifier ``build_openai_clip_dir`` (openai's CLIP layout), ``build_coco_root``
(a COCO directory as the COCO site ships it) and ``build_instruct_file`` (LLaVA-Instruct /
mix665k records over that root).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from PIL import Image

CORPUS = [
    "USER: What is in the image? ASSISTANT: There is a red ball and a blue cube.",
    "A small green tree stands next to a yellow car on the left of the picture.",
    "Is there a dog in the image? Yes, there is a dog. No, there is no cat.",
    "Describe the image in detail. The large red ball is on the right of the blue cube.",
    "How many balls are there? There are two balls. What color is the car? The car is yellow.",
    "A person is sitting on a chair near the table with a cup and a book.",
]
VOCAB_SIZE = 400
_CACHE: dict[str, Path] = {}
_ROOT: list[Path] = []


def _root() -> Path:
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="visalign-tiny-")))
        atexit.register(shutil.rmtree, _ROOT[0], True)
    return _ROOT[0]


def tiny_tokenizer():
    """The shared test tokenizer (trained once per process, a fresh copy each call)."""
    from transformers import AutoTokenizer

    from visalign.models.tokenizer import train_tokenizer

    if "tokenizer" not in _CACHE:
        path = _root() / "tokenizer"
        train_tokenizer(CORPUS * 20, VOCAB_SIZE).save_pretrained(path)
        _CACHE["tokenizer"] = path
    return AutoTokenizer.from_pretrained(_CACHE["tokenizer"])


def _cached(kind: str) -> Path:
    from visalign.models.tiny import build_tiny_clip, build_tiny_llava, build_tiny_qwen2vl

    if kind not in _CACHE:
        path = _root() / kind
        if kind == "clip":
            build_tiny_clip(path, tiny_tokenizer())
        elif kind == "llava":
            build_tiny_llava(path, tiny_tokenizer(), clip_dir=_cached("clip"), text_hidden=64,
                             text_layers=2)
        elif kind == "qwen2vl":
            build_tiny_qwen2vl(path, tiny_tokenizer())
        _CACHE[kind] = path
    return _CACHE[kind]


def _copy(kind: str, tmp_path: Path) -> Path:
    dst = Path(tmp_path) / f"tiny_{kind}"
    if not dst.exists():
        shutil.copytree(_cached(kind), dst)
    return dst


def build_tiny_llava_dir(tmp_path: Path) -> Path:
    """A tiny LlavaForConditionalGeneration dir (64x64 images, patch 8 -> 64 image tokens)."""
    return _copy("llava", tmp_path)


def build_tiny_qwen2vl_dir(tmp_path: Path) -> Path:
    """A tiny Qwen2VLForConditionalGeneration dir (64x64 images -> 16 merged image tokens)."""
    return _copy("qwen2vl", tmp_path)


def build_tiny_clip_dir(tmp_path: Path) -> Path:
    """The tiny CLIPModel dir whose vision model is the tiny LLaVA's vision tower."""
    return _copy("clip", tmp_path)


def solid_images(n: int, size: int = 64) -> list[Image.Image]:
    """``n`` distinct solid-colour RGB images."""
    colors = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 230, 40), (120, 60, 20),
              (250, 250, 250), (10, 10, 10), (200, 100, 200)]
    return [Image.new("RGB", (size, size), colors[i % len(colors)]) for i in range(n)]


# -- real file formats: llava-hf's llava-1.5, openai's CLIP, a COCO root, LLaVA-Instruct ------
# llava-hf/llava-1.5-7b-hf's chat template (its chat_template.json): no "</s>" after an answer.
LLAVA_HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# The tiny llava-1.5: 56x56 images, patch 14 (as ViT-L/14) -> 16 image tokens ("default"
# strategy: the CLS token dropped), vision features from the second-to-last layer.
LLAVA15_IMAGE, LLAVA15_PATCH = 56, 14
LLAVA15_IMAGE_TOKENS = (LLAVA15_IMAGE // LLAVA15_PATCH) ** 2


def _write_json(path: Path, obj) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _build_openai_clip(path: Path) -> None:
    """A tiny CLIP saved as openai/clip-vit-large-patch14-336 ships: an old-style config whose
    ``text_config``/``vision_config`` hold stale defaults that ``*_config_dict`` override,
    fp32 ``model.safetensors`` with the old persistent ``position_ids`` buffers, and a
    ``CLIPFeatureExtractor`` preprocessor config with integer sizes (no processor_config.json)."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    from visalign.models.tiny import _clip_tokenizer

    tok = tiny_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<pad>")}
    text = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                projection_dim=32, vocab_size=len(tok), max_position_embeddings=77,
                bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"])
    vision = dict(hidden_size=32, image_size=LLAVA15_IMAGE, intermediate_size=64,
                  num_attention_heads=4, num_hidden_layers=3, patch_size=LLAVA15_PATCH,
                  projection_dim=32)
    torch.manual_seed(1)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)).eval()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    n_text, n_pos = 77, (LLAVA15_IMAGE // LLAVA15_PATCH) ** 2 + 1
    state["text_model.embeddings.position_ids"] = torch.arange(n_text)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(n_pos)[None]
    path.mkdir(parents=True)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    stale = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                 num_hidden_layers=12, projection_dim=512, vocab_size=49408)
    _write_json(path / "config.json", {
        "_name_or_path": "openai/clip-vit-large-patch14-336", "architectures": ["CLIPModel"],
        "initializer_factor": 1.0, "logit_scale_init_value": 2.6592, "model_type": "clip",
        "projection_dim": 32,
        "text_config": {**stale, "model_type": "clip_text_model", "max_position_embeddings": 77},
        "text_config_dict": text,
        "torch_dtype": "float32", "transformers_version": None,
        "vision_config": {**stale, "image_size": 224, "patch_size": 32,
                          "model_type": "clip_vision_model"},
        "vision_config_dict": vision,
    })
    _write_json(path / "preprocessor_config.json", {
        "crop_size": LLAVA15_IMAGE, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3, "size": LLAVA15_IMAGE})
    clip_tok = _clip_tokenizer(tok, 77)
    clip_tok.chat_template = None
    clip_tok.save_pretrained(path)


# llava-hf's names for what transformers 5 calls model.language_model / model.vision_tower / ...
_LLAVA_HF_NAMES = (("model.language_model.", "language_model.model."),
                   ("lm_head.", "language_model.lm_head."),
                   ("model.vision_tower.", "vision_tower.vision_model."),
                   ("model.multi_modal_projector.", "multi_modal_projector."))


def _build_llava15_hf(path: Path, clip_dir: Path) -> None:
    """A tiny llava-1.5 saved as llava-hf/llava-1.5-7b-hf ships (its vision tower is the CLIP
    in ``clip_dir``): old key names, fp16 weights in two shards with an index, a hand-written
    transformers-4.36-style config, chat_template.json, processor_config.json with
    ``num_additional_image_tokens: 1`` and the ``default`` feature strategy."""
    import torch
    from safetensors.torch import save_file
    from transformers import (CLIPModel, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)

    tok = tiny_tokenizer()
    tid = tok.convert_tokens_to_ids
    clip = CLIPModel.from_pretrained(str(clip_dir))
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                rms_norm_eps=1e-05, vocab_size=len(tok))
    vision = {k: getattr(clip.config.vision_config, k) for k in (
        "hidden_size", "image_size", "intermediate_size", "num_attention_heads",
        "num_hidden_layers", "patch_size", "projection_dim")}
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**vision),
                      text_config=LlamaConfig(**text, pad_token_id=tid("<pad>")),
                      image_token_index=tid("<image>"), vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu",
                      image_seq_length=LLAVA15_IMAGE_TOKENS)
    torch.manual_seed(2)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict(), strict=True)
    state = {}
    for k, v in model.state_dict().items():
        for new, old in _LLAVA_HF_NAMES:
            if k.startswith(new):
                k = old + k[len(new):]
                break
        else:
            raise AssertionError(f"unmapped key {k}")
        state[k] = v.detach().to(torch.float16).contiguous()
    path.mkdir(parents=True)
    names = sorted(state)
    shards = [n for n in names if n.startswith("language_model.")], \
        [n for n in names if not n.startswith("language_model.")]
    weight_map, total = {}, 0
    for i, keys in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k] for k in keys}, str(path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
        total += sum(state[k].numel() * state[k].element_size() for k in keys)
    _write_json(path / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_json(path / "config.json", {
        "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100,
        "image_token_index": tid("<image>"), "model_type": "llava",
        "pad_token_id": tid("<pad>"), "projector_hidden_act": "gelu",
        "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5",
                        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                        "torch_dtype": "float16", **text},
        "tie_word_embeddings": False, "torch_dtype": "float16",
        "transformers_version": "4.36.0.dev0",
        "vision_config": {"model_type": "clip_vision_model", "vocab_size": 32000, **vision},
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "vocab_size": len(tok)})
    _write_json(path / "generation_config.json", {
        "_from_model_config": True, "bos_token_id": tid("<s>"), "eos_token_id": tid("</s>"),
        "pad_token_id": tid("<pad>"), "transformers_version": "4.36.0.dev0"})
    _write_json(path / "preprocessor_config.json", {
        "crop_size": {"height": LLAVA15_IMAGE, "width": LLAVA15_IMAGE}, "do_center_crop": True,
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": CLIP_MEAN, "image_processor_type": "CLIPImageProcessor",
        "image_std": CLIP_STD, "processor_class": "LlavaProcessor", "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": LLAVA15_IMAGE}})
    _write_json(path / "processor_config.json", {
        "image_token": "<image>", "num_additional_image_tokens": 1,
        "patch_size": LLAVA15_PATCH, "processor_class": "LlavaProcessor",
        "vision_feature_select_strategy": "default"})
    _write_json(path / "chat_template.json", {"chat_template": LLAVA_HF_CHAT_TEMPLATE})
    tok.chat_template = None
    tok.padding_side = "left"
    tok.save_pretrained(path)


def _cached_real(kind: str) -> Path:
    if kind not in _CACHE:
        path = _root() / kind
        if kind == "openai_clip":
            _build_openai_clip(path)
        elif kind == "llava15_hf":
            _build_llava15_hf(path, _cached_real("openai_clip"))
        _CACHE[kind] = path
    return _CACHE[kind]


def build_openai_clip_dir(tmp_path: Path) -> Path:
    """The tiny llava-1.5's verifier: a CLIP in openai/clip-vit-large-patch14-336's file format
    whose vision model is that llava's vision tower."""
    dst = Path(tmp_path) / "openai_clip"
    if not dst.exists():
        shutil.copytree(_cached_real("openai_clip"), dst)
    return dst


def build_llava15_hf_dir(tmp_path: Path) -> Path:
    """A tiny llava-1.5 in llava-hf/llava-1.5-7b-hf's file format (see ``_build_llava15_hf``);
    its verifier is :func:`build_openai_clip_dir`. The tokenizer is the shared test BPE (the
    real one is Llama's SentencePiece) with the same special tokens."""
    dst = Path(tmp_path) / "llava15_hf"
    if not dst.exists():
        shutil.copytree(_cached_real("llava15_hf"), dst)
    return dst


# COCO category ids are the real ones (person 1, car 3, cat 17, dog 18, cup 47, chair 62, ...).
COCO_CATEGORIES = [(1, "person", "person"), (3, "car", "vehicle"), (17, "cat", "animal"),
                   (18, "dog", "animal"), (47, "cup", "kitchen"), (62, "chair", "furniture"),
                   (67, "dining table", "furniture")]
# split -> {image id: (objects, captions)}
COCO_IMAGES = {
    "train2017": {9: (["person", "dog", "dog"], ["A man walks two dogs.", "A person and dogs."]),
                  25: (["cat", "chair"], ["A cat sits on a chair."]),
                  30: (["car", "person"], ["A person next to a car."]),
                  34: (["cup", "dining table"], ["A cup on a table."])},
    "val2014": {42: (["dog", "chair"], ["A dog under a chair."]),
                73: (["person", "cup", "dining table"], ["A woman holds a cup at a table."]),
                74: (["car"], ["A red car parked on the street."])},
}


def build_coco_root(tmp_path: Path, splits: tuple[str, ...] = ("train2017", "val2014")) -> Path:
    """A COCO root as the COCO site ships it, tiny: ``annotations/{instances,captions}_{split}
    .json`` with the real schemas (info, licenses, images with file_name/height/width/...,
    annotations with segmentation/area/iscrowd/bbox, categories with supercategory) and
    ``{split}/`` folders of small JPEGs named as COCO names them (``000000000009.jpg`` for 2017,
    ``COCO_val2014_000000000042.jpg`` for 2014). Images and objects: :data:`COCO_IMAGES`."""
    root = Path(tmp_path) / "coco"
    cats = [{"supercategory": s, "id": i, "name": n} for i, n, s in COCO_CATEGORIES]
    cat_id = {n: i for i, n, _ in COCO_CATEGORIES}
    colours = solid_images(8, 48)
    ann_id = 1
    for split in splits:
        images, objects, captions = [], [], []
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for k, (image_id, (objs, caps)) in enumerate(COCO_IMAGES[split].items()):
            name = (f"{image_id:012d}.jpg" if split.endswith("2017")
                    else f"COCO_{split}_{image_id:012d}.jpg")
            colours[k % len(colours)].resize((64, 48)).save(folder / name, "JPEG")
            images.append({"license": 1, "file_name": name,
                           "coco_url": f"http://images.cocodataset.org/{split}/{name}",
                           "height": 48, "width": 64, "date_captured": "2013-11-14 16:28:13",
                           "flickr_url": "", "id": image_id})
            for j, o in enumerate(objs):
                x, y = 4 + 10 * j, 6
                objects.append({"segmentation": [[x, y, x + 8, y, x + 8, y + 9, x, y + 9]],
                                "area": 72.0, "iscrowd": 0, "image_id": image_id,
                                "bbox": [x, y, 8.0, 9.0], "category_id": cat_id[o],
                                "id": ann_id})
                ann_id += 1
            for c in caps:
                captions.append({"image_id": image_id, "id": ann_id, "caption": c})
                ann_id += 1
        head = {"info": {"description": "COCO 2014/2017 Dataset (tiny test copy)",
                         "year": int(split[-4:])},
                "licenses": [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 1,
                              "name": "Attribution License"}], "images": images}
        _write_json(root / "annotations" / f"instances_{split}.json",
                    {**head, "annotations": objects, "categories": cats})
        _write_json(root / "annotations" / f"captions_{split}.json",
                    {**head, "annotations": captions})
    return root


def _turns(*pairs: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(pairs)]


def build_instruct_file(tmp_path: Path, coco_root: Path | None = None,
                        kind: str = "llava_v1_5_mix665k") -> Path:
    """An instruction file laid out as LLaVA ships it, over :func:`build_coco_root`'s train2017
    images (built under ``tmp_path`` unless ``coco_root`` is given).

    ``kind="llava_instruct_150k"``: bare COCO file names (``000000000009.jpg``, relative to
    ``COCO/train2017``), no ``task`` or ``image_id``, one id shared by an image's conversation,
    detail description and complex-reasoning records. ``kind="llava_v1_5_mix665k"`` (default):
    the same records with ``coco/train2017/...`` paths, plus LLaVA-1.5's short-answer VQA
    records, an OCR-VQA record (not a COCO image) and two text-only ShareGPT records; the
    file's folder holds ``coco -> COCO root`` and ``ocr_vqa/images/`` so paths resolve from it.
    """
    import json

    if kind not in ("llava_instruct_150k", "llava_v1_5_mix665k"):
        raise ValueError(kind)
    coco_root = Path(coco_root) if coco_root else build_coco_root(tmp_path)
    mix = kind == "llava_v1_5_mix665k"
    folder = Path(tmp_path) / kind
    folder.mkdir(parents=True, exist_ok=True)

    def img(i: int) -> str:
        return f"coco/train2017/{i:012d}.jpg" if mix else f"{i:012d}.jpg"

    recs = [
        {"id": "000000000009", "image": img(9), "conversations": _turns(
            "What are the people doing?\n<image>", "A man is walking two dogs.",
            "How many dogs are there?", "There are two dogs.",
            "Is the man holding a leash?", "Yes, he holds the leashes.")},
        {"id": "000000000009", "image": img(9), "conversations": _turns(
            "What do you see happening in this image?\n<image>",
            "A man walks two dogs along a path. Both dogs are on leashes.")},
        {"id": "000000000009", "image": img(9), "conversations": _turns(
            "<image>\nWhy might the man be walking the dogs?",
            "He is probably exercising them; dogs need daily walks.")},
        {"id": "000000000025", "image": img(25), "conversations": _turns(
            "<image>\nWhat is this photo about'?", "A cat is sitting on a wooden chair.")},
        {"id": "000000000025", "image": img(25), "conversations": _turns(
            "Is there a dog in the image?\n<image>", "No, there is no dog in the image.")},
        {"id": "000000000030", "image": img(30), "conversations": _turns(
            "<image>\nDescribe the following image in detail.",
            "A person stands next to a parked car on a street.")},
    ]
    if mix:
        ocr = folder / "ocr_vqa" / "images" / "0140449132.jpg"
        ocr.parent.mkdir(parents=True, exist_ok=True)
        solid_images(1, 48)[0].save(ocr, "JPEG")
        link = folder / "coco"
        if not link.exists():
            link.symlink_to(coco_root.resolve(), target_is_directory=True)
        recs[3:3] = [{"id": "i6IyJda_0", "model": "", "conversations": _turns(
            "What is a good name for a cat?", "Whiskers is a classic name.")}]
        recs += [
            {"id": "000000000034", "image": img(34), "conversations": _turns(
                "<image>\nWhat is on the table?\nAnswer the question using a single word or "
                "phrase.", "Cup", "What color is the cup?\nAnswer the question using a single "
                "word or phrase.", "White")},
            {"id": "0140449132", "image": "ocr_vqa/images/0140449132.jpg",
             "conversations": _turns(
                 "<image>\nWho wrote this book?\nAnswer the question using a single word or "
                 "phrase.", "Homer", "Is this book related to History?", "Yes")},
            {"id": "wFkYeVo_12", "model": "", "conversations": _turns(
                "Tell me a joke.", "Why did the chicken cross the road?")},
        ]
    path = folder / f"{kind}.json"
    path.write_text(json.dumps(recs, indent=2) + "\n")
    return path


def add_train2014_annotations(root: Path) -> None:
    """COCO 2014's train annotations for a root built with train2017 ones: the same images under
    the same ids with 2014 file names (as in the real release). The CHAIR references take their
    ground truth from 2014 train + val, so a grid's COCO root needs them."""
    import json

    ann = Path(root) / "annotations"
    for kind in ("instances", "captions"):
        data = json.loads((ann / f"{kind}_train2017.json").read_text())
        for im in data["images"]:
            im["file_name"] = f"COCO_train2014_{im['id']:012d}.jpg"
        _write_json(ann / f"{kind}_train2014.json", data)


def build_real_grid_data(tmp_path: Path, n_train: int = 28, n_val: int = 10,
                         seed: int = 0) -> tuple[Path, Path]:
    """(COCO root, llava_instruct_150k.json) big enough for the real-data grid on a tiny model:
    ``n_train`` train2017 and ``n_val`` val2014 images, each with 1-3 COCO objects and captions
    naming them, in the COCO site's layout and schemas; per train image LLaVA-Instruct's three
    record types under one shared id (conversation, detail description, complex reasoning) plus a
    LLaVA-1.5 short-answer question, with bare COCO file names and no task or image_id."""
    import json
    import random

    rng = random.Random(seed)
    root = Path(tmp_path) / "coco_grid"
    cats = [{"supercategory": s, "id": i, "name": n} for i, n, s in COCO_CATEGORIES]
    names = [n for _, n, _ in COCO_CATEGORIES]
    colours = solid_images(8, 48)
    ann_id, recs = 1, []
    for split, n, first in (("train2017", n_train, 100), ("val2014", n_val, 500)):
        images, objects, captions = [], [], []
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            image_id = first + k
            name = (f"{image_id:012d}.jpg" if split.endswith("2017")
                    else f"COCO_{split}_{image_id:012d}.jpg")
            colours[k % len(colours)].resize((64, 48)).save(folder / name, "JPEG")
            images.append({"license": 1, "file_name": name, "height": 48, "width": 64,
                           "coco_url": "", "flickr_url": "", "date_captured": "", "id": image_id})
            # val images hold 3 objects each: POPE asks about 3 present and 3 absent ones
            objs = rng.sample(names, 3 if split == "val2014" else rng.randint(1, 3))
            for j, o in enumerate(objs):
                x = 4 + 12 * j
                objects.append({"segmentation": [[x, 6, x + 8, 6, x + 8, 15, x, 15]],
                                "area": 72.0, "iscrowd": 0, "image_id": image_id,
                                "bbox": [x, 6, 8.0, 9.0],
                                "category_id": COCO_CATEGORIES[names.index(o)][0], "id": ann_id})
                ann_id += 1
            text = " and ".join(f"a {o}" for o in objs)
            for c in (f"A photo of {text}.", f"There is {text} in the picture."):
                captions.append({"image_id": image_id, "id": ann_id, "caption": c})
                ann_id += 1
            if split == "train2017":
                rid = f"{image_id:012d}"
                recs += [
                    {"id": rid, "image": name, "conversations": _turns(
                        "What objects are in the image?\n<image>", f"I can see {text}.",
                        f"Is there a {objs[0]}?", f"Yes, there is a {objs[0]}.")},
                    {"id": rid, "image": name, "conversations": _turns(
                        "<image>\nDescribe the following image in detail.",
                        f"The image shows {text} on a plain background.")},
                    {"id": rid, "image": name, "conversations": _turns(
                        f"<image>\nWhy might the {objs[0]} be there?",
                        f"The {objs[0]} is probably part of the scene.")},
                    {"id": rid, "image": name, "conversations": _turns(
                        "<image>\nWhat is in the image?\nAnswer the question using a single "
                        "word or phrase.", objs[0].capitalize())},
                ]
        head = {"info": {"description": "COCO (tiny test copy)", "year": int(split[-4:])},
                "licenses": [{"url": "", "id": 1, "name": "Attribution License"}],
                "images": images}
        _write_json(root / "annotations" / f"instances_{split}.json",
                    {**head, "annotations": objects, "categories": cats})
        _write_json(root / "annotations" / f"captions_{split}.json",
                    {**head, "annotations": captions})
    add_train2014_annotations(root)
    instruct = Path(tmp_path) / "llava_instruct_150k.json"
    instruct.write_text(json.dumps(recs, indent=1) + "\n")
    return root, instruct


def write_calibration(verifier: Path, path: Path) -> float:
    """A token-level FiSAO calibration on ``verifier``'s score scale at ``path`` (a random tiny
    model names too few objects to calibrate on; a real one does); returns the scale."""
    from visalign.verifier.reward import Calibration
    from visalign.verifier.scorer import ClipScorer

    scale = ClipScorer.from_pretrained(str(verifier)).scale
    Calibration(mu_gt=0.3 * scale, mu_hal=0.1 * scale, s_min=-scale, s_max=scale,
                scale=scale).to_json(path)
    return scale
