"""``visalign fisao calibrate``: the verifier's baseline scores (Eq. 7) and the Sec. 3.1 analysis.

The model describes calibration images greedily; CHAIR labels every mentioned object correct or
hallucinated; the verifier scores each mention at token level, S(word, image), and at sentence
level (the CLIP score of the sentence that contains it). Outputs:

- ``calibration.json``: μ_gt, μ_hal, S_min, S_max (token level), the AUROCs, and the
  sentence-level calibration for the sentence-reward ablation;
- ``scores.jsonl``: one row per mention (image, word, category, hallucinated, token and sentence
  score), so every number can be re-derived;
- Fig. 1 (token vs sentence score distributions of correct vs hallucinated objects) and Fig. 2
  (sentence score vs per-caption BLEU / ROUGE-L, with Pearson r) as PNG.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from visalign.config import field, save_run_config
from visalign.io import read_jsonl, write_json, write_jsonl


@dataclasses.dataclass
class CalibrateConfig:
    model: str = field("", help="model dir (the policy to calibrate for)")
    verifier: str = field("", help="CLIP dir whose vision tower is the model's ('' = MODEL/verifier)")
    prompts: str = field("", help="prompt records (id, image, image_id, prompt)")
    image_root: str = field("", help="root for relative image paths")
    instances: str = field("", help="COCO instances of the calibration images")
    captions: str = field("", help="COCO captions of the calibration images")
    synonyms: str = field("", help="CHAIR synonyms table ('' = COCO's)")
    out: str = field("", help="output dir")
    n_images: int = field(500, help="calibration images (the paper: 5,000 COCO train)")
    lam: float = field(0.0, help="margin λ stored in the calibration")
    template: str = field("a photo of a {}.", help="verifier prompt template")
    max_new_tokens: int = field(96, help="description length cap")
    batch_size: int = field(32, help="generation batch size")
    percentiles: list[float] = field([], help="[lo, hi] → S_min/S_max percentiles (default min/max)")


_SENT = re.compile(r"[^.!?]+[.!?]?")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _SENT.finditer(text) if m.group().strip()]


def per_caption_bleu_rouge(captions: dict[Any, str], refs: dict[Any, list[str]]) -> dict:
    """Per-caption BLEU-4 and ROUGE-L (pycocoevalcap scorers on lower-cased word tokens)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    def tok(s: str) -> str:
        return " ".join(re.findall(r"[a-z0-9]+", s.lower()))

    ids = [i for i in captions if refs.get(i)]
    gts = {i: [tok(r) for r in refs[i]] for i in ids}
    res = {i: [tok(captions[i]) or "empty"] for i in ids}
    if not ids:
        return {}
    _, bleu = Bleu(4).compute_score(gts, res, verbose=0)
    _, rouge = Rouge().compute_score(gts, res)
    return {i: {"bleu_4": float(bleu[3][k]), "rouge_l": float(rouge[k])}
            for k, i in enumerate(ids)}


def score_mentions(answers: list[dict], chair: Any, scorer: Any, entities: Any,
                   images: dict[Any, Any]) -> list[dict]:
    """One row per CHAIR-matched mention with its token- and sentence-level verifier scores."""
    rows = []
    for a in answers:
        text, img_id = a["answer"], a["image_id"]
        mentions = chair.mentions(text)
        if not mentions:
            continue
        gt = chair.gt_objects(img_id)
        emb = scorer.image_embeddings([images[img_id]])[0]
        ents = entities.find(text)
        spans = sentence_spans(text)
        sent_texts = [text[s:e].strip() for s, e in spans]
        sent_scores = scorer.sentence_score(sent_texts, emb).tolist() if sent_texts else []
        words = []
        for m in mentions:
            # The verifier scores the entity set's canonical form of the surface word (what the
            # trainer rewards); CHAIR supplies the label.
            ent = next((e for e in ents if e.start < m.end and m.start < e.end), None)
            words.append(ent.canonical if ent is not None else m.category)
        tok_scores = scorer.score(words, emb).tolist()
        for m, w, s in zip(mentions, words, tok_scores):
            k = next((i for i, (s0, e0) in enumerate(spans) if s0 <= m.start < e0), None)
            rows.append({"id": a.get("id"), "image_id": img_id, "word": m.word,
                         "category": m.category, "scored_as": w,
                         "hallucinated": m.category not in gt, "token_score": float(s),
                         "sentence_score": float(sent_scores[k]) if k is not None else None})
    return rows


