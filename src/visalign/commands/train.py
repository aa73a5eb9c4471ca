"""``visalign train sft|dpo|fisao``: thin wrappers over the method trainers.

Config resolution order: dataclass defaults → ``--preset`` (packaged YAML) → ``--config`` YAML
→ flags (--model/--data/--out/...) → trailing ``key=value`` overrides.
"""

from __future__ import annotations

import argparse

from visalign.commands._common import add_config_args
from visalign.methods.presets import PRESETS


def resolve(kind: str, args: argparse.Namespace):
    """Build the trainer config for ``kind`` from preset, file, flags and overrides."""
    from visalign.config import load_config, parse_overrides
    from visalign.methods.presets import preset_path, trainer_class

    Cls = trainer_class(kind)
    cfg = Cls()
    preset = getattr(args, "preset", None)
    if preset:
        if preset not in PRESETS[kind]:
            raise ValueError(f"preset {preset!r} is not a {kind} preset; "
                             f"choose from {', '.join(PRESETS[kind])}")
        if preset != "dpo":
            cfg = load_config(Cls, preset_path(preset))
    if args.config:
        cfg = load_config(Cls, args.config, base=cfg)
    flags = {}
    for key in ("model", "data", "pairs", "out", "image_root", "calibration", "verifier"):
        v = getattr(args, key, None)
        if v:
            flags[key] = v
    flags.update(parse_overrides(args.overrides))
    cfg = load_config(Cls, None, flags, base=cfg)
    if not cfg.model or not cfg.out:
        raise ValueError("--model and --out are required")
    return cfg


def _run(kind: str):
    def handler(args: argparse.Namespace) -> int:
        from visalign.methods.presets import trainer

        cfg = resolve(kind, args)
        res = trainer(kind)(cfg)
        print(f"model: {res.model_dir}  ({res.steps} steps, {res.seconds:.1f}s)")
        return 0
    return handler


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model: sft (cont-sft, nsft), dpo (gt-dpo, seva, "
                                     "sima, povid, any pair file), fisao")
    s = p.add_subparsers(dest="train_kind", metavar="KIND")
    for kind, help_ in (("sft", "continual SFT on LLaVA conversations (cont-sft, nsft)"),
                        ("dpo", "DPO on a preference-pair file (gt-dpo, seva, sima, povid)"),
                        ("fisao", "FiSAO token-level PPO with the model's own CLIP verifier")):
        q = s.add_parser(kind, help=help_)
        q.add_argument("--model", help="base model dir or hub id")
        q.add_argument("--out", help="output dir")
        q.add_argument("--image-root", dest="image_root", help="root of relative image paths")
        if kind == "dpo":
            q.add_argument("--pairs", help="pairs file from `visalign pairs`")
        else:
            q.add_argument("--data", help="LLaVA-format records")
        if kind == "fisao":
            q.add_argument("--calibration", help="calibration.json from `visalign fisao "
                                                 "calibrate`")
            q.add_argument("--verifier", help="verifier CLIP dir (default MODEL/verifier)")
        q.add_argument("--preset", choices=PRESETS[kind] if kind != "fisao" else None,
                       default="fisao" if kind == "fisao" else None,
                       help="method preset (packaged YAML)")
        add_config_args(q)
        q.set_defaults(func=_run(kind))
