"""Where preference pairs come from: the model's own answers, noised images, sampled responses.

The builders (:mod:`~visalign.methods.pairs.gt_dpo`, :mod:`~visalign.methods.pairs.seva`,
:mod:`~visalign.methods.pairs.sima`, :mod:`~visalign.methods.pairs.povid`) turn given answers
into pairs and never touch a model; this module supplies those answers (generating them with a
VLM when none are given) and calls the right builder: :func:`build_method_pairs` is
``visalign pairs <method>`` without the files.

Generated answers are resumable files in ``work_dir`` (``answers.jsonl``, ``samples.jsonl``,
``answers_noise_<tag>.jsonl``); noised images go to ``work_dir/noised/``. Their names carry the
noise step, seed and resize (:func:`noise_tag`), so changing those never reuses stale images or
answers.
"""

from __future__ import annotations

import os
import random
import re
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from visalign.config import ConfigError
from visalign.methods.pairs.common import METHODS, PairsConfig
from visalign.methods.pairs.gt_dpo import build_gt_dpo_pairs
from visalign.methods.pairs.povid import build_povid_pairs
from visalign.methods.pairs.seva import build_seva_pairs, diffusion_noise
from visalign.methods.pairs.sima import SimaRanker, build_sima_pairs

__all__ = ["PairModel", "build_method_pairs", "check_inputs", "noised_records", "noise_tag",
           "read_samples"]


class PairModel:
    """A VLM loaded once for all of a method's generation and critic calls.

    ``image_root``: the dir relative image paths start from (for generation and the critic).
    """

    def __init__(self, path: str | os.PathLike, cfg: PairsConfig, image_root: str | os.PathLike):
        from visalign.models import load_vlm

        self.path, self.cfg, self.image_root = str(path), cfg, Path(image_root)
        self.vlm = load_vlm(self.path, dtype=cfg.dtype, device=cfg.device)

    def answers(self, records: Sequence[dict], out_path: Path, **gen: Any) -> list[dict]:
        """Resumable answers (``visalign.models.generation``) for LLaVA/prompt records."""
        from visalign.io import read_jsonl
        from visalign.models.generation import GenerationConfig, generate_answers

        gcfg = GenerationConfig(batch_size=self.cfg.batch_size,
                                max_new_tokens=self.cfg.max_new_tokens,
                                image_root=str(self.image_root), dtype=self.cfg.dtype,
                                device=self.cfg.device, seed=self.cfg.seed, **gen)
        generate_answers(self.vlm, records, out_path, cfg=gcfg, model_name=self.path)
        return read_jsonl(out_path)

    def image(self, record: Mapping) -> Any:
        """The record's image (RGB PIL image)."""
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


def noise_tag(cfg: PairsConfig) -> str:
    """What the noised images depend on (step, seed, resize), for file names."""
    return f"t{cfg.noise_step}_s{cfg.seed}" + (f"_r{cfg.noise_resize}" if cfg.noise_resize
                                               else "")


def noised_records(records: Sequence[dict], model: PairModel, work_dir: str | os.PathLike,
                   cfg: PairsConfig) -> list[dict]:
    """Copies of ``records`` pointing at diffusion-noised images (absolute paths to PNGs in
    ``work_dir/noised/``, written once)."""
    noised_dir = Path(work_dir) / "noised"
    noised_dir.mkdir(parents=True, exist_ok=True)
    tag = noise_tag(cfg)
    out = []
    for rec in records:
        rid = str(rec["id"])
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in rid)
        # The crc keeps ids that sanitise to the same name apart.
        path = noised_dir / f"{safe}_{zlib.crc32(rid.encode()):08x}_{tag}.png"
        if not path.exists():
            img = _resize_shorter(model.image(rec), cfg.noise_resize)
            img = diffusion_noise(img, cfg.noise_step, zlib.crc32(f"{cfg.seed}:{rid}".encode()))
            tmp = path.with_suffix(".tmp.png")
            img.save(tmp)
            tmp.replace(path)
        out.append({**rec, "image": str(path.resolve())})
    return out


def _noisy_answers(records: Sequence[dict], model: PairModel, work: Path,
                   cfg: PairsConfig) -> list[dict]:
    return model.answers(noised_records(records, model, work, cfg),
                         work / f"answers_noise_{noise_tag(cfg)}.jsonl")


