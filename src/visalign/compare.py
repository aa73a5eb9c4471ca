"""``visalign compare`` / ``visalign demo``: every method on the same footing, end to end.

The grid: a base model, then each method trained from it on alignment subsets of the base's own
instruction data (nested subsets of two sizes, the paper's 5k/10k analogue: the smaller set's
images are a prefix of the larger's), each result evaluated by the same suite with the same
generation settings (:func:`visalign.eval.suite.evaluate_model`). Every cell lives in its own
directory, ``OUT/cells/<method>-<size>/``, and is finished once its ``row.json`` exists, so a
re-run (after a crash, or with a method added) only computes what is missing.

Stages call the same library functions and command handlers a user runs by hand (world build,
world base, nsft build, pairs, train sft/dpo/fisao, fisao calibrate), so the grid exercises
exactly the user-facing paths.

Outputs: ``OUT/results.json`` ("Shared result format" in ``../shared/DESIGN.md``, a path
relative to the repository root), ``results.md`` / ``results.csv`` (Table-9 style with (+x)
totals), the figures (``figures/*.png``: the method bars, FiSAO's Fig. 1 token- vs
sentence-level score distributions, Fig. 2 BLEU/ROUGE correlation of sentence scores, Fig. 4
reward shift before/after FiSAO) and ``report.md`` embedding them.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal

from visalign.config import config_to_dict, field, load_config, save_run_config
from visalign.eval.suite import EvalSettings
from visalign.io import DataError, atomic_write_text, read_json, write_json

METHODS = ("cont-sft", "nsft", "gt-dpo", "seva", "sima", "povid", "fisao")
# what `visalign fisao calibrate` plots beside calibration.json -> the report's caption
CALIBRATION_FIGURES = {
    "fig1a_token_scores.png": "Fig. 1a: token-level verifier scores",
    "fig1b_sentence_scores.png": "Fig. 1b: sentence-level verifier scores",
    "fig2a_sentence_vs_bleu.png": "Fig. 2a: sentence score vs BLEU-4",
    "fig2b_sentence_vs_rouge.png": "Fig. 2b: sentence score vs ROUGE-L"}
DPO_METHODS = ("gt-dpo", "seva", "sima", "povid")
# Which alignment records each method consumes. nSFT (and its cont-SFT baseline) train on long
# descriptions plus short answers, as the paper mixes LLaVA detail descriptions with OCRVQA;
# the preference baselines and FiSAO work on detailed-description prompts, as their papers do.
METHOD_TASKS = {"cont-sft": ("detail", "vqa"), "nsft": ("detail", "vqa"),
                "gt-dpo": ("detail",), "seva": ("detail",), "sima": ("detail",),
                "povid": ("detail",), "fisao": ("detail",)}


@dataclasses.dataclass
class CompareConfig:
    out: str = field("", help="output dir of the comparison")
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
    sft: dict = field({}, help="overrides of every SFT run (cont-sft, nsft), e.g. {lr: 1e-4}")
    dpo: dict = field({}, help="overrides of every DPO run (gt-dpo, seva, sima, povid)")
    fisao: dict = field({}, help="overrides of the FiSAO run")
    fisao_calibrate: dict = field({}, help="overrides of the verifier calibration "
                                           "(CalibrateConfig), e.g. {pooling: patch}")
    nsft_data: dict = field({}, help="overrides of nsft build (NsftDataConfig)")
    pairs: dict = field({}, help="overrides of the pair builders (PairsConfig)")
    method_overrides: dict = field({}, help="per-method trainer overrides, e.g. "
                                            "{seva: {lr: 1e-5}}")
    progress: bool = field(True, help="progress bars and stage lines")


PACKAGED = "packaged"


def world_fingerprint(world_dir: str | Path) -> str:
    """SHA-256 over the files a base model is trained on (train annotations and instructions)."""
    import hashlib

    h = hashlib.sha256()
    for rel in ("annotations/instances_train.json", "annotations/captions_train.json",
                "llava/train.json", "synonyms.txt"):
        h.update(rel.encode())
        h.update((Path(world_dir) / rel).read_bytes())
    return h.hexdigest()


def packaged_base_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("visalign") / "resources" / "microworld_base"))


def install_packaged_base(world_dir: str | Path, dst: Path) -> Path:
    """Copy the shipped base model to ``dst`` after checking it was trained on this world.

    The shipped model is what ``visalign world base`` trains on ``visalign world build --preset
    small --seed 0`` (``base_config.yaml`` inside says with which settings); it saves the demo
    the base model's training time. A world of another preset, seed or generator version has
    another fingerprint, and then the base must be trained (``base_model=''``).
    """
    src = packaged_base_dir()
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"{src}: no packaged base model in this installation; "
                                "use base_model='' to train one")
    want = (src / "world_fingerprint.txt").read_text().strip()
    got = world_fingerprint(world_dir)
    if got != want:
        raise ValueError(f"{world_dir}: the packaged base was trained on another world "
                         f"(fingerprint {want[:12]} != {got[:12]}); use base_model='' to train "
                         "a base on this one")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    tmp.replace(dst)
    return dst


class _Stages:
    """Wall time per stage, kept in ``OUT/timings.json`` across resumed runs."""

    def __init__(self, out: Path, progress: bool):
        self.path = out / "timings.json"
        self.times: dict[str, float] = read_json(self.path) if self.path.exists() else {}
        self.progress = progress

    def run(self, name: str, fn: Callable[[], Any], done: bool = False) -> Any:
        if done:
            self._say(f"[compare] {name}: done earlier, skipped")
            return None
        self._say(f"[compare] {name} ...")
        t = time.time()
        res = fn()
        self.times[name] = round(time.time() - t, 2)
        write_json(self.path, self.times)
        self._say(f"[compare] {name}: {self.times[name]:.1f}s")
        return res

    def _say(self, msg: str) -> None:
        if self.progress:
            print(msg, file=sys.stderr, flush=True)


def _cli(argv: list[str]) -> None:
    """Run a visalign command as a user would; its errors become exceptions here."""
    from visalign.cli import main

    rc = main([*argv, "--debug"])
    if rc:
        raise RuntimeError(f"`visalign {' '.join(argv)}` failed with exit code {rc}")


def _kv(d: dict, prefix: str = "") -> list[str]:
    """A nested dict as ``key=value`` overrides (YAML scalars)."""
    import yaml

    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _kv(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                       .replace("\n...", ""))
    return out


def alignment_image_ids(world: Any, seed: int) -> list[int]:
    """The train images in the grid's order: nested prefixes are the alignment subsets."""
    from visalign.data.coco import load_coco_instances

    ids = sorted(load_coco_instances(world.instances_path(world.train_split)).getImgIds())
    random.Random(seed).shuffle(ids)
    return ids


