"""One grid cell's training: the method's data built from the base model's own outputs, then its
trainer, each configured from the method's preset, the grid's overrides and the grid's seed."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

from visalign.compare.config import METHOD_KIND, METHOD_TASKS, CompareConfig
from visalign.config import load_config
from visalign.io import write_json

# what `visalign fisao calibrate` writes beside calibration.json that the grid uses: the
# sentence-level calibration and entity set FiSAO looks for there, and the report and figures
CALIBRATION_FIGURES = {
    "fig1a_token_scores.png": "Fig. 1a: token-level verifier scores",
    "fig1b_sentence_scores.png": "Fig. 1b: sentence-level verifier scores",
    "fig2a_sentence_vs_bleu.png": "Fig. 2a: sentence score vs BLEU-4",
    "fig2b_sentence_vs_rouge.png": "Fig. 2b: sentence score vs ROUGE-L"}
CALIBRATION_SIBLINGS = ("calibration_sentence.json", "entities.json", "calibration_report.json",
                        *CALIBRATION_FIGURES)


def alignment_image_ids(source: Any, seed: int) -> list[int]:
    """The source's alignment pool in the grid's order: nested prefixes are the alignment
    subsets, the tail holds FiSAO's calibration images."""
    ids = list(source.train_image_ids())
    random.Random(seed).shuffle(ids)
    return ids


def write_alignment_data(source: Any, image_ids: list[int], tasks: tuple[str, ...],
                         path: Path) -> Path:
    """LLaVA records of ``tasks`` for ``image_ids`` (image paths relative to the source)."""
    from visalign.data.llava import load_llava_records

    if path.exists():  # written by an earlier cell of this size; the source does not change
        return path
    keep = set(image_ids)
    recs = [r for r in load_llava_records(source.llava_path(source.train_split))
            if r.get("image_id") in keep and r.get("task") in tasks]
    if not recs:
        raise ValueError(f"{source.root}: no {tasks} records for the alignment images")
    write_json(path, recs)
    return path


def recipe_path(method: str, cfg: CompareConfig) -> Path:
    """The method's base trainer config: ``cfg.recipes/<method>.yaml``, else its packaged
    preset."""
    from visalign.methods.presets import preset_path

    if not cfg.recipes:
        return preset_path(method)
    folder = Path(cfg.recipes)
    if not folder.is_absolute() and not folder.is_dir():
        # a repository path such as configs/recipes/llava-1.5-7b, run from elsewhere
        import visalign

        repo = Path(visalign.__file__).resolve().parents[2]
        if (repo / folder).is_dir():
            folder = repo / folder
    p = folder / f"{method}.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no recipe for {method} in recipes={cfg.recipes}")
    return p


def trainer_config(method: str, cfg: CompareConfig, flags: dict) -> Any:
    """The method's trainer config: recipe or preset, then the kind's and the method's
    overrides, then ``flags`` and the grid's seed (unless an override names a seed: a seed
    sweep)."""
    from visalign.methods.presets import trainer_class

    kind = METHOD_KIND[method]
    cls = trainer_class(kind)
    extra = {"sft": cfg.sft, "dpo": cfg.dpo, "fisao": cfg.fisao}[kind]
    c = load_config(cls, recipe_path(method, cfg))
    c = load_config(cls, None, extra, base=c)
    own = cfg.method_overrides.get(method, {})
    c = load_config(cls, None, own, base=c)
    top = {"progress": cfg.progress, **flags}
    if "seed" not in extra and "seed" not in own:
        top["seed"] = cfg.seed
    return load_config(cls, None, top, base=c)


def method_tasks(method: str, cfg: CompareConfig) -> tuple[str, ...]:
    """The record tasks a method trains on (FiSAO's extensions add the yes/no prompts)."""
    tasks = METHOD_TASKS[method]
    if method == "fisao" and (cfg.fisao.get("existence_reward")
                              or float(cfg.fisao.get("anchor_weight") or 0) > 0):
        tasks = tasks + ("existence",)
    return tasks


