"""One evaluation suite for every model a comparison touches (base row and every method row).

Same prompts, same generation settings, same metrics for all: detailed descriptions of held-out
images → CHAIR + caption metrics; POPE (random/popular/adversarial) built once per world and
cached; held-out short-answer questions (count/color/position/vqa) as the "alignment tax"
columns; LLM judges only when an endpoint is configured. Every stage writes its raw outputs
(answers JSONL) next to the metrics, and re-running skips what is done.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

from visalign.config import field
from visalign.eval.judge import JudgeConfig
from visalign.io import read_json, read_jsonl, write_json, write_jsonl


@dataclasses.dataclass
class EvalSettings:
    n_images: int = field(200, help="held-out images for CHAIR / caption metrics (0 = all)")
    max_new_tokens: int = field(96, help="cap on description length")
    batch_size: int = field(32, help="generation batch size")
    pope_images: int = field(100, help="POPE images per split")
    pope_negatives: int = field(3, help="POPE negatives (= positives) per image")
    pope_splits: list[str] = field(["random", "popular", "adversarial"], help="POPE splits")
    qa_tasks: list[str] = field(["count", "color", "position", "vqa"],
                                help="held-out short-answer tasks (alignment-tax columns)")
    qa_per_task: int = field(100, help="questions per short-answer task (0 = all)")
    caption_metrics: bool = field(True, help="BLEU/ROUGE-L/CIDEr against reference captions")
    meteor: bool = field(False, help="METEOR too (needs Java; slow)")
    split: str = field("val", help="held-out split of the world")
    seed: int = field(0, help="seed for POPE sampling")
    judge: bool = field(False, help="score the descriptions with the nSFT in-domain LLM judge "
                                    "(Fig. 7 prompt; endpoint from judge_config / env)")
    judge_config: JudgeConfig = field(default_factory=JudgeConfig)


def _norm(s: str) -> str:
    s = s.lower().strip()
    s = re.sub(r"[^a-z0-9 ]+", " ", s)
    s = re.sub(r"\b(a|an|the|it is|there are|there is|it s)\b", " ", s)
    return " ".join(s.split())


def qa_correct(answer: str, gt: str) -> bool:
    """Short-answer match: normalised GT equals the answer or is its first words."""
    a, g = _norm(answer), _norm(gt)
    if not g:
        return False
    return a == g or a.startswith(g + " ") or a.split(" ")[: len(g.split())] == g.split()


def pope_questions_path(world: Any, split: str, pope_split: str, images: int, negatives: int,
                        seed: int) -> Path:
    """Where the suite caches a world's POPE questions, so every model sees the same ones."""
    return Path(world.root) / "pope" / f"{split}_{pope_split}_{images}_{negatives}_{seed}.jsonl"


def world_chair(world: Any, split: str) -> Any:
    """The CHAIR evaluator the suite scores a world's ``split`` with: its instances, its
    reference captions (CHAIR's ground truth includes objects they name) and its synonyms."""
    from visalign.eval.chair import Chair, load_synonyms

    return Chair.from_coco(world.instances_path(split), world.captions_path(split),
                           load_synonyms(world.synonyms_path))


def _generate(vlm: Any, records: list[dict], out: Path, settings: EvalSettings, *,
              max_new_tokens: int, id_key: str = "id", prompt_key: str = "prompt",
              image_root: str | Path = "") -> list[dict]:
    from visalign.models.generation import GenerationConfig, generate_answers

    gcfg = GenerationConfig(batch_size=settings.batch_size, max_new_tokens=max_new_tokens,
                            id_key=id_key, prompt_key=prompt_key, image_root=str(image_root),
                            progress=False)
    generate_answers(vlm, records, out, cfg=gcfg)
    return read_jsonl(out)