def write_alignment_data(world: Any, image_ids: list[int], tasks: tuple[str, ...],
                         path: Path) -> Path:
    """LLaVA records of ``tasks`` for ``image_ids`` (image paths relative to the world)."""
    from visalign.data.llava import load_llava_records

    if path.exists():  # written by an earlier cell of this size; the world does not change
        return path
    keep = set(image_ids)
    recs = [r for r in load_llava_records(world.llava_path(world.train_split))
            if r.get("image_id") in keep and r.get("task") in tasks]
    if not recs:
        raise ValueError(f"{world.root}: no {tasks} records for the alignment images")
    write_json(path, recs)
    return path


def _trainer_cfg(kind: str, method: str, cfg: CompareConfig, flags: dict) -> Any:
    from visalign.commands.train import preset_path

    if kind == "sft":
        from visalign.methods.sft import SftConfig as Cls
        extra = cfg.sft
    elif kind == "dpo":
        from visalign.methods.dpo import DpoConfig as Cls
        extra = cfg.dpo
    else:
        from visalign.methods.fisao import FisaoConfig as Cls
        extra = cfg.fisao
    c = load_config(Cls, preset_path(method))
    c = load_config(Cls, None, extra, base=c)
    own = cfg.method_overrides.get(method, {})
    c = load_config(Cls, None, own, base=c)
    # the grid's seed, unless the kind's or the method's overrides name one (a seed sweep)
    top = {"progress": cfg.progress, **flags}
    if "seed" not in extra and "seed" not in own:
        top["seed"] = cfg.seed
    return load_config(Cls, None, top, base=c)


def grid_dirs(cfg: CompareConfig, out: str | Path) -> tuple[Path, Path]:
    """(world dir, base model dir) of a grid written to ``out``: the config's own, or the ones
    the grid builds (or installs, for the packaged base) inside ``out``."""
    out = Path(out)
    world = Path(cfg.world) if cfg.world else out / "world"
    base = Path(cfg.base_model) if cfg.base_model not in ("", PACKAGED) else out / "base"
    return world, base


