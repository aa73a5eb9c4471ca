"""``visalign pairs gt-dpo|seva|sima|povid``: build a DPO preference-pair file.

The pair file format is documented in :mod:`visalign.methods.pairs`; train it with
``visalign train dpo``. Each command writes ``--out`` (``.jsonl`` -> JSONL, else a JSON list),
``<out>.stats.json`` (what was built and skipped) and ``<out>.config.yaml``. With ``--model``
the responses are generated here (resumable, in ``<out stem>_work/``); noised images for SeVa
and POVID stage 2 are written there too (named by noise step, seed and resize, so changing
them never reuses stale images or answers). Image paths in the pair file are the data's (relative
to ``--image-root``, default the data file's directory): pass the same ``--image-root`` to
``visalign train dpo``.
"""

from __future__ import annotations

import argparse
import re
import sys
import zlib
from pathlib import Path
from typing import Any

from visalign.commands._common import add_config_args

_HELP = {
    "gt-dpo": "chosen = ground truth, rejected = the model's greedy answer",
    "seva": "chosen = answer on the image, rejected = answer on the diffusion-noised image",
    "sima": "k sampled answers ranked by the model as its own critic; best vs worst",
    "povid": "GT vs GT with injected hallucinations (stage 1) and vs answers on noised "
             "images (stage 2)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pairs`` command group."""
    p = subparsers.add_parser("pairs", help="build DPO preference pairs (gt-dpo, seva, sima, "
                                            "povid)", description=__doc__)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="method", metavar="METHOD")
    for method, help_ in _HELP.items():
        m = sub.add_parser(method, help=help_,
                           description=f"{help_}. Config keys (key=value): see PairsConfig in "
                                       "visalign.methods.pairs.")
        m.add_argument("--data", required=True, help="LLaVA records (JSON/JSONL)")
        m.add_argument("--image-root", default=None,
                       help="dir relative image paths start from (default: the data file's dir)")
        m.add_argument("--model", default=None, help="model dir: generate responses with it")
        m.add_argument("--out", required=True, help="pairs file (.json or .jsonl)")
        if method in ("gt-dpo", "seva"):
            m.add_argument("--answers", default=None,
                           help="the model's greedy answers on the images (JSONL id + answer)")
        if method in ("seva", "povid"):
            m.add_argument("--noisy-answers", default=None,
                           help="the model's answers on noised images (JSONL id + answer "
                                "[+ image])")
        if method == "sima":
            m.add_argument("--samples", default=None,
                           help="sampled responses: JSONL of id + responses (list), or several "
                                "id + answer lines per id (the critic still needs --model)")
        if method == "povid":
            m.add_argument("--instances", default=None, help="COCO instances JSON (rule edits)")
            m.add_argument("--coco-captions", default=None, help="COCO captions JSON")
            m.add_argument("--synonyms", default=None, help="CHAIR synonym table")
        add_config_args(m)
        m.set_defaults(func=_run)


# ---------------------------------------------------------------------------------------------
# Generation helpers (the model is loaded once per command)
# ---------------------------------------------------------------------------------------------

