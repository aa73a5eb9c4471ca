"""The micro-world data: determinism, formats, defects (train only), glyphs, CLI."""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visalign.cli import main as cli_main
from visalign.config import ConfigError
from visalign.data.coco import load_coco_captions, load_coco_instances
from visalign.data.llava import load_llava_records
from visalign.world import build_world, load_world, world_config
from visalign.world.render import render_glyph
from visalign.world.scenes import SceneParams, region_of, sample_scene, theme_probs
from visalign.data.words import plural
from visalign.world.vocab import COLORS, REGIONS, default_vocab

TASKS = {"detail", "caption", "existence", "count", "color", "position", "vqa"}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("w") / "world"
    t0 = time.perf_counter()
    build_world(world_config("tiny", seed=7), out, preset="tiny")
    return out, time.perf_counter() - t0


def _assert_same_images_and_instances(a: Path, b: Path) -> None:
    """Text-only knobs must leave the rendered images and instance annotations byte-equal."""
    h0, h1 = _hashes(a), _hashes(b)
    same = [k for k in h0 if k.startswith("images/") or k.startswith("annotations/instances")]
    assert same and all(h0[k] == h1[k] for k in same)


def _mentions(text: str) -> set[str]:
    """Categories named in ``text`` (longest surface form first, so "hot dog" is not "dog")."""
    vocab = default_vocab()
    forms = []
    for c in vocab.categories:
        for f in (c.name, *c.synonyms):
            forms += [(f, c.name), (plural(f), c.name)]
    forms.sort(key=lambda x: -len(x[0]))
    t = " " + re.sub(r"[^a-z ]", " ", text.lower()) + " "
    found = set()
    for f, name in forms:
        if f" {f} " in t:
            found.add(name)
            t = t.replace(f" {f} ", " # ")
    return found


def test_tiny_builds_end_to_end_in_seconds(tiny):
    out, seconds = tiny
    assert seconds < 3.0
    w = load_world(out)
    assert w.splits == ["train", "val"]
    assert w.meta["splits"]["train"]["n_images"] == 120
    assert w.meta["splits"]["val"]["n_images"] == 40
    for split in w.splits:
        for p in (w.instances_path(split), w.captions_path(split), w.llava_path(split),
                  w.prompts_path(split)):
            assert p.is_file(), p
        assert len(list((w.image_root / split).glob("*.png"))) == w.meta["splits"][split][
            "n_images"]
    assert w.synonyms_path.is_file() and w.config_path.is_file()
    assert w.config == world_config("tiny", seed=7)
    assert w.vocab == default_vocab()
    assert w.image_size == 64 and w.train_split == "train" and w.eval_split == "val"
    with pytest.raises(KeyError):
        w.llava_path("test")


def test_same_seed_gives_identical_files_and_other_seed_other_images(tiny, tmp_path):
    out, _ = tiny
    again = tmp_path / "again"
    build_world(world_config("tiny", seed=7), again, preset="tiny")
    assert _hashes(out) == _hashes(again)

    other = tmp_path / "other"
    build_world(world_config("tiny", seed=8, overrides=["n_train=5", "n_val=0"]), other)
    a = np.asarray(Image.open(out / "images/train/000001.png"))
    b = np.asarray(Image.open(other / "images/train/000001.png"))
    assert not np.array_equal(a, b)


def test_text_knobs_leave_images_and_annotations_unchanged(tiny, tmp_path):
    out, _ = tiny
    clean = tmp_path / "clean"
    build_world(world_config("tiny", seed=7, overrides=["hallucination_rate=0",
                                                        "omit_small_rate=0"]), clean)
    _assert_same_images_and_instances(out, clean)
    recs = load_llava_records(clean / "llava/train.json")
    assert all(not r["injected_objects"] and not r["omitted_objects"]
               for r in recs if r["task"] == "detail")