def check_alignment_sizes(cfg: CompareConfig, n_train: int) -> None:
    """Raise ``ValueError`` unless the grid's largest alignment set (plus FiSAO's calibration
    images, which must stay disjoint from it) fits in ``n_train`` train images."""
    sizes = sorted(set(cfg.data_sizes))
    if not sizes:
        return
    if min(sizes) <= 0:
        raise ValueError(f"data sizes must be positive, got {sizes}")
    if sizes[-1] > n_train:
        raise ValueError(f"data size {sizes[-1]} > {n_train} train images")
    if "fisao" in cfg.methods and sizes[-1] + cfg.calibration_images > n_train:
        raise ValueError(f"{sizes[-1]} alignment + {cfg.calibration_images} calibration images "
                         f"> {n_train} train images")


def run_compare(cfg: CompareConfig) -> dict:
    """Run (or resume) the grid; returns the ``results.json`` content."""
    from visalign.eval.suite import evaluate_model
    from visalign.report import (degeneration_notes, plot_chair_deltas, plot_methods,
                                 report_markdown, write_results)
    from visalign.world import build_world, load_world, world_config

    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not cfg.out:
        raise ValueError("compare: out=DIR is required")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, out)
    st = _Stages(out, cfg.progress)
    t_all = time.time()

    # 1. world
    world_dir, base = grid_dirs(cfg, out)
    if not cfg.world:
        # fail before minutes of world building, not after them
        wcfg = world_config(cfg.world_preset, seed=cfg.seed)
        check_alignment_sizes(cfg, wcfg.n_train)
        st.run("world", lambda: build_world(wcfg,
                                            world_dir, overwrite=True, preset=cfg.world_preset,
                                            progress=cfg.progress),
               done=(world_dir / "world.json").exists())
    world = load_world(world_dir)

    # 2. base model (trained here unless given), evaluated by the grid's own suite
    if cfg.base_model == PACKAGED:
        st.run("base (packaged)", lambda: install_packaged_base(world_dir, base),
               done=(base / "config.json").exists())
    elif not cfg.base_model:
        def train_base() -> None:
            from visalign.world.base import base_config, build_base_model
            bc = base_config(cfg.base_preset, {**cfg.base_overrides, "world": str(world_dir),
                                               "out": str(base), "seed": cfg.seed,
                                               "progress": cfg.progress, "skip_eval": True})
            build_base_model(bc)
        st.run("base", train_base, done=(base / "config.json").exists()
               and (base / "verifier").exists())
    rows: list[dict] = []
    cells = out / "cells"
    rows.append(_cell(st, cells / "base", "base", 0,
                      lambda d: str(base), world, cfg, evaluate_model))

    # 3. alignment subsets
    data = out / "data"
    data.mkdir(exist_ok=True)
    order = alignment_image_ids(world, cfg.seed)
    sizes = sorted(set(cfg.data_sizes))
    try:
        check_alignment_sizes(cfg, len(order))
    except ValueError as e:
        raise ValueError(f"{world_dir}: {e}") from None
    calib_ids = order[len(order) - cfg.calibration_images:]

    # 4. FiSAO's verifier calibration (once: it depends on the base model only)
    calib_dir = out / "fisao_calibration"
    if "fisao" in cfg.methods and cfg.fisao_calibration:
        calib_dir.mkdir(exist_ok=True)
        shutil.copyfile(cfg.fisao_calibration, calib_dir / "calibration.json")
        # its siblings too: FiSAO looks for the sentence-level calibration (reward_level=
        # sentence) and the entity set next to calibration.json
        # and the calibration's report and figures, for the results' analysis and Fig. 1/2
        for name in ("calibration_sentence.json", "entities.json", "calibration_report.json",
                     *CALIBRATION_FIGURES):
            sib = Path(cfg.fisao_calibration).parent / name
            if sib.exists():
                shutil.copyfile(sib, calib_dir / name)
    elif "fisao" in cfg.methods:
        st.run("fisao-calibrate", lambda: _calibrate(world, base, calib_ids, calib_dir, cfg),
               done=(calib_dir / "calibration.json").exists())

    # 5. the grid
    for size in sizes:
        ids = order[:size]
        for method in cfg.methods:
            def train(d: Path, method=method, ids=ids) -> str:
                return _train_method(method, world, base, ids, d, data, calib_dir, cfg)
            rows.append(_cell(st, cells / f"{method}-{size}", method, size, train, world, cfg,
                              evaluate_model))

    # 6. table, figures, report (failed cells are listed, not tabled; a re-run retries them)
    failures = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    figs_dir = out / "figures"
    figs_dir.mkdir(exist_ok=True)
    figures: dict[str, str] = {}
    plot_methods(rows, figs_dir / "methods.png")
    figures["Hallucination metrics per method"] = "figures/methods.png"
    analysis: dict[str, Any] = {}
    deltas = chair_vs_base(cells, [f"{r['method']}-{r['data_size']}" for r in rows
                                   if r["method"] != "base"])
    if deltas:
        analysis["chair_vs_base"] = deltas
        plot_chair_deltas(deltas, figs_dir / "chair_vs_base.png")
        figures["CHAIR change against the base (95 % paired bootstrap interval over images)"] = \
            "figures/chair_vs_base.png"
    matched = chair_vs_length_matched(cells, [d["cell"] for d in deltas], world,
                                      cfg.eval.split)
    if matched:
        analysis["chair_vs_length_matched_base"] = matched
        plot_chair_deltas(matched, figs_dir / "chair_vs_length_matched_base.png",
                          versus="the base cut to the cell's length")
        figures["CHAIR against the base's own descriptions cut to each cell's length, image by "
                "image (< 0: fewer hallucinations than the base writing as little; 95 % paired "
                "bootstrap interval)"] = "figures/chair_vs_length_matched_base.png"
    if "fisao" in cfg.methods and (calib_dir / "calibration_report.json").exists():
        rep = read_json(calib_dir / "calibration_report.json")
        analysis["calibration"] = {k: rep.get(k) for k in (
            "mu_gt", "mu_hal", "s_min", "s_max", "auroc_token", "auroc_sentence",
            "auroc_response", "n_gt", "n_hal")}
        for fname, caption in CALIBRATION_FIGURES.items():
            if (calib_dir / fname).exists():
                shutil.copyfile(calib_dir / fname, figs_dir / fname)
                figures[caption] = f"figures/{fname}"
    # Fig. 4 needs only calibration.json (a grid given fisao_calibration= may lack the report)
    if "fisao" in cfg.methods and (calib_dir / "calibration.json").exists():
        for size in sizes:
            sdir = out / "fisao_shift" / str(size)
            shift = _reward_shift(world, base, cells / "base" / "eval",
                                  cells / f"fisao-{size}" / "eval", calib_dir, sdir)
            if not shift:
                continue
            analysis[f"reward_shift_{size}"] = {
                k: v for k, v in shift.items() if k.startswith(("neg_share", "pos_share"))}
            for kind in ("score", "reward"):
                src = sdir / f"fig4_{kind}_shift.png"
                if src.exists():
                    shutil.copyfile(src, figs_dir / f"fig4_{kind}_shift_{size}.png")
                    figures[f"Fig. 4: generated-object {kind}s before/after FiSAO "
                            f"({size} images)"] = f"figures/fig4_{kind}_shift_{size}.png"
                    stats = shift.get("scores" if kind == "score" else "rewards", {})
                    analysis[f"reward_shift_{size}"][f"{kind}_mean_before"] = \
                        stats.get("mean_before")
                    analysis[f"reward_shift_{size}"][f"{kind}_mean_after"] = \
                        stats.get("mean_after")
    timings = dict(st.times)
    timings["total_this_run"] = round(time.time() - t_all, 2)
    results = {"rows": rows, "config": config_to_dict(cfg), "timings": timings,
               "analysis": analysis, "failures": failures}
    write_json(out / "results.json", results)
    write_results(rows, out, title="visalign comparison")
    notes = [f"FAILED {f['method']}-{f['data_size']}: {f['error']}" for f in failures]
    warnings = degeneration_notes(rows)
    for n in warnings:
        print(n, file=sys.stderr)
    notes += warnings
    notes += [f"{k}: {v}" for k, v in analysis.get("calibration", {}).items() if v is not None]
    atomic_write_text(out / "report.md", report_markdown(rows, figures, st.times, notes))
    return results