def calibrate_verifier(cfg: CalibrateConfig, vlm: Any = None) -> dict:
    """Generate, label, score; write calibration.json, scores.jsonl and the figures."""
    from PIL import Image

    from visalign.analysis.distributions import plot_correlation, plot_score_distributions
    from visalign.eval.chair import Chair, load_synonyms
    from visalign.models import load_vlm
    from visalign.models.generation import GenerateConfig, generate_answers
    from visalign.verifier.calibration import auroc, calibrate
    from visalign.verifier.entities import EntitySet
    from visalign.verifier.scorer import ClipScorer

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, out)
    prompts = read_jsonl(cfg.prompts)[: cfg.n_images or None]
    vlm = vlm or load_vlm(cfg.model)
    generate_answers(vlm, prompts, out / "answers.jsonl", cfg=GenerateConfig(
        batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
        image_root=cfg.image_root, progress=False))
    answers = read_jsonl(out / "answers.jsonl")
    chair = Chair.from_coco(cfg.instances, cfg.captions or None,
                            load_synonyms(cfg.synonyms or None))
    scorer = ClipScorer.from_pretrained(cfg.verifier or Path(cfg.model) / "verifier",
                                        template=cfg.template)
    entities = EntitySet.build(extra=cfg.synonyms or None)
    root = Path(cfg.image_root) if cfg.image_root else Path(".")
    by_img = {p["image_id"]: p["image"] for p in prompts}
    images = {i: Image.open(root / p).convert("RGB") for i, p in by_img.items()}
    rows = score_mentions(answers, chair, scorer, entities, images)
    write_jsonl(out / "scores.jsonl", rows)
    gt_t = [r["token_score"] for r in rows if not r["hallucinated"]]
    hal_t = [r["token_score"] for r in rows if r["hallucinated"]]
    gt_s = [r["sentence_score"] for r in rows if not r["hallucinated"]
            and r["sentence_score"] is not None]
    hal_s = [r["sentence_score"] for r in rows if r["hallucinated"]
             and r["sentence_score"] is not None]
    pct = tuple(cfg.percentiles) if cfg.percentiles else None
    tok_cal = calibrate(gt_t, hal_t, cfg.lam, percentiles=pct, template=cfg.template,
                        scale=scorer.scale, level="token")
    # Sentence level (ablation): μ over whole responses with / without a hallucinated object.
    cap_hal: dict[Any, bool] = {}
    for r in rows:
        cap_hal[r["image_id"]] = cap_hal.get(r["image_id"], False) or r["hallucinated"]
    whole = {a["image_id"]: a["answer"] for a in answers if a["image_id"] in cap_hal}
    ids = list(whole)
    whole_scores = {}
    for i in range(0, len(ids), 64):
        chunk = ids[i:i + 64]
        embs = scorer.image_embeddings([images[j] for j in chunk])
        for j, s in zip(chunk, scorer.sentence_score([whole[j] for j in chunk], embs).tolist()):
            whole_scores[j] = float(s)
    sent_gt = [whole_scores[j] for j in ids if not cap_hal[j]]
    sent_hal = [whole_scores[j] for j in ids if cap_hal[j]]
    sent_cal = calibrate(sent_gt, sent_hal, cfg.lam, template="{}", scale=scorer.scale,
                         level="sentence") if sent_gt and sent_hal else None
    result = {
        **tok_cal.to_dict(),
        "auroc_token": auroc(gt_t, hal_t),
        "auroc_sentence": auroc(gt_s, hal_s) if gt_s and hal_s else None,
        "auroc_response": auroc(sent_gt, sent_hal) if sent_gt and sent_hal else None,
        "n_responses": len(answers),
        "sentence_calibration": sent_cal.to_dict() if sent_cal else None,
    }
    figs = {}
    figs["token"] = plot_score_distributions(
        gt_t, hal_t, out / "fig1a_token_scores.png", "Token-level verifier scores",
        "S(object, image)")
    if gt_s and hal_s:
        figs["sentence"] = plot_score_distributions(
            gt_s, hal_s, out / "fig1b_sentence_scores.png", "Sentence-level verifier scores",
            "CLIP score of the sentence")
    refs = _refs(cfg.captions) if cfg.captions else {}
    if refs:
        per = per_caption_bleu_rouge(whole, refs)
        xs = [whole_scores[i] for i in per]
        if len(xs) >= 3:
            r_b = plot_correlation(xs, [per[i]["bleu_4"] for i in per],
                                   out / "fig2a_sentence_vs_bleu.png", "sentence CLIP score",
                                   "BLEU-4")
            r_r = plot_correlation(xs, [per[i]["rouge_l"] for i in per],
                                   out / "fig2b_sentence_vs_rouge.png", "sentence CLIP score",
                                   "ROUGE-L")
            figs["bleu"], figs["rouge"] = r_b, r_r
    result["figures"] = {k: {kk: (str(vv) if kk == "path" else vv) for kk, vv in v.items()}
                         for k, v in figs.items()}
    write_json(out / "calibration_report.json", result)
    # The file the trainer reads holds exactly the Calibration fields.
    tok_cal.to_json(out / "calibration.json")
    if sent_cal:
        sent_cal.to_json(out / "calibration_sentence.json")
    return result


def _refs(captions_path: str) -> dict[Any, list[str]]:
    from visalign.data.coco import load_coco_captions

    return load_coco_captions(captions_path)