def test_coco_annotations_are_valid_and_exact(tiny):
    out, _ = tiny
    w = load_world(out)
    vocab = w.vocab
    assert len(vocab.categories) >= 24
    assert any(" " in n for n in vocab.names)          # two-word names exercised
    for split in w.splits:
        coco = load_coco_instances(w.instances_path(split))
        cats = coco.loadCats(coco.getCatIds())
        assert {c["supercategory"] for c in cats} == set(vocab.theme_names)
        assert [c["name"] for c in cats] == vocab.names
        for img in coco.loadImgs(coco.getImgIds()):
            path = w.image_root / img["file_name"]
            with Image.open(path) as im:
                assert im.size == (img["width"], img["height"]) == (64, 64)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert 1 <= len(anns) <= 6
            for a in anns:
                x, y, bw, bh = a["bbox"]
                assert 0 <= x and 0 <= y and x + bw <= 64 and y + bh <= 64
                assert a["area"] == bw * bh and a["iscrowd"] == 0
                assert a["segmentation"] == [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
                assert a["color"] in COLORS and a["size"] in ("small", "large")
                assert a["region"] == region_of(x + bw / 2, y + bh / 2, 64, 64)
                side = max(bw, bh)
                assert (5 <= side <= 8) if a["size"] == "small" else (14 <= side <= 22)
        caps = load_coco_captions(w.captions_path(split))
        assert set(caps) == set(coco.getImgIds())
        for image_id, cs in caps.items():
            assert len(cs) == 5
            gt = {coco.cats[a["category_id"]]["name"]
                  for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))}
            for c in cs:   # reference captions are true and name something
                assert _mentions(c) and _mentions(c) <= gt, (c, gt)


def test_instruction_records_validate_with_images(tiny):
    out, _ = tiny
    w = load_world(out)
    for split in w.splits:
        recs = load_llava_records(w.llava_path(split), image_root=w.image_root,
                                  check_images=True)
        assert {r["task"] for r in recs} == TASKS
        ex = [r for r in recs if r["task"] == "existence"]
        assert sum(r["label"] == "yes" for r in ex) == sum(r["label"] == "no" for r in ex)
        prompts = [json.loads(line) for line in w.prompts_path(split).read_text().splitlines()]
        assert len(prompts) == w.meta["splits"][split]["n_images"]
        assert all((w.image_root / p["image"]).is_file() and "<image>" not in p["prompt"]
                   for p in prompts)


def test_defects_only_in_train(tiny):
    out, _ = tiny
    w = load_world(out)
    gt: dict[int, set[str]] = {}
    for split in w.splits:
        coco = load_coco_instances(w.instances_path(split))
        for a in coco.dataset["annotations"]:
            gt.setdefault(a["image_id"], set()).add(coco.cats[a["category_id"]]["name"])
    train = [r for r in load_llava_records(w.llava_path("train")) if r["task"] == "detail"]
    val = [r for r in load_llava_records(w.llava_path("val")) if r["task"] == "detail"]
    injected = [r for r in train if r["injected_objects"]]
    assert 0.15 < len(injected) / len(train) < 0.45      # hallucination_rate = 0.3
    assert any(r["omitted_objects"] for r in train)
    for r in train:
        said = _mentions(r["conversations"][1]["value"])
        assert set(r["injected_objects"]) <= said - gt[r["image_id"]]
        assert said == (gt[r["image_id"]] - set(r["omitted_objects"])) | set(
            r["injected_objects"])
    for r in val:   # clean: every object, nothing else
        assert not r["injected_objects"] and not r["omitted_objects"]
        assert _mentions(r["conversations"][1]["value"]) == gt[r["image_id"]]


@pytest.fixture(scope="module")
def injecting(tmp_path_factory) -> dict[float, Path]:
    """Tiny worlds where every train description gets an absent object, by sharpness (0 turns
    co-occurrence off); text knobs only, so the scenes are the fixture's."""
    root = tmp_path_factory.mktemp("inject")
    out = {}
    for sharpness in (1.5, 0.0):
        out[sharpness] = root / f"s{sharpness}"
        build_world(world_config("tiny", seed=7, overrides=[
            "hallucination_rate=1", f"hallucination_sharpness={sharpness}"]), out[sharpness])
    return out


def _injections(root: Path) -> list[tuple[str, str, set[str]]]:
    """(injected category, scene theme, present categories) of each train description that
    got an absent object."""
    w = load_world(root)
    coco = load_coco_instances(w.instances_path("train"))
    theme = {img["id"]: img["theme"] for img in coco.dataset["images"]}
    present: dict[int, set[str]] = {}
    for a in coco.dataset["annotations"]:
        present.setdefault(a["image_id"], set()).add(coco.cats[a["category_id"]]["name"])
    return [(r["injected_objects"][0], theme[r["image_id"]], present[r["image_id"]])
            for r in load_llava_records(w.llava_path("train"))
            if r["task"] == "detail" and r["injected_objects"]]