class _Model:
    def __init__(self, path: str, cfg: Any, image_root: str):
        from visalign.models import load_vlm

        self.path, self.cfg, self.image_root = path, cfg, Path(image_root)
        self.vlm = load_vlm(path, dtype=cfg.dtype, device=cfg.device)

    def answers(self, records: list[dict], out_path: Path, **gen: Any) -> list[dict]:
        """Resumable answers (``visalign.models.generation``) for LLaVA/prompt records."""
        from visalign.io import read_jsonl
        from visalign.models.generation import GenerationConfig, generate_answers

        gcfg = GenerationConfig(batch_size=self.cfg.batch_size,
                                max_new_tokens=self.cfg.max_new_tokens,
                                image_root=str(self.image_root), dtype=self.cfg.dtype,
                                device=self.cfg.device, seed=self.cfg.seed, **gen)
        generate_answers(self.vlm, records, out_path, cfg=gcfg, model_name=self.path)
        return read_jsonl(out_path)

    def image(self, record: dict) -> Any:
        from PIL import Image

        p = Path(record["image"])
        p = p if p.is_absolute() else self.image_root / p
        with Image.open(p) as im:
            return im.convert("RGB")

    def generate_fn(self, images: list, prompts: list[str]) -> list[str]:
        """Greedy ``vlm.generate`` in batches of ``batch_size`` (the SIMA critic)."""
        out: list[str] = []
        bs = max(1, self.cfg.batch_size)
        for i in range(0, len(prompts), bs):
            out += self.vlm.generate(images[i:i + bs], prompts[i:i + bs],
                                     max_new_tokens=self.cfg.critic_max_new_tokens)
        return out

    def choice_fn(self, images: list, prompts: list[str]) -> list[int]:
        """The SIMA critic's forced choice: 1 or 2, whichever of the assistant replies
        "Response 1" / "Response 2" has the higher log-probability after each prompt."""
        import torch

        from visalign.models import sequence_logprobs

        out: list[int] = []
        bs = max(1, self.cfg.batch_size)
        model = self.vlm.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(prompts), bs):
                    ims, ps = list(images[i:i + bs]), prompts[i:i + bs]
                    convs = [[{"from": "human", "value": "<image>\n" + p},
                              {"from": "gpt", "value": f"Response {c}"}]
                             for c in (1, 2) for p in ps]
                    lp = sequence_logprobs(model, self.vlm.encode(ims + ims, convs)).sum(-1)
                    n = len(ps)
                    out += [1 if a >= b else 2
                            for a, b in zip(lp[:n].tolist(), lp[n:].tolist())]
        finally:
            model.train(was_training)
        return out


def _resize_shorter(img: Any, side: int) -> Any:
    from PIL import Image

    w, h = img.size
    if side <= 0 or min(w, h) == side:
        return img
    scale = side / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                      Image.Resampling.BICUBIC)


def _noise_tag(cfg: Any) -> str:
    """What the noised images depend on (step, seed, resize), for file names."""
    return f"t{cfg.noise_step}_s{cfg.seed}" + (f"_r{cfg.noise_resize}" if cfg.noise_resize
                                               else "")


def _noised_records(records: list[dict], model: _Model, work: Path, cfg: Any) -> list[dict]:
    """Copies of ``records`` pointing at diffusion-noised images (written once, PNG)."""
    from visalign.methods.image_noise import diffusion_noise

    noised_dir = work / "noised"
    noised_dir.mkdir(parents=True, exist_ok=True)
    tag = _noise_tag(cfg)
    out = []
    for rec in records:
        rid = str(rec["id"])
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in rid)
        path = noised_dir / f"{safe}_{zlib.crc32(rid.encode()):08x}_{tag}.png"
        if not path.exists():
            img = _resize_shorter(model.image(rec), cfg.noise_resize)
            img = diffusion_noise(img, cfg.noise_step, zlib.crc32(f"{cfg.seed}:{rid}".encode()))
            tmp = path.with_suffix(".tmp.png")
            img.save(tmp)
            tmp.replace(path)
        out.append({**rec, "image": str(path.resolve())})
    return out


def _noisy_answers(records: list[dict], model: _Model, work: Path, cfg: Any) -> list[dict]:
    return model.answers(_noised_records(records, model, work, cfg),
                         work / f"answers_noise_{_noise_tag(cfg)}.jsonl")


def _samples_from_file(path: str) -> dict[str, list[str]]:
    from visalign.io import DataError, read_records

    out: dict[str, list[str]] = {}
    for i, r in enumerate(read_records(path)):
        if "id" not in r:
            raise DataError(path, "missing id", record=i, field="id")
        rid = str(r["id"])
        if "responses" not in r and re.fullmatch(r".+#\d+", rid):
            rid = rid.rsplit("#", 1)[0]   # "<id>#<j>": the j-th sample of <id>
        if isinstance(r.get("responses"), list) and all(isinstance(x, str)
                                                        for x in r["responses"]):
            out.setdefault(rid, []).extend(r["responses"])
        elif isinstance(r.get("answer"), str):
            out.setdefault(rid, []).append(r["answer"])
        else:
            raise DataError(path, "expected 'responses' (list of strings) or 'answer'",
                            record=i, field="responses")
    return out


