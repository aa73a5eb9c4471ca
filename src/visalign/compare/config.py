"""Settings of the comparison grid (:class:`CompareConfig`) and what each method consumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from visalign.config import field, load_config
from visalign.eval.suite import EvalSettings

METHODS = ("cont-sft", "nsft", "gt-dpo", "seva", "sima", "povid", "fisao")
DPO_METHODS = ("gt-dpo", "seva", "sima", "povid")
# trainer kind of each method (visalign.methods.presets)
METHOD_KIND = {"cont-sft": "sft", "nsft": "sft", "gt-dpo": "dpo", "seva": "dpo", "sima": "dpo",
               "povid": "dpo", "fisao": "fisao"}
# Which alignment records each method consumes. nSFT (and its cont-SFT baseline) train on long
# descriptions plus short answers, as the paper mixes LLaVA detail descriptions with OCRVQA;
# the preference baselines and FiSAO work on detailed-description prompts, as their papers do.
METHOD_TASKS = {"cont-sft": ("detail", "vqa"), "nsft": ("detail", "vqa"),
                "gt-dpo": ("detail",), "seva": ("detail",), "sima": ("detail",),
                "povid": ("detail",), "fisao": ("detail",)}
PACKAGED = "packaged"


@dataclasses.dataclass
class CompareConfig:
    out: str = field("", help="output dir of the comparison")
    coco: str = field("", help="COCO root (annotations/, train2017/, val2014/): with `instruct`, "
                               "the grid runs on real data instead of the micro-world")
    instruct: str = field("", help="LLaVA instruction file as it ships (llava_instruct_150k.json, "
                                   "detail_23k.json or llava_v1_5_mix665k.json): the alignment "
                                   "pool")
    image_folder: str = field("", help="folder the instruction file's relative image paths start "
                                       "in ('' = the COCO train split's folder; mix665k: LLaVA's "
                                       "data root holding coco/, ocr_vqa/, textvqa/)")
    alignment_source: Literal["coco", "ocrvqa", "textcaps"] = field(
        "coco", help="which records align: COCO images with annotations, or mix665k's OCR-VQA / "
        "TextCaps records (no COCO objects: methods that need them are skipped and said so)")
    train_split: str = field("train2017", help="COCO split of the alignment images")
    verifier: str = field("", help="FiSAO's verifier: the CLIP whose vision model is the base "
                                   "model's vision tower ('' = BASE/verifier)")
    benchmarks: list[str] = field(["chair", "pope"], help="real-data grids: the benchmarks of "
                                  "`visalign eval suite` every model is evaluated with (chair, "
                                  "pope, amber, mmhal, objhal)")
    suite: dict = field({}, help="real-data grids: the suite's data and protocol options "
                                 "(SuiteData: pope_dir, amber_dir, mmhal_file, objhal_file, "
                                 "chair_images, chair_variant, judge, ...); CHAIR images default "
                                 "to a seeded sample of eval.n_images val2014 images, POPE to "
                                 "files built from val2014 with eval.pope_images images")
    world: str = field("", help="existing world dir ('' = build one into OUT/world)")
    world_preset: Literal["small", "tiny"] = field("small", help="world size when building")
    base_model: str = field("", help="existing base model dir; '' = train one into OUT/base; "
                                     "'packaged' = the base shipped with visalign (small "
                                     "world, seed 0; checked against the world's fingerprint)")
    base_preset: Literal["small", "tiny"] = field("small", help="base model preset when training")
    base_overrides: dict = field({}, help="overrides of the base model config (world base)")
    methods: list[str] = field(list(METHODS), help="methods of the grid")
    data_sizes: list[int] = field([1200, 2400], help="alignment images per size (nested "
                                                     "subsets; configs/compare/microworld.yaml)")
    seed: int = field(0, help="seed of subset sampling and of every trainer")
    eval: EvalSettings = field(default_factory=EvalSettings)
    calibration_images: int = field(300, help="FiSAO calibration images (disjoint from the "
                                              "alignment sets)")
    fisao_calibration: str = field("", help="an existing calibration.json for FiSAO ('' = "
                                            "calibrate the verifier on the base model here)")
    recipes: str = field("", help="directory of per-method trainer configs (<method>.yaml, e.g. "
                                  "configs/recipes/llava-1.5-7b) used instead of the packaged "
                                  "presets")
    sft: dict = field({}, help="overrides of every SFT run (cont-sft, nsft), e.g. {lr: 1e-4}")
    dpo: dict = field({}, help="overrides of every DPO run (gt-dpo, seva, sima, povid)")
    fisao: dict = field({}, help="overrides of the FiSAO run")
    fisao_calibrate: dict = field({}, help="overrides of the verifier calibration "
                                           "(CalibrateConfig), e.g. {pooling: patch}")
    nsft_data: dict = field({}, help="overrides of nsft build (NsftDataConfig)")
    pairs: dict = field({}, help="overrides of the pair builders (PairsConfig)")
    method_overrides: dict = field({}, help="per-method trainer overrides, e.g. "
                                            "{seva: {lr: 1e-5}}")
    method_notes: dict = field({}, help="per-method notes written beside the results in the "
                                        "report, e.g. where a method runs smaller here than in "
                                        "the full grid: {sima: 'two samples per image'}")
    workers: int = field(0, help="cells trained and evaluated at once, each in its own process "
                                 "(pinned to its share of the cores, or to one GPU each); 0 = "
                                 "automatic: one per GPU, else one per core; 1 = one after "
                                 "another in this process")
    threads: int = field(0, help="torch threads per cell on a CPU (0 = the cores divided among "
                                 "the workers). FiSAO's sampled rollouts depend on it: run "
                                 "workers=1 threads=1 to reproduce a 2-core parallel run's rows")
    progress: bool = field(True, help="progress bars and stage lines")


def check_config(cfg: CompareConfig) -> None:
    """Refuse unknown methods, a missing ``out`` and an incomplete real-data grid before any
    work (every missing setting named in one line)."""
    unknown = [m for m in [*cfg.methods, *cfg.method_overrides, *cfg.method_notes]
               if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    missing = [] if cfg.out else ["out=DIR"]
    if cfg.coco or cfg.instruct:
        missing += [f"{k}=..." for k, v in (("coco", cfg.coco), ("instruct", cfg.instruct))
                    if not v]
        if cfg.base_model in ("", PACKAGED):
            missing.append("base_model=MODEL_DIR (the model to align)")
        if cfg.eval.split in ("val", "train", "test"):
            missing.append("eval.split=val2014 (a COCO split)")
    if missing:
        raise ValueError(f"compare: missing {', '.join(missing)}")


def is_real(cfg: CompareConfig) -> bool:
    """Whether the grid runs on a COCO root + instruction file (else on the micro-world)."""
    return bool(cfg.coco)


def skipped_cells(cfg: CompareConfig) -> dict[str, str]:
    """Methods the grid cannot run on its data, with why: an alignment source without COCO
    objects (OCR-VQA, TextCaps) has no ground truth for nSFT's annotation judge, POVID's object
    edits or FiSAO's calibration."""
    if not is_real(cfg) or cfg.alignment_source == "coco":
        return {}
    why = f"{cfg.alignment_source} images have no COCO objects"
    out = {}
    if "nsft" in cfg.methods and cfg.nsft_data.get("judge", "annotation") == "annotation":
        out["nsft"] = f"{why}: the annotation judge needs them (set nsft_data.judge=llm)"
    if "povid" in cfg.methods and cfg.pairs.get("povid_editor", "rules") == "rules":
        out["povid"] = f"{why}: POVID's rule edits need them (set pairs.povid_editor=llm)"
    if "fisao" in cfg.methods and not cfg.fisao_calibration:
        out["fisao"] = f"{why}: calibrating the verifier needs them (give fisao_calibration=)"
    return out


