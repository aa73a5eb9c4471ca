"""``visalign generate``: answer (image, prompt) records with a VLM into a resumable JSONL."""

from __future__ import annotations

import argparse

from visalign.commands._common import add_config_args

# flag -> GenerationConfig field; flags left unset keep the --config / key=value / default value.
_FLAGS = {
    "image_root": "image_root", "id_key": "id_key", "prompt_key": "prompt_key",
    "image_key": "image_key", "batch_size": "batch_size", "max_new_tokens": "max_new_tokens",
    "sample": "do_sample", "temperature": "temperature", "top_p": "top_p", "seed": "seed",
    "limit": "limit", "adapter": "adapter", "dtype": "dtype", "device": "device",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="answer (image, prompt) records with a VLM (resumable JSONL)",
        description="Run a VLM over prompt records (or LLaVA conversation records: the first "
                    "human turn is the prompt) and append one answer per id to --out. Re-running "
                    "skips ids already answered. Under `accelerate launch` the records are split "
                    "across processes and merged by rank 0.")
    p.add_argument("--model", required=True, help="HF model dir or hub id")
    p.add_argument("--data", required=True, help="JSON list or JSONL of records")
    p.add_argument("--out", required=True, help="answers JSONL (appended)")
    p.add_argument("--image-root", default=None, help="dir relative image paths start from "
                                                      "(default: the data file's dir)")
    p.add_argument("--id-key", default=None, help="id field (default id; POPE: question_id)")
    p.add_argument("--prompt-key", default=None, help="prompt field (default prompt)")
    p.add_argument("--image-key", default=None, help="image field (default image)")
    p.add_argument("--batch-size", type=int, default=None, help="default 16")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 128")
    p.add_argument("--sample", action="store_true", default=None,
                   help="sample (default: greedy)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None,
                   help="sampling seed; each record uses hash(seed, id)")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--adapter", default=None, help="LoRA adapter dir")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "auto"])
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (default)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_args(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from visalign.config import load_config, save_run_config
    from visalign.models.generation import GenerationConfig, generate_answers

    cfg = load_config(GenerationConfig, args.config, args.overrides)
    for flag, name in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg, name, value)
    if args.no_progress:
        cfg.progress = False
    out = generate_answers(args.model, args.data, args.out, cfg=cfg)
    from pathlib import Path

    from accelerate import PartialState

    if PartialState().is_main_process:
        save_run_config(cfg, Path(out).parent, name=f"{Path(out).name}.config.yaml")
        print(out)
    return 0