# ---------------------------------------------------------------------------------------------
# Handler
# ---------------------------------------------------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    import random

    from visalign.config import ConfigError, load_config, save_run_config
    from visalign.io import read_jsonl, read_records, write_json
    from visalign.methods import pairs as P

    cfg = load_config(P.PairsConfig, args.config, args.overrides)
    method = args.method
    out = Path(args.out)
    work = out.parent / f"{out.stem}_work"
    records = read_records(args.data)
    image_root = args.image_root or str(Path(args.data).parent)
    model = _Model(args.model, cfg, image_root) if args.model else None

    def need(flag: str, value: Any) -> Any:
        if value is None and model is None:
            raise ConfigError(f"pairs {method}: give --model or {flag}")
        return value

    if method == "gt-dpo":
        if need("--answers", args.answers) is not None:
            answers = read_jsonl(args.answers, tolerate_partial_last_line=True)
        else:
            answers = model.answers(records, work / "answers.jsonl")
        pairs, stats = P.build_gt_dpo_pairs(records, answers)
    elif method == "seva":
        if args.answers is not None:
            clean = read_jsonl(args.answers, tolerate_partial_last_line=True)
        else:
            need("--answers", None)
            clean = model.answers(records, work / "answers.jsonl")
        if args.noisy_answers is not None:
            noisy = read_jsonl(args.noisy_answers, tolerate_partial_last_line=True)
        else:
            need("--noisy-answers", None)
            noisy = _noisy_answers(records, model, work, cfg)
        pairs, stats = P.build_seva_pairs(records, clean, noisy, noise_step=cfg.noise_step)
    elif method == "sima":
        if model is None:
            raise ConfigError("pairs sima: --model is required (the model ranks its own "
                              "responses)")
        if args.samples is not None:
            samples = _samples_from_file(args.samples)
        else:
            expanded = [{**r, "id": f"{r['id']}#{j}"} for r in records
                        for j in range(cfg.num_samples)]
            rows = model.answers(expanded, work / "samples.jsonl", do_sample=True,
                                 temperature=cfg.temperature, top_p=cfg.top_p)
            samples = {}
            for row in rows:
                samples.setdefault(str(row["id"]).rsplit("#", 1)[0], []).append(row["answer"])
        ranker = P.SimaRanker(model.generate_fn, image_fn=model.image,
                              both_orders=cfg.both_orders, choice_fn=model.choice_fn,
                              verdict=cfg.critic_verdict)
        pairs, stats = P.build_sima_pairs(records, samples, ranker, progress=True)
    elif method == "povid":
        from visalign.methods.nsft_data import GroundTruth

        stages = sorted(set(cfg.povid_stages))
        gt = (GroundTruth.from_files(args.instances, args.coco_captions, args.synonyms)
              if args.instances else None)
        if gt is None and 1 in stages and cfg.povid_editor == "rules" and \
                "object" in cfg.povid_edits:
            print("pairs povid: object edits need --instances (COCO annotations); only "
                  "attribute and relation edits are made", file=sys.stderr)
        client = None
        if 1 in stages and cfg.povid_editor == "llm":
            from visalign.eval.judge import JudgeClient
            client = JudgeClient(cfg.llm)
        noisy = None
        if 2 in stages:
            if args.noisy_answers is not None:
                noisy = read_jsonl(args.noisy_answers, tolerate_partial_last_line=True)
            else:
                need("--noisy-answers", None)
                noisy = _noisy_answers(records, model, work, cfg)
        pairs, stats = P.build_povid_pairs(records, gt, random.Random(cfg.seed), stages=stages,
                                           editor=cfg.povid_editor, edits=cfg.povid_edits,
                                           client=client, noisy_answers=noisy,
                                           noise_step=cfg.noise_step)
    else:  # argparse only allows the four methods
        raise ConfigError(f"unknown method {method!r}")

    if not pairs:
        raise ValueError(f"pairs {method}: no pairs could be built ({stats})")
    P.write_pairs(out, pairs)
    stats["inputs"] = {"data": str(args.data), "model": args.model}
    write_json(out.parent / f"{out.name}.stats.json", stats)
    save_run_config(cfg, out.parent, name=f"{out.name}.config.yaml")
    print(f"pairs {method}: {len(pairs)} pairs from {len(records)} records -> {out}")
    return 0