def check_alignment_sizes(cfg: CompareConfig, n_train: int) -> None:
    """Raise ``ValueError`` unless the grid's largest alignment set (plus FiSAO's calibration
    images when the grid calibrates: they must stay disjoint from it) fits in ``n_train`` train
    images."""
    sizes = sorted(set(cfg.data_sizes))
    if not sizes:
        return
    if min(sizes) <= 0:
        raise ValueError(f"data sizes must be positive, got {sizes}")
    if sizes[-1] > n_train:
        raise ValueError(f"data size {sizes[-1]} > {n_train} train images")
    calibrating = ("fisao" in cfg.methods and "fisao" not in skipped_cells(cfg)
                   and not cfg.fisao_calibration)
    if calibrating and sizes[-1] + cfg.calibration_images > n_train:
        raise ValueError(f"{sizes[-1]} alignment + {cfg.calibration_images} calibration images "
                         f"> {n_train} train images")


def grid_dirs(cfg: CompareConfig, out: str | Path) -> tuple[Path, Path]:
    """(data source dir, base model dir) of a grid written to ``out``: the config's own world,
    or the ones the grid builds (the world; a real grid's normalised files in ``out/source``) or
    installs (the packaged base) inside ``out``."""
    out = Path(out)
    world = out / "source" if is_real(cfg) else Path(cfg.world) if cfg.world else out / "world"
    base = Path(cfg.base_model) if cfg.base_model not in ("", PACKAGED) else out / "base"
    return world, base


