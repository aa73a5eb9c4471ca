"""Build a micro-world directory: ``build_world(cfg, out_dir)``; find its files: ``load_world``.

Splits: ``train`` (base-model training; also the alignment-data pool and calibration set; the
only split with text defects), ``val`` (held out, clean: evaluation) and an optional clean
``test`` (``n_test > 0``). Image ids are ``offset + index + 1`` with offsets train 0, val 800000,
test 900000, so ids are unique across splits and a split's ids do not move when another split
changes size.

Determinism: every image draws from its own generators seeded by ``(seed, split, index,
stream)``: stream 0 = scene, 1 = pixels, and string-seeded ``random.Random`` for captions and
records. So the same config gives byte-identical files, and changing a text knob
(``hallucination_rate``...) leaves every image and instance annotation unchanged (reference
captions change only with the knobs captions use, e.g. ``synonym_prob``).

Presets (``PRESETS``): ``small`` (default) 3000 train + 500 val images; ``tiny`` (tests) 120 train
+ 40 val.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from visalign import __version__
from visalign.config import ConfigError, config_to_dict, field, load_config, save_run_config
from visalign.io import DataError, atomic_write_text, read_json, write_json, write_jsonl
from visalign.world import export
from visalign.world.render import png_bytes, render_scene
from visalign.world.scenes import SceneParams, sample_scene, theme_probs
from visalign.world.text import TextGen, TextParams
from visalign.world.vocab import REGIONS, RELATIONS, SIZES, Vocab, default_vocab

SPLITS = ("train", "val", "test")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
ID_OFFSETS = {"train": 0, "val": 800_000, "test": 900_000}
DEFECT_SPLITS = ("train",)   # held-out splits are always clean
WORLD_FORMAT = "visalign-world/1"


@dataclass
class WorldConfig:
    """Everything that determines a micro-world (with ``seed``, byte for byte)."""

    seed: int = field(0, help="master seed")
    image_size: int = field(64, help="image side in pixels (object sizes scale with it)")
    n_train: int = field(3000, help="training images (base model, alignment pool)")
    n_val: int = field(500, help="held-out clean evaluation images")
    n_test: int = field(0, help="optional second held-out clean split (0 = none)")
    # scenes
    distinct_count_weights: list[float] = field(
        [0.15, 0.3, 0.3, 0.17, 0.08], help="P(1..K distinct categories per image)")
    max_objects: int = field(6, help="max instances per image (with duplicates)")
    in_theme_prob: float = field(0.85, help="share of objects drawn from the scene's theme")
    zipf_exponent: float = field(1.0, help="frequency skew within a theme (rank r: 1/(r+1)^s)")
    duplicate_prob: float = field(0.3, help="P(one category gets 1-2 extra instances)")
    duplicate_same_color_prob: float = field(0.6, help="P(an extra instance keeps the colour)")
    small_object_prob: float = field(0.3, help="share of instances drawn small")
    color_prior_prob: float = field(0.5, help="P(an object has its category's usual colour)")
    large_size_min: int = field(14, help="large object side, px at 64 px images")
    large_size_max: int = field(22, help="large object side, upper bound")
    small_size_min: int = field(5, help="small object side, px at 64 px images")
    small_size_max: int = field(8, help="small object side, upper bound")
    max_overlap: float = field(0.15, help="max box overlap as a fraction of the smaller box")
    # rendering
    background_noise: float = field(5.0, help="per-pixel Gaussian noise std on backgrounds")
    texture_strength: float = field(12.0, help="background texture contrast")
    # text
    captions_per_image: int = field(5, help="reference captions per image")
    synonym_prob: float = field(0.2, help="P(a mention uses a synonym)")
    hallucination_rate: float = field(
        0.3, help="train only: share of detail descriptions that mention an absent object")
    hallucination_sharpness: float = field(
        1.5, help="power on co-occurrence weights when picking the absent object (0 = uniform "
                  "over the absent categories)")
    omit_small_rate: float = field(
        0.5, help="train only: P(a small-only category is left out of a description)")
    # 'category': with it (and 3 stage-2 epochs) the base reaches the micro-world's quality
    # targets; by salience it named too few objects (recall 39 %) (docs/research/base-recall.md)
    description_order: str = field(
        "category", help="object order in detail descriptions: 'category' (the vocabulary's "
        "fixed category order, home themes in blocks: which object comes next depends mostly "
        "on which came last), "
        "'salience' (largest first, the first worlds' order), 'reading' (top-left to "
        "bottom-right, the order of the image tokens) or 'rank' (a fixed order with the themes "
        "interleaved, see Vocab.order_keys)")
    existence_adversarial_prob: float = field(
        0.3, help="share of 'no' existence questions about co-occurring absent objects")
    detail_per_image: int = field(1, help="instruction records per image, by task")
    caption_per_image: int = field(1, help="short-caption records (projector pre-training)")
    existence_per_image: int = field(2, help="balanced yes/no")
    count_per_image: int = field(1, help="'how many X' records")
    color_per_image: int = field(1, help="'what color is the X' records")
    position_per_image: int = field(1, help="where-is / relation yes-no records")
    vqa_per_image: int = field(1, help="short-answer (single word/phrase) records")
    eval_prompt: str = field("Describe this image in detail.", help="prompt in prompts/*.jsonl")

    def __post_init__(self) -> None:
        probs = ["in_theme_prob", "duplicate_prob", "duplicate_same_color_prob",
                 "small_object_prob", "color_prior_prob", "synonym_prob", "hallucination_rate",
                 "omit_small_rate", "existence_adversarial_prob"]
        for name in probs:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name}: {v} is not a probability in [0, 1]")
        if self.hallucination_sharpness < 0:
            # a negative power turns zero co-occurrence weights into infinities and the pick
            # silently lands on one category
            raise ConfigError(f"hallucination_sharpness: {self.hallucination_sharpness} is "
                              "negative (0 = uniform over absent categories)")
        if self.image_size < 16:
            raise ConfigError(f"image_size: {self.image_size} is below 16")
        if self.n_train < 0 or self.n_val < 0 or self.n_test < 0:
            raise ConfigError("n_train, n_val, n_test must be >= 0")
        if self.n_train >= ID_OFFSETS["val"] or max(self.n_val, self.n_test) >= 100_000:
            raise ConfigError("split too large for the image id offsets")
        if not self.distinct_count_weights or any(w < 0 for w in self.distinct_count_weights) \
                or sum(self.distinct_count_weights) <= 0:
            raise ConfigError("distinct_count_weights: need non-negative weights, sum > 0")
        if not 1 <= len(self.distinct_count_weights) <= self.max_objects:
            raise ConfigError("distinct_count_weights: length must be in 1..max_objects")
        for lo, hi in (("large_size_min", "large_size_max"), ("small_size_min", "small_size_max")):
            a, b = getattr(self, lo), getattr(self, hi)
            if not 2 <= a <= b <= 60:
                raise ConfigError(f"{lo}/{hi}: need 2 <= {a} <= {b} <= 60")
        if self.description_order not in ("salience", "reading", "category", "rank"):
            raise ConfigError(f"description_order: {self.description_order!r} is not "
                              "'salience', 'reading', 'category' or 'rank'")
        if self.captions_per_image < 1:
            raise ConfigError("captions_per_image must be >= 1")

    # views for the pieces
    def scene_params(self) -> SceneParams:
        return SceneParams(
            image_size=self.image_size,
            distinct_count_weights=tuple(self.distinct_count_weights),
            max_objects=self.max_objects, in_theme_prob=self.in_theme_prob,
            zipf_exponent=self.zipf_exponent, duplicate_prob=self.duplicate_prob,
            duplicate_same_color_prob=self.duplicate_same_color_prob,
            small_object_prob=self.small_object_prob, color_prior_prob=self.color_prior_prob,
            large_size=(self.large_size_min, self.large_size_max),
            small_size=(self.small_size_min, self.small_size_max),
            max_overlap=self.max_overlap)

    def text_params(self) -> TextParams:
        names = {f.name for f in dataclasses.fields(TextParams)}
        return TextParams(**{k: v for k, v in config_to_dict(self).items() if k in names})

    def split_sizes(self) -> dict[str, int]:
        return {s: n for s, n in zip(SPLITS, (self.n_train, self.n_val, self.n_test)) if n > 0}


PRESETS: dict[str, dict[str, Any]] = {
    "small": {"n_train": 3000, "n_val": 500},
    "tiny": {"n_train": 120, "n_val": 40},
}


def world_config(preset: str = "small", config_path: str | Path | None = None,
                 overrides: list[str] | dict = (), seed: int | None = None) -> WorldConfig:
    """Preset values, then a YAML file, then ``key=value`` overrides, then ``seed``."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = load_config(WorldConfig, config_path, overrides, base=WorldConfig(**PRESETS[preset]))
    return dataclasses.replace(cfg, seed=seed) if seed is not None else cfg