def chair_vs_base(cells: Path, names: list[str], n_boot: int = 1000) -> list[dict]:
    """CHAIR change of each cell in ``names`` (``<method>-<size>`` dirs under ``cells``) against
    the base on the same held-out descriptions, with a paired bootstrap interval (CHAIR on
    ~150 captions moves by a few points by chance). Cells without a CHAIR result are left out;
    no base result gives ``[]``. Each entry: ``cell`` plus ``paired_chair_bootstrap``'s
    ``n``, ``base``, ``other``, ``delta``, ``ci``, ``p_lower``."""
    from visalign.eval.significance import paired_chair_bootstrap

    base = cells / "base" / "eval" / "chair.json"
    if not base.exists():
        return []
    base_caps = read_json(base)["captions"]
    out = []
    for name in names:
        f = cells / name / "eval" / "chair.json"
        if not f.exists():
            continue
        b = paired_chair_bootstrap(base_caps, read_json(f)["captions"], n_boot=n_boot)
        out.append({"cell": name, **{k: b[k] for k in
                                     ("n", "base", "other", "delta", "ci", "p_lower")}})
    return out


def chair_vs_length_matched(cells: Path, names: list[str], world: Any, split: str,
                            n_boot: int = 1000) -> list[dict]:
    """CHAIR of each cell in ``names`` against the base's descriptions cut, image by image, to
    the cell's length (:mod:`visalign.eval.length_matched`): a lower CHAIR that is only shorter
    descriptions shows up here as a change near 0. Cells without a CHAIR result are left out;
    no base result gives ``[]``. Each entry: ``cell`` plus
    :func:`~visalign.eval.length_matched.chair_vs_length_matched_base`'s fields."""
    from visalign.eval.length_matched import chair_vs_length_matched_base
    from visalign.eval.suite import world_chair

    base = cells / "base" / "eval" / "chair.json"
    if not base.exists() or not names:
        return []
    chair = world_chair(world, split)   # the suite's ground truth, reference captions included
    base_caps = read_json(base)["captions"]
    out = []
    for name in names:
        f = cells / name / "eval" / "chair.json"
        if f.exists():
            out.append({"cell": name, **chair_vs_length_matched_base(
                chair, base_caps, read_json(f)["captions"], n_boot=n_boot)})
    return out