def read_samples(path: str | os.PathLike) -> dict[str, list[str]]:
    """SIMA's sampled responses from a file: ``{id: [response, ...]}``.

    Lines are ``id`` + ``responses`` (list), or ``id`` + ``answer`` with several lines per
    id; an id ``<id>#<j>`` (the j-th sample, as generated) counts for ``<id>``.
    """
    from visalign.io import DataError, read_records

    out: dict[str, list[str]] = {}
    for i, r in enumerate(read_records(path)):
        if "id" not in r:
            raise DataError(path, "missing id", record=i, field="id")
        rid = str(r["id"])
        if "responses" not in r and re.fullmatch(r".+#\d+", rid):
            rid = rid.rsplit("#", 1)[0]
        if isinstance(r.get("responses"), list) and all(isinstance(x, str)
                                                        for x in r["responses"]):
            out.setdefault(rid, []).extend(r["responses"])
        elif isinstance(r.get("answer"), str):
            out.setdefault(rid, []).append(r["answer"])
        else:
            raise DataError(path, "expected 'responses' (list of strings) or 'answer'",
                            record=i, field="responses")
    return out


def _rows(answers: Any) -> Any:
    """Answer rows from a JSONL path; loaded rows or an ``{id: answer}`` mapping pass through."""
    if isinstance(answers, (str, os.PathLike)):
        from visalign.io import read_jsonl

        return read_jsonl(answers, tolerate_partial_last_line=True)
    return answers