def image_id_for(split: str, index: int) -> int:
    return ID_OFFSETS[split] + index + 1


# -- World: find the files of a built world ---------------------------------------------------
@dataclass(frozen=True)
class World:
    """A built world directory and its ``world.json``; path helpers for every file. A
    :class:`visalign.data.source.DataSource`."""

    root: Path
    meta: dict = dataclasses.field(repr=False, compare=False)

    @cached_property
    def vocab(self) -> Vocab:
        return Vocab.from_dict(self.meta["vocab"])

    @cached_property
    def config(self) -> WorldConfig:
        return load_config(WorldConfig, overrides=self.meta["config"])

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    @property
    def categories(self) -> list[str]:
        return self.vocab.names

    @property
    def image_size(self) -> int:
        return int(self.meta["config"]["image_size"])

    @property
    def train_split(self) -> str:
        """The split with defects: base training, alignment pool, calibration."""
        return "train"

    @property
    def eval_split(self) -> str:
        """The held-out clean split used for evaluation (``val``)."""
        held = [s for s in self.splits if s not in DEFECT_SPLITS]
        if not held:
            raise KeyError(f"world {self.root} has no held-out split (n_val = 0)")
        return "val" if "val" in held else held[0]

    @property
    def image_root(self) -> Path:
        return self.root / "images"

    @property
    def synonyms_path(self) -> Path:
        return self.root / "synonyms.txt"

    @property
    def meta_path(self) -> Path:
        return self.root / "world.json"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def _check(self, split: str) -> str:
        if split not in self.meta["splits"]:
            raise KeyError(f"world {self.root} has no split {split!r} (has {self.splits})")
        return split

    def instances_path(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{self._check(split)}.json"

    def captions_path(self, split: str) -> Path:
        return self.root / "annotations" / f"captions_{self._check(split)}.json"

    def llava_path(self, split: str) -> Path:
        return self.root / "llava" / f"{self._check(split)}.json"

    def prompts_path(self, split: str) -> Path:
        return self.root / "prompts" / f"{self._check(split)}_detail.jsonl"

    def image_dir(self, split: str) -> Path:
        """Where the split's COCO ``file_name`` starts (it includes the split's folder)."""
        self._check(split)
        return self.image_root

    def image_path(self, split: str, image_id: int) -> Path:
        return self.image_root / export.image_rel_path(self._check(split), image_id)

    def train_image_ids(self) -> list[int]:
        """Every image of the train split, sorted (the data-source interface's alignment pool)."""
        from visalign.data.coco import load_coco_instances

        return sorted(load_coco_instances(self.instances_path(self.train_split)).getImgIds())


def load_world(root: str | os.PathLike) -> World:
    """Open a world built by :func:`build_world` (reads ``world.json``)."""
    root = Path(root)
    meta_path = root / "world.json"
    if not meta_path.exists():
        raise DataError(meta_path, "not a visalign world directory (world.json missing); "
                                   "build one with `visalign world build --out DIR`")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != WORLD_FORMAT:
        raise DataError(meta_path, f"expected format {WORLD_FORMAT!r}", field="format")
    for key in ("splits", "vocab", "config"):
        if key not in meta:
            raise DataError(meta_path, "missing key", field=key)
    return World(root=root, meta=meta)


# -- build ------------------------------------------------------------------------------------
def build_world(cfg: WorldConfig, out_dir: str | os.PathLike, *, overwrite: bool = False,
                preset: str | None = None, vocab: Vocab | None = None,
                progress: bool = False) -> dict:
    """Generate the world into ``out_dir``; returns the summary (also in ``world.json``).

    The world is written into a sibling temp directory and renamed into place at the end, so
    an interrupted build never leaves a half-written world. ``out_dir`` must not exist or be
    empty, unless ``overwrite``.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"{out}: output exists and is not empty (pass overwrite / --force)")
    vocab = vocab or default_vocab()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        summary = _build_into(cfg, tmp, vocab, preset, progress)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _replace_dir(src: Path, dst: Path) -> None:
    if dst.exists() and dst.is_dir() and not any(dst.iterdir()):
        dst.rmdir()
    if dst.exists():
        trash = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def _build_into(cfg: WorldConfig, root: Path, vocab: Vocab, preset: str | None,
                progress: bool) -> dict:
    sp = cfg.scene_params()
    tp = theme_probs(vocab, cfg.zipf_exponent)
    tg = TextGen(vocab, cfg.text_params(), tp)
    splits: dict[str, dict] = {}
    cooc = None
    for split, n in cfg.split_sizes().items():
        code = SPLIT_CODES[split]
        defects = split in DEFECT_SPLITS
        img_dir = root / "images" / split
        img_dir.mkdir(parents=True)
        scenes, captions, records = [], {}, []
        it = range(n)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=f"world {split}", unit="img")
        for i in it:
            image_id = image_id_for(split, i)
            scene, img, caps = _scene_item(cfg, vocab, sp, tg, split, i)
            # Plain writes: the whole directory is renamed into place atomically at the end.
            (img_dir / f"{image_id:06d}.png").write_bytes(png_bytes(img))
            captions[image_id] = caps
            records += tg.records(scene, random.Random(f"{cfg.seed}/{code}/{i}/records"),
                                  image=export.image_rel_path(split, image_id),
                                  defects=defects, captions=caps)
            scenes.append(scene)
        write_json(root / "annotations" / f"instances_{split}.json",
                   export.coco_instances(scenes, vocab), indent=None)
        write_json(root / "annotations" / f"captions_{split}.json",
                   export.coco_captions(scenes, captions), indent=None)
        write_json(root / "llava" / f"{split}.json", records, indent=None)
        write_jsonl(root / "prompts" / f"{split}_detail.jsonl",
                    export.prompt_records(scenes, cfg.eval_prompt))
        splits[split] = _split_summary(split, scenes, records, defects)
        if split == "train":
            cooc = export.cooccurrence_counts(scenes, vocab)
    atomic_write_text(root / "synonyms.txt", export.synonyms_text(vocab))
    save_run_config(cfg, root)
    summary = {
        "format": WORLD_FORMAT,
        "visalign_version": __version__,
        "preset": preset,
        "config": config_to_dict(cfg),
        "splits": splits,
        "layout": {
            "images": "images/{split}/{image_id:06d}.png (records' `image` is relative to "
                      "images/)",
            "instances": "annotations/instances_{split}.json",
            "captions": "annotations/captions_{split}.json",
            "llava": "llava/{split}.json",
            "prompts": "prompts/{split}_detail.jsonl",
            "synonyms": "synonyms.txt",
        },
        "vocab": vocab.to_dict(),
        "sizes": list(SIZES),
        "regions": list(REGIONS),
        "relations": list(RELATIONS),
        "theme_probs": {"themes": vocab.theme_names, "categories": vocab.names,
                        "p": [[round(float(x), 6) for x in row] for row in tp]},
        "cooccurrence": {"split": "train" if cooc is not None else None,
                         "categories": vocab.names, "counts": cooc},
    }
    write_json(root / "world.json", summary)
    return summary


def _scene_item(cfg: WorldConfig, vocab: Vocab, sp: SceneParams, tg: TextGen, split: str,
                i: int) -> tuple[Any, Any, list[str]]:
    """Scene, rendered image and reference captions of item ``i`` of ``split``: the one place
    that draws them, so generated items equal built ones byte for byte."""
    code = SPLIT_CODES[split]
    scene = sample_scene(np.random.default_rng([cfg.seed, code, i, 0]), vocab, sp,
                         image_id=image_id_for(split, i), split=split)
    img = render_scene(scene, vocab, np.random.default_rng([cfg.seed, code, i, 1]),
                       noise=cfg.background_noise, texture_strength=cfg.texture_strength)
    caps = tg.captions(scene, random.Random(f"{cfg.seed}/{code}/{i}/captions"))
    return scene, img, caps


def generate_scenes(cfg: WorldConfig, vocab: Vocab, split: str, start: int,
                    n: int) -> Iterator[tuple[Any, Any, list[str]]]:
    """``(scene, PIL image, captions)`` for items ``start .. start + n - 1`` of ``split``,
    in memory. Items past the split's size continue its stream: they are exactly what a world
    built with a larger ``n_<split>`` would hold (same images, same captions), so a stage can
    draw more images from a world's distribution without writing them."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    sp = cfg.scene_params()
    tg = TextGen(vocab, cfg.text_params(), theme_probs(vocab, cfg.zipf_exponent))
    for i in range(start, start + n):
        yield _scene_item(cfg, vocab, sp, tg, split, i)


def _split_summary(split: str, scenes: list, records: list[dict], defects: bool) -> dict:
    objs = [o for s in scenes for o in s.objects]
    details = [r for r in records if r["task"] == "detail"]
    ids = [s.image_id for s in scenes]
    return {
        "n_images": len(scenes),
        "id_range": [min(ids), max(ids)] if ids else None,
        "defects": defects,
        "n_objects": len(objs),
        "n_small_objects": sum(o.size == "small" for o in objs),
        "objects_per_image": round(len(objs) / max(1, len(scenes)), 4),
        "themes": dict(sorted(Counter(s.theme for s in scenes).items())),
        "category_instances": dict(sorted(Counter(o.category for o in objs).items())),
        "records": dict(sorted(Counter(r["task"] for r in records).items())),
        "detail_with_injected": sum(bool(r["injected_objects"]) for r in details),
        "detail_with_omitted": sum(bool(r["omitted_objects"]) for r in details),
    }