def _theme_share(inj: list[tuple[str, str, set[str]]]) -> tuple[float, float]:
    """Share of injected objects that are members of the scene's theme, and that share's
    expectation under a uniform pick among the absent categories (from the vocabulary)."""
    vocab = default_vocab()
    members = {t.name: {c for c, _ in t.members} for t in vocab.themes}
    hits = chance = 0.0
    for h, theme, present in inj:
        absent = [c for c in vocab.names if c not in present]
        hits += h in members[theme]
        chance += sum(c in members[theme] for c in absent) / len(absent)
    return hits / len(inj), chance / len(inj)


def test_injected_objects_follow_cooccurrence(injecting):
    """The absent object a train description invents comes from the scene's theme far more
    often than a uniform pick would; with ``hallucination_sharpness=0`` (uniform weights) the
    share falls to the uniform baseline."""
    sharp, flat = _injections(injecting[1.5]), _injections(injecting[0.0])
    assert len(sharp) >= 100 and len(flat) >= 100          # 120 train images, rate 1
    share, chance = _theme_share(sharp)
    share0, chance0 = _theme_share(flat)
    # Seed 7 gives share 0.96 vs chance 0.24; sharpness 0 gives 0.28 vs 0.24.
    assert 0.15 < chance < 0.35                           # ~9 of 30 categories per theme
    assert share > 0.8 and share > 3 * chance, (share, chance)
    assert abs(share0 - chance0) < 0.12, (share0, chance0)
    assert share - share0 > 0.5


def test_injected_objects_favour_frequent_members(injecting):
    """Among same-theme injections, the theme's most frequent absent member (Zipf rank) is
    picked far more often than uniform chance: the one way frequency biases descriptions."""
    vocab = default_vocab()
    rank = {t.name: {c: r for r, (c, _) in enumerate(t.members)} for t in vocab.themes}

    def top_share(inj: list[tuple[str, str, set[str]]]) -> tuple[float, float]:
        top = chance = n = 0.0
        for h, theme, present in inj:
            if h not in rank[theme]:
                continue
            absent = [c for c in rank[theme] if c not in present]
            top += h == min(absent, key=rank[theme].get)
            chance += 1 / len(absent)
            n += 1
        return top / n, chance / n

    top, chance = top_share(_injections(injecting[1.5]))
    top0, _ = top_share(_injections(injecting[0.0]))
    # Seed 7: 0.51 vs chance 0.16; sharpness 0 gives 0.12.
    assert top > 2 * chance and top > chance + 0.2, (top, chance)
    assert top - top0 > 0.2, (top, top0)


def test_omitted_objects_are_small_only(tiny):
    """Omission depends on size only: every omitted category has only small instances, and
    about ``omit_small_rate`` (0.5) of the small-only categories are omitted."""
    out, _ = tiny
    w = load_world(out)
    coco = load_coco_instances(w.instances_path("train"))
    sizes: dict[int, dict[str, set[str]]] = {}
    for a in coco.dataset["annotations"]:
        name = coco.cats[a["category_id"]]["name"]
        sizes.setdefault(a["image_id"], {}).setdefault(name, set()).add(a["size"])
    small_only = omitted = 0
    for r in load_llava_records(w.llava_path("train")):
        if r["task"] != "detail":
            continue
        cand = {c for c, z in sizes[r["image_id"]].items() if z == {"small"}}
        assert set(r["omitted_objects"]) <= cand, (r["omitted_objects"], cand)
        small_only += len(cand)
        omitted += len(r["omitted_objects"])
    assert small_only >= 50
    assert 0.3 < omitted / small_only < 0.65              # seed 7: 46 / 97