def _cell(st: _Stages, d: Path, method: str, size: int, train: Callable[[Path], str],
          world: Any, cfg: CompareConfig, evaluate: Callable) -> dict:
    """Train (unless done) and evaluate one (method, size); ``row.json`` marks it finished.

    Without ``row.json`` but with a finished model (``train/model``), only the evaluation runs:
    delete the rows (and ``eval/``) to re-evaluate a grid under new ``eval`` settings."""
    row_path = d / "row.json"
    name = f"{method}-{size}" if size else method
    if row_path.exists():
        st._say(f"[compare] {name}: done earlier, skipped")
        return read_json(row_path)
    d.mkdir(parents=True, exist_ok=True)
    # A finished trainer leaves train/model (written atomically, last): a grid cut off during
    # evaluation, or re-evaluated with new eval settings, does not train again.
    trained = d / "train" / "model"
    try:
        if method != "base" and (trained / "config.json").exists():
            st._say(f"[compare] {name}:train: done earlier, skipped (model in {trained})")
            model_dir = str(trained)
        else:
            model_dir = st.run(f"{name}:train", lambda: train(d)) if method != "base" \
                else train(d)
        ev = st.run(f"{name}:eval", lambda: evaluate(model_dir, world, d / "eval", cfg.eval))
    except Exception as e:  # noqa: BLE001 - one failed cell must not lose the whole grid
        if method == "base":
            raise
        import traceback

        atomic_write_text(d / "error.txt", traceback.format_exc())
        st._say(f"[compare] {name}: FAILED ({type(e).__name__}: {e}); see {d / 'error.txt'}")
        return {"method": method, "data_size": size, "error": f"{type(e).__name__}: {e}"}
    (d / "error.txt").unlink(missing_ok=True)
    row = {"method": method, "data_size": size, "metrics": ev["metrics"],
           "model": str(model_dir)}
    write_json(row_path, row)
    return row