def check_inputs(method: str, cfg: PairsConfig, *, model: Any, answers: Any,
                 noisy_answers: Any, cli: bool = False) -> None:
    """Raise ``ConfigError`` if ``method`` lacks an input that only a model could replace;
    run before any model is loaded. ``cli``: name the inputs by their command-line flags."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")
    if model:
        return
    who, m, a, n = ((f"pairs {method}", "--model", "--answers", "--noisy-answers") if cli
                    else (f"{method} pairs", "a model", "answers", "noisy_answers"))
    if method == "sima":
        raise ConfigError(f"{who}: {m} is required (the model ranks its own responses)")
    if method in ("gt-dpo", "seva") and answers is None:
        raise ConfigError(f"{who}: give {m} or {a}")
    if (method == "seva" or (method == "povid" and 2 in cfg.povid_stages)) \
            and noisy_answers is None:
        raise ConfigError(f"{who}: give {m} or {n}")


def build_method_pairs(method: str, records: Sequence[dict], *, cfg: PairsConfig | None = None,
                       model: str | os.PathLike | PairModel | None = None,
                       work_dir: str | os.PathLike | None = None,
                       image_root: str | os.PathLike = ".", answers: Any = None,
                       noisy_answers: Any = None,
                       samples: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
                       gt: Any = None, client: Any = None, progress: bool = True
                       ) -> tuple[list[dict], dict]:
    """Preference pairs of ``method`` (``gt-dpo``, ``seva``, ``sima``, ``povid``) for LLaVA
    ``records``; returns ``(pairs, stats)`` as the builders do.

    Inputs not given are generated with ``model`` (a model dir, loaded here, or a loaded
    :class:`PairModel`) into ``work_dir``: ``answers`` (greedy answers on the images; gt-dpo,
    seva), ``noisy_answers`` (answers on the noised images; seva, povid stage 2), ``samples``
    (SIMA's ``cfg.num_samples`` sampled responses; sima always needs ``model`` as its critic).
    Answers are a JSONL path, answer rows (``id`` + ``answer``) or an ``{id: answer}`` mapping;
    ``samples`` a path (:func:`read_samples`) or ``{id: [response, ...]}``.

    ``image_root``: where relative image paths start when ``model`` is a path. POVID: ``gt``
    is a :class:`visalign.methods.nsft.GroundTruth` (object edits need it; without it
    only attribute and relation edits are made); ``client`` the LLM for
    ``povid_editor=llm`` (default: a :class:`visalign.eval.judge.JudgeClient` of
    ``cfg.llm``). Image paths in the pairs are the records'; noised ones are absolute.
    """
    cfg = cfg or PairsConfig()
    check_inputs(method, cfg, model=model, answers=answers, noisy_answers=noisy_answers)
    if model is not None and not isinstance(model, PairModel):
        model = PairModel(model, cfg, image_root)

    def work() -> Path:
        if work_dir is None:
            raise ConfigError(f"{method} pairs: generating with a model needs work_dir")
        return Path(work_dir)

    if method == "gt-dpo":
        rows = (_rows(answers) if answers is not None
                else model.answers(records, work() / "answers.jsonl"))
        return build_gt_dpo_pairs(records, rows)
    if method == "seva":
        clean = (_rows(answers) if answers is not None
                 else model.answers(records, work() / "answers.jsonl"))
        noisy = (_rows(noisy_answers) if noisy_answers is not None
                 else _noisy_answers(records, model, work(), cfg))
        return build_seva_pairs(records, clean, noisy, noise_step=cfg.noise_step)
    if method == "sima":
        if samples is None:
            expanded = [{**r, "id": f"{r['id']}#{j}"} for r in records
                        for j in range(cfg.num_samples)]
            generated = model.answers(expanded, work() / "samples.jsonl", do_sample=True,
                                      temperature=cfg.temperature, top_p=cfg.top_p)
            samples = {}
            for row in generated:
                samples.setdefault(str(row["id"]).rsplit("#", 1)[0], []).append(row["answer"])
        elif isinstance(samples, (str, os.PathLike)):
            samples = read_samples(samples)
        ranker = SimaRanker(model.generate_fn, image_fn=model.image,
                            both_orders=cfg.both_orders, choice_fn=model.choice_fn,
                            verdict=cfg.critic_verdict)
        return build_sima_pairs(records, samples, ranker, progress=progress)
    # povid
    stages = sorted(set(cfg.povid_stages))
    if client is None and 1 in stages and cfg.povid_editor == "llm":
        from visalign.eval.judge import JudgeClient

        client = JudgeClient(cfg.llm)
    noisy = None
    if 2 in stages:
        noisy = (_rows(noisy_answers) if noisy_answers is not None
                 else _noisy_answers(records, model, work(), cfg))
    return build_povid_pairs(records, gt, random.Random(cfg.seed), stages=stages,
                             editor=cfg.povid_editor, edits=cfg.povid_edits, client=client,
                             noisy_answers=noisy, noise_step=cfg.noise_step)


def write_method_pairs(method: str, cfg: PairsConfig, data: str | os.PathLike,
                       out: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                       model: str | os.PathLike | None = None, answers: Any = None,
                       noisy_answers: Any = None, samples: Any = None,
                       instances: str | os.PathLike | None = None,
                       captions: str | os.PathLike | None = None,
                       synonyms: str | os.PathLike | None = None, cli: bool = False) -> dict:
    """``visalign pairs METHOD`` as a function: build ``method``'s pairs for the records in
    ``data`` and write them to ``out`` (plus ``OUT.stats.json`` and ``OUT.config.yaml``);
    returns the stats. POVID's object edits need ``instances`` (COCO); without them only
    attribute and relation edits are made (said on stderr). ``cli``: errors name inputs by
    their command-line flags."""
    import sys

    from visalign.config import save_run_config
    from visalign.io import read_records, write_json
    from visalign.methods.pairs.common import write_pairs

    out = Path(out)
    records = read_records(data)
    image_root = image_root or str(Path(data).parent)
    gt = None
    if method == "povid":
        from visalign.methods.nsft import GroundTruth

        gt = GroundTruth.from_files(instances, captions, synonyms) if instances else None
        if gt is None and 1 in cfg.povid_stages and cfg.povid_editor == "rules" and \
                "object" in cfg.povid_edits:
            print("pairs povid: object edits need --instances (COCO annotations); only "
                  "attribute and relation edits are made", file=sys.stderr)
    check_inputs(method, cfg, model=model, answers=answers, noisy_answers=noisy_answers,
                 cli=cli)
    pairs, stats = build_method_pairs(
        method, records, cfg=cfg, model=model, work_dir=out.parent / f"{out.stem}_work",
        image_root=image_root, answers=answers, noisy_answers=noisy_answers, samples=samples,
        gt=gt)
    if not pairs:
        raise ValueError(f"pairs {method}: no pairs could be built ({stats})")
    write_pairs(out, pairs)
    stats["inputs"] = {"data": str(data), "model": None if model is None else str(model)}
    write_json(out.parent / f"{out.name}.stats.json", stats)
    save_run_config(cfg, out.parent, name=f"{out.name}.config.yaml")
    stats["n_pairs"] = len(pairs)
    stats["n_records"] = len(records)
    return stats