def evaluate_model(vlm_or_path: Any, world: Any, out_dir: str | Path,
                   settings: EvalSettings | None = None) -> dict:
    """Run the suite on a micro-world (or any world-shaped COCO set); writes ``out/eval.json``.

    ``world`` is a :class:`visalign.world.World`. Returns the result dict whose ``metrics``
    follow the shared result format.
    """
    from visalign.eval.pope import build_pope, score_pope
    from visalign.models import load_vlm

    settings = settings or EvalSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vlm = load_vlm(str(vlm_or_path)) if isinstance(vlm_or_path, (str, Path)) else vlm_or_path
    split = settings.split
    timings: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    t = time.time()

    # 1. detailed descriptions → CHAIR (+ caption metrics)
    prompts = read_jsonl(world.prompts_path(split))
    if settings.n_images:
        prompts = prompts[: settings.n_images]
    answers = _generate(vlm, prompts, out / "answers_detail.jsonl", settings,
                        max_new_tokens=settings.max_new_tokens, image_root=world.image_root)
    chair = world_chair(world, split)
    caps = [{"image_id": a["image_id"], "caption": a["answer"]} for a in answers]
    chair_res = chair.evaluate(caps)
    write_json(out / "chair.json", chair_res)
    metrics.update(chair_res["metrics"])
    # a low CHAIR from broken text is not less hallucination (visalign.eval.fluency)
    from visalign.eval.fluency import fluency, world_vocabulary

    vocab = world_vocabulary(world)
    if vocab:
        metrics.update(fluency([a["answer"] for a in answers], vocab))
    timings["describe+chair"] = time.time() - t

    if settings.caption_metrics:
        t = time.time()
        from visalign.eval.captions import caption_metrics

        cm = caption_metrics(caps, world.captions_path(split), meteor=settings.meteor)
        metrics.update(cm["metrics"])
        timings["caption_metrics"] = time.time() - t

    if settings.judge:
        t = time.time()
        jres = judge_descriptions(answers, world.captions_path(split), settings.judge_config)
        write_json(out / "judge_indomain.json", jres)
        metrics.update({k: v for k, v in jres["metrics"].items() if k != "judge_n"})
        timings["judge"] = time.time() - t

    # 2. POPE, three splits; questions are cached per world so every model sees the same ones
    t = time.time()
    for sp in settings.pope_splits:
        qpath = pope_questions_path(world, split, sp, settings.pope_images,
                                    settings.pope_negatives, settings.seed)
        if not qpath.exists():
            qs = build_pope(world.instances_path(split), sp, settings.pope_images,
                            settings.pope_negatives, settings.seed,
                            image_root=world.image_dir(split))
            write_jsonl(qpath, qs)
        qs = read_jsonl(qpath)
        ans = _generate(vlm, qs, out / f"answers_pope_{sp}.jsonl", settings, max_new_tokens=4,
                        id_key="question_id", prompt_key="prompt")
        metrics.update(score_pope(qs, ans, split=sp)["metrics"])
    f1s = [metrics[f"pope_{sp}_f1"] for sp in settings.pope_splits]
    accs = [metrics[f"pope_{sp}_accuracy"] for sp in settings.pope_splits]
    metrics["pope_f1"] = sum(f1s) / len(f1s)
    metrics["pope_accuracy"] = sum(accs) / len(accs)
    timings["pope"] = time.time() - t

    # 3. held-out short answers (general ability / alignment tax)
    if settings.qa_tasks:
        t = time.time()
        from visalign.data.llava import load_llava_records

        recs = load_llava_records(world.llava_path(split))
        qa = []
        for task in settings.qa_tasks:
            rs = [r for r in recs if r.get("task") == task]
            rs = rs[: settings.qa_per_task] if settings.qa_per_task else rs
            qa += [{"id": r["id"], "image": r["image"], "task": task,
                    "prompt": r["conversations"][0]["value"].replace("<image>", "").strip(),
                    "gt": r["conversations"][1]["value"]} for r in rs]
        if qa:
            ans = {a["id"]: a["answer"] for a in _generate(
                vlm, qa, out / "answers_qa.jsonl", settings, max_new_tokens=12,
                image_root=world.image_root)}
            per_task: dict[str, list[bool]] = {}
            for q in qa:
                per_task.setdefault(q["task"], []).append(qa_correct(ans[q["id"]], q["gt"]))
            for task, oks in per_task.items():
                metrics[f"qa_{task}_accuracy"] = sum(oks) / len(oks)
            allv = [o for oks in per_task.values() for o in oks]
            metrics["qa_accuracy"] = sum(allv) / len(allv)
        timings["qa"] = time.time() - t

    result = {"metrics": metrics, "timings": {k: round(v, 3) for k, v in timings.items()},
              "settings": dataclasses.asdict(settings)}
    write_json(out / "eval.json", result)
    return result


def judge_descriptions(answers: list[dict], captions_path: str | Path,
                       config: JudgeConfig | None = None, client: Any = None) -> dict:
    """The nSFT in-domain judge (nSFT paper, Fig. 7) on held-out descriptions.

    The judge sees the reference captions as the image's ground truth; returns
    ``judge_records``' result (``indomain_instruction``, ``indomain_accuracy``,
    ``judge_unparsed``). Replies are cached on disk by the client, so a re-run costs nothing.
    """
    from visalign.data.coco import load_coco_captions
    from visalign.eval.judge import JudgeClient, judge_records

    refs = load_coco_captions(captions_path)
    recs = [{"id": str(a["id"]), "question": a["prompt"], "answer": a["answer"],
             "caption": " ".join(refs.get(a["image_id"], []))} for a in answers]
    client = client or JudgeClient(config or JudgeConfig())
    return judge_records("indomain", client, recs, id_key="id")


def load_eval(out_dir: str | Path) -> dict | None:
    p = Path(out_dir) / "eval.json"
    return read_json(p) if p.exists() else None