def verifier_dir(cfg: CompareConfig, base: Path) -> Path:
    """FiSAO's verifier: the config's, else the base model's ``verifier/``."""
    return Path(cfg.verifier) if cfg.verifier else base / "verifier"


def suite_data(cfg: CompareConfig, out: str | Path) -> Any:
    """The eval suite's data of a real-data grid: the grid's COCO root and sizes, then
    ``cfg.suite``'s options; derived files (built POPE questions, decoded images) are shared by
    every cell under ``out/source/suite``."""
    from visalign.eval.registry import SuiteData

    defaults = {"coco_root": cfg.coco, "chair_images": f"val2014:{cfg.eval.n_images}",
                "chair_seed": cfg.seed, "pope_images": cfg.eval.pope_images,
                "pope_seed": cfg.eval.seed, "pope_splits": list(cfg.eval.pope_splits),
                "chair_caption_metrics": cfg.eval.caption_metrics,
                "work_dir": str(Path(out) / "source" / "suite")}
    return load_config(SuiteData, None, {**defaults, **cfg.suite})


def open_source(cfg: CompareConfig, out: str | Path) -> Any:
    """The grid's data source: a COCO root + instruction file (real data), else the world in
    :func:`grid_dirs` (which must exist)."""
    src_dir, _ = grid_dirs(cfg, out)
    if is_real(cfg):
        from visalign.data.coco_source import CocoInstructSource

        return CocoInstructSource(cfg.coco, cfg.instruct, src_dir,
                                  image_folder=cfg.image_folder or None,
                                  alignment=cfg.alignment_source, train_split=cfg.train_split,
                                  eval_split=cfg.eval.split, eval_images=cfg.eval.n_images,
                                  seed=cfg.seed)
    from visalign.world import load_world

    return load_world(src_dir)


def demo_config(out: str, overrides: Any = ()) -> CompareConfig:
    """The README's main job: the micro-world grid sized for ≤ 15 minutes on 2 CPU cores."""
    from importlib import resources

    p = resources.files("visalign") / "resources" / "compare" / "demo.yaml"
    cfg = load_config(CompareConfig, Path(str(p)))
    return load_config(CompareConfig, None, [*overrides, f"out={out}"] if isinstance(
        overrides, (list, tuple)) else {**overrides, "out": out}, base=cfg)