def train_method(method: str, source: Any, base: Path, ids: list[int], d: Path, data: Path,
                 calib_dir: Path, cfg: CompareConfig, verifier: Path | None = None) -> str:
    """Build the method's data from the base model and train it; returns the model dir."""
    from visalign.methods.presets import trainer

    tasks = method_tasks(method, cfg)
    align = write_alignment_data(source, ids, tasks,
                                 data / f"align_{len(ids)}_{'+'.join(tasks)}.json")
    root = str(source.image_root)
    flags = {"model": str(base), "image_root": root, "out": str(d / "train"), "preset": method}
    if method == "cont-sft":
        flags["data"] = str(align)
    elif method == "nsft":
        nd = d / "nsft_data"
        if not (nd / "nsft.json").exists():
            _build_nsft(source, base, align, nd, cfg)
        flags["data"] = str(nd / "nsft.json")
    elif METHOD_KIND[method] == "dpo":
        pairs = d / "pairs.json"
        if not pairs.exists():
            _build_pairs(method, source, base, align, pairs, cfg)
        flags["pairs"] = str(pairs)
    elif method == "fisao":
        flags = {**flags, "data": str(align), "calibration": str(calib_dir / "calibration.json")}
        del flags["preset"]
        if verifier is not None and verifier != base / "verifier":
            flags["verifier"] = str(verifier)
        # the calibration's entities.json (world vocabulary included) when it wrote one
        if not (calib_dir / "entities.json").exists() and source.synonyms_path is not None:
            flags["extra_vocab"] = str(source.synonyms_path)
    else:
        raise ValueError(f"unknown method {method!r}")
    res = trainer(METHOD_KIND[method])(trainer_config(method, cfg, flags))
    return str(res.model_dir)


def _annotations(source: Any) -> tuple[str, str, str | None]:
    """(instances, captions, synonyms or None = COCO's) of the source's train split."""
    split = source.train_split
    syn = source.synonyms_path
    return (str(source.instances_path(split)), str(source.captions_path(split)),
            None if syn is None else str(syn))


def _build_nsft(source: Any, base: Path, align: Path, out: Path, cfg: CompareConfig) -> None:
    from visalign.methods.nsft import NsftDataConfig, write_nsft_data

    inst, caps, syn = _annotations(source)
    ncfg = load_config(NsftDataConfig, None, {"seed": cfg.seed, **cfg.nsft_data})
    write_nsft_data(ncfg, align, out, image_root=str(source.image_root), model=str(base),
                    instances=inst, captions=caps, synonyms=syn)


def _build_pairs(method: str, source: Any, base: Path, align: Path, out: Path,
                 cfg: CompareConfig) -> None:
    from visalign.methods.pairs import PairsConfig, write_method_pairs

    inst, caps, syn = _annotations(source)
    pcfg = load_config(PairsConfig, None, {"seed": cfg.seed, **cfg.pairs})
    annotations = ({"instances": inst, "captions": caps, "synonyms": syn}
                   if method == "povid" else {})
    write_method_pairs(method, pcfg, align, out, image_root=str(source.image_root),
                       model=str(base), **annotations)


def calibrate(source: Any, base: Path, image_ids: list[int], out: Path,
              cfg: CompareConfig, verifier: Path | None = None) -> dict:
    """FiSAO Eq. 7 calibration on train images outside every alignment subset."""
    from visalign.io import read_jsonl, write_jsonl
    from visalign.methods.fisao.calibrate import CalibrateConfig, calibrate_verifier

    split = source.train_split
    keep = set(image_ids)
    prompts = [p for p in read_jsonl(source.prompts_path(split)) if p["image_id"] in keep]
    out.mkdir(parents=True, exist_ok=True)
    ppath = out / "prompts.jsonl"
    write_jsonl(ppath, prompts)
    inst, caps, syn = _annotations(source)
    extra = {} if verifier is None or verifier == base / "verifier" else \
        {"verifier": str(verifier)}
    return calibrate_verifier(CalibrateConfig(
        model=str(base), prompts=str(ppath), image_root=str(source.image_root),
        instances=inst, captions=caps, synonyms=syn or "", out=str(out), n_images=len(prompts),
        **extra,
        max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
        **cfg.fisao_calibrate))


def copy_calibration(path: str | Path, calib_dir: Path) -> None:
    """Use an existing calibration: copy it and its siblings (FiSAO looks for the sentence-level
    calibration and the entity set next to calibration.json; the report and figures feed the
    grid's analysis and Fig. 1/2)."""
    calib_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, calib_dir / "calibration.json")
    for name in CALIBRATION_SIBLINGS:
        sib = Path(path).parent / name
        if sib.exists():
            shutil.copyfile(sib, calib_dir / name)