def test_glyphs_of_different_categories_differ():
    vocab = default_vocab()
    glyphs = {c: render_glyph(vocab, c, 20, color="red") for c in vocab.names}
    names = list(glyphs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = np.abs(glyphs[a].astype(int) - glyphs[b].astype(int)).sum(-1)
            assert (diff > 60).sum() >= 8, (a, b)   # clearly different, not 1-2 pixels


def test_scene_sampling_statistics():
    vocab = default_vocab()
    params = SceneParams()
    tp = theme_probs(vocab, params.zipf_exponent)
    n_in = n_all = n_small = 0
    counts: dict[str, int] = {}
    for i in range(1500):
        s = sample_scene(np.random.default_rng([0, 0, i, 0]), vocab, params, image_id=i + 1,
                         split="train")
        assert 1 <= len(s.objects) <= params.max_objects
        ti = vocab.theme_names.index(s.theme)
        for o in s.objects:
            n_all += 1
            n_in += tp[ti, vocab.names.index(o.category)] > 0
            n_small += o.size == "small"
            counts[o.category] = counts.get(o.category, 0) + 1
    assert 0.78 < n_in / n_all < 0.93          # in_theme_prob = 0.85
    assert 0.22 < n_small / n_all < 0.38       # small_object_prob = 0.3
    assert counts["person"] > 3 * counts["hot dog"]   # Zipf skew: frequent vs rare


def test_synonyms_table(tiny):
    out, _ = tiny
    lines = (out / "synonyms.txt").read_text().splitlines()
    vocab = default_vocab()
    rows = [[w.strip() for w in line.split(",")] for line in lines]
    assert [r[0] for r in rows] == vocab.names
    assert all(len(r) >= 2 for r in rows)
    forms = [f for r in rows for f in r]
    assert len(forms) == len(set(forms))
    assert {"traffic light", "stop sign", "teddy bear", "hot dog"} <= set(forms)


def test_config_validation_and_presets():
    assert world_config("tiny").n_train == 120 and world_config("small").n_train == 3000
    assert world_config("tiny", overrides=["in_theme_prob=0.5"], seed=3).seed == 3
    with pytest.raises(ConfigError):
        world_config("tiny", overrides=["hallucination_rate=1.5"])
    with pytest.raises(ConfigError):
        world_config("tiny", overrides=["no_such_knob=1"])
    with pytest.raises(ConfigError):
        world_config("huge")
    with pytest.raises(ConfigError, match="hallucination_sharpness"):
        world_config("tiny", overrides=["hallucination_sharpness=-1"])


def test_cli_world_build(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["world", "build", "--out", str(out), "--preset", "tiny", "--seed", "3",
            "n_train=6", "n_val=3", "hallucination_rate=0.5"]
    assert cli_main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"]["n_images"] == 6
    w = load_world(out)
    assert w.config.seed == 3 and w.config.hallucination_rate == 0.5
    assert cli_main(args) == 2                      # refuses to overwrite
    assert "not empty" in capsys.readouterr().err
    assert cli_main(args + ["--force"]) == 0
    assert not list(tmp_path.glob(".cli.*"))        # no partial/old dirs left behind


def test_load_world_errors(tmp_path):
    from visalign.io import DataError
    with pytest.raises(DataError, match="world.json"):
        load_world(tmp_path)


def test_text_is_deterministic_per_rng():
    from visalign.world.text import TextGen, TextParams
    vocab = default_vocab()
    tg = TextGen(vocab, TextParams(), theme_probs(vocab, 1.0))
    s = sample_scene(np.random.default_rng(1), vocab, SceneParams(), image_id=1, split="train")
    a = tg.records(s, random.Random(5), image="x.png", defects=True, captions=["A cup."])
    b = tg.records(s, random.Random(5), image="x.png", defects=True, captions=["A cup."])
    assert a == b
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in a)
    assert set(REGIONS) == set(json.loads(json.dumps(list(REGIONS))))


def test_reading_order_descriptions(tiny, tmp_path):
    """`description_order=reading` names objects top row first, left to right, with the same
    images, annotations and objects named as the default (category-order) world."""
    out, _ = tiny
    reading = tmp_path / "reading"
    build_world(world_config("tiny", seed=7, overrides=["description_order=reading",
                                                        "hallucination_rate=0"]), reading)
    _assert_same_images_and_instances(out, reading)
    coco = load_coco_instances(reading / "annotations/instances_val.json")
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    vocab = default_vocab()
    forms = sorted(((f, c.name) for c in vocab.categories
                    for f0 in (c.name, *c.synonyms) for f in (f0, plural(f0))),
                   key=lambda x: -len(x[0]))
    checked = 0
    for r in load_llava_records(reading / "llava/val.json"):
        if r["task"] != "detail":
            continue
        text = r["conversations"][1]["value"].lower()
        first: dict[str, int] = {}
        masked = text
        for f, name in forms:   # position of each category's first mention
            for m in re.finditer(rf"\b{re.escape(f)}\b", masked):
                first[name] = min(first.get(name, m.start()), m.start())
                masked = masked[:m.start()] + "#" * len(f) + masked[m.end():]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=r["image_id"]))
        img = coco.loadImgs(r["image_id"])[0]
        key: dict[str, tuple] = {}
        for a in anns:
            x, y, w, h = a["bbox"]
            k = (min(2, int((y + h / 2) * 3 // img["height"])), x + w / 2)
            key[names[a["category_id"]]] = min(key.get(names[a["category_id"]], k), k)
        want = sorted(key, key=lambda c: key[c])
        got = sorted(first, key=lambda c: first[c])
        assert got[:len(want)] == want, (text, want)
        checked += 1
    assert checked >= 10
    with pytest.raises(ConfigError, match="description_order"):
        world_config("tiny", overrides=["description_order=random"])


def _first_mentions(text: str) -> dict[str, int]:
    """Category -> character position of its first mention (longest surface form first)."""
    forms = sorted(((f, c.name) for c in default_vocab().categories
                    for f0 in (c.name, *c.synonyms) for f in (f0, plural(f0))),
                   key=lambda x: -len(x[0]))
    first: dict[str, int] = {}
    masked = text.lower()
    for f, name in forms:
        for m in re.finditer(rf"\b{re.escape(f)}\b", masked):
            first[name] = min(first.get(name, m.start()), m.start())
            masked = masked[:m.start()] + "#" * len(f) + masked[m.end():]
    return first


@pytest.mark.parametrize("order", ["category", "rank"])
def test_fixed_order_descriptions(tiny, tmp_path, order):
    """`description_order=category|rank` names a description's objects in the vocabulary's
    fixed order (``Vocab.order_keys``), on the clean split and on the train split with its
    defects (an injected object written as an object sentence takes its category's place);
    images and annotations equal the default world's."""
    out, _ = tiny
    cat = tmp_path / order
    build_world(world_config("tiny", seed=7, overrides=[f"description_order={order}",
                                                        "hallucination_rate=1"]), cat)
    _assert_same_images_and_instances(out, cat)
    keys = default_vocab().order_keys(order)
    checked = {"val": 0, "train": 0}
    for split in checked:
        coco = load_coco_instances(cat / f"annotations/instances_{split}.json")
        names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        for r in load_llava_records(cat / f"llava/{split}.json"):
            if r["task"] != "detail":
                continue
            text = r["conversations"][1]["value"]
            # The tail form ("There is also a fork near the cup.") comes last by design.
            body = re.split(r"(?:There is also|Next to the|\w+ can also be seen)", text)[0]
            first = _first_mentions(body)
            present = {names[a["category_id"]]
                       for a in coco.loadAnns(coco.getAnnIds(imgIds=r["image_id"]))}
            if split == "val":
                assert set(first) == present, text
            got = sorted(first, key=lambda c: first[c])
            assert got == sorted(got, key=keys.__getitem__), text
            checked[split] += 1
    assert min(checked.values()) >= 10


def test_order_keys():
    """`category` is the id order; `rank` interleaves the themes: each theme's most frequent
    category first, and no two neighbours share a home theme within a round."""
    vocab = default_vocab()
    cat = vocab.order_keys("category")
    assert sorted(cat, key=cat.get) == vocab.names
    rank = vocab.order_keys("rank")
    order = sorted(rank, key=rank.get)
    n = len(vocab.themes)
    assert order[:n] == [[c.name for c in vocab.categories if c.theme == t][0]
                         for t in vocab.theme_names]
    assert sorted(order) == sorted(vocab.names)
    assert all(vocab.category(a).theme != vocab.category(b).theme
               for a, b in zip(order, order[1:]))
    with pytest.raises(ValueError, match="fixed order"):
        vocab.order_keys("salience")