def _train_method(method: str, world: Any, base: Path, ids: list[int], d: Path, data: Path,
                  calib_dir: Path, cfg: CompareConfig) -> str:
    """Build the method's data from the base model and train it; returns the model dir."""
    tasks = METHOD_TASKS[method]
    if method == "fisao" and (cfg.fisao.get("existence_reward")
                              or float(cfg.fisao.get("anchor_weight") or 0) > 0):
        tasks = tasks + ("existence",)    # the extensions' yes/no prompts (FisaoConfig)
    align = write_alignment_data(world, ids, tasks, data / f"align_{len(ids)}_{'+'.join(tasks)}"
                                                           f".json")
    root = str(world.image_root)
    ann = [world.instances_path(world.train_split), world.captions_path(world.train_split),
           world.synonyms_path]
    if method == "cont-sft":
        from visalign.methods.sft import train_sft
        res = train_sft(_trainer_cfg("sft", method, cfg, {
            "model": str(base), "data": str(align), "image_root": root, "out": str(d / "train"),
            "preset": method}))
    elif method == "nsft":
        from visalign.methods.sft import train_sft
        nd = d / "nsft_data"
        if not (nd / "nsft.json").exists():
            _cli(["nsft", "build", "--data", str(align), "--image-root", root, "--model",
                  str(base), "--instances", str(ann[0]), "--coco-captions", str(ann[1]),
                  "--synonyms", str(ann[2]), "--out", str(nd),
                  *_kv({"seed": cfg.seed, **cfg.nsft_data})])
        res = train_sft(_trainer_cfg("sft", method, cfg, {
            "model": str(base), "data": str(nd / "nsft.json"), "image_root": root,
            "out": str(d / "train"), "preset": method}))
    elif method in DPO_METHODS:
        from visalign.methods.dpo import train_dpo
        pairs = d / "pairs.json"
        if not pairs.exists():
            extra = (["--instances", str(ann[0]), "--coco-captions", str(ann[1]),
                      "--synonyms", str(ann[2])] if method == "povid" else [])
            _cli(["pairs", method, "--data", str(align), "--image-root", root, "--model",
                  str(base), "--out", str(pairs), *extra,
                  *_kv({"seed": cfg.seed, **cfg.pairs})])
        res = train_dpo(_trainer_cfg("dpo", method, cfg, {
            "model": str(base), "pairs": str(pairs), "image_root": root,
            "out": str(d / "train"), "preset": method}))
    elif method == "fisao":
        from visalign.methods.fisao import train_fisao
        res = train_fisao(_trainer_cfg("fisao", method, cfg, {
            "model": str(base), "data": str(align), "image_root": root,
            "out": str(d / "train"), "calibration": str(calib_dir / "calibration.json"),
            # the calibration's entities.json (world vocabulary included) when it wrote one
            **({} if (calib_dir / "entities.json").exists() else {"extra_vocab": str(ann[2])})
        }))
    else:
        raise ValueError(f"unknown method {method!r}")
    return str(res.model_dir)


def _calibrate(world: Any, base: Path, image_ids: list[int], out: Path,
               cfg: CompareConfig) -> dict:
    """FiSAO Eq. 7 calibration on train images outside every alignment subset."""
    from visalign.io import read_jsonl, write_jsonl
    from visalign.methods.fisao_calibrate import CalibrateConfig, calibrate_verifier

    keep = set(image_ids)
    prompts = [p for p in read_jsonl(world.prompts_path(world.train_split))
               if p["image_id"] in keep]
    out.mkdir(parents=True, exist_ok=True)
    ppath = out / "prompts.jsonl"
    write_jsonl(ppath, prompts)
    return calibrate_verifier(CalibrateConfig(
        model=str(base), prompts=str(ppath), image_root=str(world.image_root),
        instances=str(world.instances_path(world.train_split)),
        captions=str(world.captions_path(world.train_split)),
        synonyms=str(world.synonyms_path), out=str(out), n_images=len(prompts),
        max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
        **cfg.fisao_calibrate))


def _reward_shift(world: Any, base: Path, before_dir: Path, after_dir: Path, calib_dir: Path,
                  out: Path) -> dict | None:
    """Fig. 4: verifier scores and rewards of the objects each model names on held-out images."""
    from visalign.methods.fisao_calibrate import reward_shift

    fb, fa = before_dir / "answers_detail.jsonl", after_dir / "answers_detail.jsonl"
    if not (fa.exists() and fb.exists()):
        return None
    try:
        return reward_shift(fb, fa, out, verifier=base / "verifier",
                            calibration=calib_dir / "calibration.json",
                            image_root=str(world.image_root))
    except DataError as e:  # e.g. a model that names no object: no Fig. 4, the grid goes on
        print(f"[compare] Fig. 4 skipped: {e}", file=sys.stderr)
        return None


def demo_config(out: str, overrides: Any = ()) -> CompareConfig:
    """The README's main job: the micro-world grid sized for ≤ 15 minutes on 2 CPU cores."""
    from importlib import resources

    p = resources.files("visalign") / "resources" / "compare" / "demo.yaml"
    cfg = load_config(CompareConfig, Path(str(p)))
    return load_config(CompareConfig, None, [*overrides, f"out={out}"] if isinstance(
        overrides, (list, tuple)) else {**overrides, "out": out}, base=cfg)
