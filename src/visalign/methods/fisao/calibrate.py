"""``visalign fisao calibrate``: the verifier's baseline scores (Eq. 7) and the Sec. 3.1 analysis.

The model describes calibration images greedily (or ``answers`` from ``visalign generate`` are
read); CHAIR labels every mentioned object correct or hallucinated; the verifier scores each
entity mention at token level, S(word, image) on the entity set's canonical word (what the
trainer rewards), and at sentence level (the CLIP score of the sentence that contains it).
Entity mentions CHAIR has no label for (outside its vocabulary) are scored too: they only widen
[S_min, S_max], the range the rewards are normalised by (App. A.1.5). Outputs in ``out``:

- ``calibration.json``: exactly the :class:`~visalign.verifier.reward.Calibration` fields the
  trainer reads (``mu_gt``, ``mu_hal``, ``s_min``, ``s_max``, ``n_gt``, ``n_hal``, ``lam``,
  ``template``, ``scale``, ``level="token"``, ``auroc``);
- ``calibration_sentence.json``: the same over whole responses with / without a hallucinated
  object (``level="sentence"``, for the ``reward_level=sentence`` ablation), when both exist;
- ``calibration_report.json``: the token calibration plus ``auroc_token``, ``auroc_sentence``
  (per mention, sentence containing it), ``auroc_response``, counts, the sentence calibration
  and the figures' statistics (Pearson r of sentence score vs BLEU-4 / ROUGE-L);
- ``entities.json``: the entity set C used (the trainer picks it up next to calibration.json);
- ``answers.jsonl`` (when generated), ``scores.jsonl`` (one row per mention: id,
  answer_index, image_id, word, category, scored_as, hallucinated (None = unlabelled),
  token_score, sentence_score);
- Fig. 1 ``fig1a_token_scores.png`` / ``fig1b_sentence_scores.png`` (score distributions of
  correct vs hallucinated objects) and Fig. 2/7 ``fig2a_sentence_vs_bleu.png`` /
  ``fig2b_sentence_vs_rouge.png`` (with ``captions``).

:func:`reward_shift` draws Fig. 4: the scores (and, with a calibration, the rewards) of the
objects two models generate, before vs after training.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from visalign.config import field, save_run_config
from visalign.io import DataError, read_records, write_json, write_jsonl


@dataclasses.dataclass
class CalibrateConfig:
    model: str = field("", help="model dir (the policy to calibrate for)")
    verifier: str = field("", help="CLIP dir whose vision tower is the model's "
                                   "('' = MODEL/verifier)")
    prompts: str = field("", help="prompt records (id, image, image_id, prompt) or LLaVA records")
    answers: str = field("", help="existing answers (JSONL from `visalign generate`: id, image, "
                                  "image_id, answer); '' = generate them from `prompts`")
    image_root: str = field("", help="root for relative image paths ('' = the prompts/answers "
                                     "file's dir)")
    instances: str = field("", help="COCO instances of the calibration images")
    captions: str = field("", help="COCO captions of the calibration images (CHAIR ground "
                                   "truth and BLEU/ROUGE references)")
    synonyms: str = field("", help="CHAIR synonyms table ('' = COCO's)")
    extra_vocab: str = field("", help="extra entity vocabulary for C ('' = the synonyms table)")
    wordnet: bool = field(True, help="expand C with WordNet synonyms (App. A.1.1)")
    out: str = field("", help="output dir")
    n_images: int = field(500, help="calibration responses (the paper: the training data); "
                                    "0 = all")
    lam: float = field(0.0, help="margin λ stored in the calibration")
    template: str = field("a photo of a {}.", help="verifier prompt template")
    pooling: str = field("image", help="verifier score: 'image' = S(word, image) on CLIP's image "
                                       "embedding (the paper); 'patch' = the best patch's "
                                       "probability of the word against the CHAIR categories "
                                       "(for encoders with text-aligned patches)")
    max_new_tokens: int = field(96, help="description length cap")
    batch_size: int = field(32, help="generation / verifier batch size")
    dtype: str = field("float32", help="model dtype for generation")
    percentiles: list[float] = field([], help="[lo, hi] → S_min/S_max percentiles "
                                              "(default: min/max)")
    device: str = field("auto", help="where the verifier scores: auto (CUDA when available), "
                                     "cpu, cuda:N")
    allow_verifier_mismatch: bool = field(False, help="calibrate with a verifier that is not "
                                                      "the model's vision tower (checked when "
                                                      "model is set)")


_SENT = re.compile(r"[^.!?]+[.!?]?")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (split after ``.``, ``!``, ``?``)."""
    return [(m.start(), m.end()) for m in _SENT.finditer(text) if m.group().strip()]


def per_caption_bleu_rouge(captions: dict[Any, str], refs: dict[Any, list[str]]) -> dict:
    """Per-caption BLEU-4 and ROUGE-L (pycocoevalcap scorers on lower-cased word tokens).

    ``captions``: {key: caption}; ``refs``: {key: [reference, ...]}; keys without references
    are left out.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    def tok(s: str) -> str:
        return " ".join(re.findall(r"[a-z0-9]+", s.lower()))

    ids = [i for i in captions if refs.get(i)]
    if not ids:
        return {}
    gts = {i: [tok(r) for r in refs[i]] for i in ids}
    res = {i: [tok(captions[i]) or "empty"] for i in ids}
    _, bleu = Bleu(4).compute_score(gts, res, verbose=0)
    _, rouge = Rouge().compute_score(gts, res)
    return {i: {"bleu_4": float(bleu[3][k]), "rouge_l": float(rouge[k])}
            for k, i in enumerate(ids)}


def image_embeddings(paths: Sequence[str], scorer: Any, batch_size: int = 32) -> dict[str, Any]:
    """{path: (d,) verifier image embedding}, computed in batches (images are not all held)."""
    from PIL import Image

    uniq = list(dict.fromkeys(paths))
    out: dict[str, Any] = {}
    for s in range(0, len(uniq), batch_size):
        chunk = uniq[s:s + batch_size]
        imgs = []
        for p in chunk:
            if not Path(p).exists():
                raise DataError(p, "image file not found")
            with Image.open(p) as im:
                imgs.append(im.convert("RGB"))
        for p, e in zip(chunk, scorer.image_embeddings(imgs)):
            out[p] = e
    return out


def score_mentions(answers: list[dict], chair: Any, scorer: Any, entities: Any,
                   image_embs: Sequence[Any] | Mapping[Any, Any]) -> list[dict]:
    """One row per entity mention with its token- and sentence-level verifier scores.

    ``image_embs[k]`` is the (d,) embedding of ``answers[k]``'s image; or a mapping
    ``{image_id: embedding or PIL image}`` (images are embedded once each). A mention's label comes
    from CHAIR (``hallucinated``: its category is not in the image's ground truth); entity
    mentions CHAIR does not match get ``hallucinated=None``; CHAIR mentions outside C are scored
    by their category name. The verifier scores the entity set's canonical form of the surface
    word (what the trainer rewards).
    """
    if isinstance(image_embs, Mapping):
        by_id = image_embs
        cache: dict[Any, Any] = {}

        def emb_of(a: dict) -> Any:
            key = a["image_id"]
            if key not in cache:
                v = by_id[key]
                cache[key] = v if hasattr(v, "dim") else scorer.image_embeddings([v])[0]
            return cache[key]

        image_embs = [emb_of(a) for a in answers]
    if len(image_embs) != len(answers):
        raise ValueError(f"{len(image_embs)} image embeddings for {len(answers)} answers")
    rows = []
    for k_ans, (a, emb) in enumerate(zip(answers, image_embs)):
        text, img_id = a["answer"], a["image_id"]
        cmentions = chair.mentions(text)
        ents = entities.find(text)
        if not cmentions and not ents:
            continue
        gt = chair.gt_objects(img_id) if cmentions else set()
        spans = sentence_spans(text)
        sent_texts = [text[s:e].strip() for s, e in spans]
        sent_scores = scorer.sentence_score(sent_texts, emb).tolist() if sent_texts else []
        items = []   # (start, end, surface, scored_as, category, hallucinated)
        used = set()
        for m in cmentions:
            j = next((j for j, e in enumerate(ents) if e.start < m.end and m.start < e.end), None)
            if j is not None:
                used.add(j)
            word = ents[j].canonical if j is not None else m.category
            items.append((m.start, m.end, m.word, word, m.category, m.category not in gt))
        for j, e in enumerate(ents):
            if j not in used:
                items.append((e.start, e.end, e.surface, e.canonical, None, None))
        items.sort(key=lambda t: t[0])
        tok_scores = scorer.score([t[3] for t in items], emb).reshape(-1).tolist()
        for (start, _end, surface, word, cat, hal), s in zip(items, tok_scores):
            k = next((i for i, (s0, e0) in enumerate(spans) if s0 <= start < e0), None)
            rows.append({"id": a.get("id"), "answer_index": k_ans, "image_id": img_id,
                         "word": surface,
                         "category": cat, "scored_as": word, "hallucinated": hal,
                         "token_score": float(s),
                         "sentence_score": float(sent_scores[k]) if k is not None else None})
    return rows


def _image_path(rec: dict, root: Path, source: Any, k: int) -> str:
    img = rec.get("image")
    if not isinstance(img, str) or not img:
        raise DataError(source, "missing image path", record=rec.get("id", k), field="image")
    p = Path(img)
    return str(p if p.is_absolute() else root / p)


def _load_answers(cfg: CalibrateConfig, vlm: Any, out: Path) -> tuple[list[dict], Path, Path]:
    """(answers, the file they came from, the image root)."""
    from visalign.data.coco import coco_image_id
    from visalign.data.instruct import is_text_only, unique_keys
    from visalign.io import read_jsonl

    n = cfg.n_images or None
    if cfg.answers:
        source = Path(cfg.answers)
        answers = read_records(source)[:n]
    else:
        if not cfg.prompts:
            raise ValueError("calibrate needs prompts=PATH (or answers=PATH)")
        if not (vlm is not None or cfg.model):
            raise ValueError("calibrate needs model=DIR to generate answers")
        from visalign.models.generation import GenerationConfig, generate_answers

        source = Path(cfg.prompts)
        # the records generation answers, under the keys it gives them (shared ids -> ID#k)
        prompts = [p for p in read_records(source) if not is_text_only(p)][:n]
        ids = set(unique_keys(p.get("id") for p in prompts))
        gcfg = GenerationConfig(batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                                image_root=cfg.image_root or None, limit=n, dtype=cfg.dtype,
                                progress=False)
        generate_answers(vlm if vlm is not None else cfg.model, source, out / "answers.jsonl",
                         cfg=gcfg)
        source = out / "answers.jsonl"
        answers = [a for a in read_jsonl(source, tolerate_partial_last_line=True)
                   if str(a.get("id")) in ids]
    root = Path(cfg.image_root) if cfg.image_root else Path(cfg.answers or cfg.prompts).parent
    for k, a in enumerate(answers):
        rid = a.get("id", k)
        if not isinstance(a.get("answer"), str):
            raise DataError(source, "missing answer text", record=rid, field="answer")
        if a.get("image_id") is None and coco_image_id(str(a.get("image", ""))) is not None:
            a["image_id"] = coco_image_id(a["image"])     # a COCO file name gives it
        if a.get("image_id") is None:
            raise DataError(source, "missing image_id (CHAIR needs it to label objects)",
                            record=rid, field="image_id")
    if not answers:
        raise DataError(source, "no answers to calibrate on")
    return answers, source, root


def calibrate_verifier(cfg: CalibrateConfig, vlm: Any = None) -> dict:
    """Generate (or read) answers, label, score; write the calibration files and figures.

    Returns the ``calibration_report.json`` content. Raises ``ValueError`` when the answers
    hold no correct or no hallucinated object (Eq. 7 needs both).
    """
    import torch

    from visalign.analysis.distributions import plot_correlation, plot_score_distributions
    from visalign.eval.chair import Chair, load_synonyms
    from visalign.verifier.calibration import auroc, calibrate
    from visalign.verifier.entities import EntitySet
    from visalign.verifier.scorer import ClipScorer
    from visalign.verifier.tower import check_vision_tower, resolve_verifier

    if not cfg.out:
        raise ValueError("calibrate needs out=DIR")
    if not cfg.instances:
        raise ValueError("calibrate needs instances=PATH (COCO instances: the ground truth)")
    if not (cfg.verifier or cfg.model):
        raise ValueError("calibrate needs verifier=DIR (or model=DIR with MODEL/verifier)")
    verifier = resolve_verifier(cfg.model, cfg.verifier)
    if cfg.model:   # before any work: FiSAO's verifier is the policy's own vision tower
        check_vision_tower(verifier, cfg.model, allow_mismatch=cfg.allow_verifier_mismatch)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, out)
    answers, source, root = _load_answers(cfg, vlm, out)
    chair = Chair.from_coco(cfg.instances, cfg.captions or None,
                            load_synonyms(cfg.synonyms or None))
    scorer = ClipScorer.from_pretrained(verifier, device=cfg.device,
                                        template=cfg.template, pooling=cfg.pooling,
                                        patch_labels=chair.categories
                                        if cfg.pooling == "patch" else None)
    entities = EntitySet.build(extra=(cfg.extra_vocab or cfg.synonyms or None),
                               wordnet=cfg.wordnet)
    entities.save(out / "entities.json")
    paths = [_image_path(a, root, source, k) for k, a in enumerate(answers)]
    embs = image_embeddings(paths, scorer, cfg.batch_size)
    rows = score_mentions(answers, chair, scorer, entities, [embs[p] for p in paths])
    write_jsonl(out / "scores.jsonl", rows)

    gt_t = [r["token_score"] for r in rows if r["hallucinated"] is False]
    hal_t = [r["token_score"] for r in rows if r["hallucinated"] is True]
    other_t = [r["token_score"] for r in rows if r["hallucinated"] is None]
    gt_s = [r["sentence_score"] for r in rows if r["hallucinated"] is False
            and r["sentence_score"] is not None]
    hal_s = [r["sentence_score"] for r in rows if r["hallucinated"] is True
             and r["sentence_score"] is not None]
    pct = tuple(cfg.percentiles) if cfg.percentiles else None
    if pct is not None and len(pct) != 2:
        raise ValueError(f"percentiles must be [lo, hi], got {list(pct)}")
    tok_cal = calibrate(gt_t, hal_t, cfg.lam, other_scores=other_t, percentiles=pct,
                        template=cfg.template, scale=scorer.scale, level="token",
                        pooling=scorer.pooling, patch_labels=scorer.patch_labels)

    # Sentence level (ablation): whole responses with / without a hallucinated object, among
    # the responses with at least one CHAIR-labelled object.
    resp_hal: dict[int, bool] = {}
    for r in rows:
        if r["hallucinated"] is not None:
            k = r["answer_index"]
            resp_hal[k] = resp_hal.get(k, False) or r["hallucinated"]
    ks = sorted(resp_hal)
    whole_scores: dict[int, float] = {}
    for s in range(0, len(ks), cfg.batch_size):
        chunk = ks[s:s + cfg.batch_size]
        e = torch.stack([embs[paths[k]] for k in chunk])
        for k, v in zip(chunk, scorer.sentence_score([answers[k]["answer"] for k in chunk],
                                                     e).tolist()):
            whole_scores[k] = float(v)
    sent_gt = [whole_scores[k] for k in ks if not resp_hal[k]]
    sent_hal = [whole_scores[k] for k in ks if resp_hal[k]]
    sent_cal = calibrate(sent_gt, sent_hal, cfg.lam, template="{}", scale=scorer.scale,
                         level="sentence", pooling=scorer.pooling,
                         patch_labels=scorer.patch_labels) if sent_gt and sent_hal else None
    result = {
        **tok_cal.to_dict(),
        "auroc_token": auroc(gt_t, hal_t),
        "auroc_sentence": auroc(gt_s, hal_s) if gt_s and hal_s else None,
        "auroc_response": auroc(sent_gt, sent_hal) if sent_gt and sent_hal else None,
        "n_responses": len(answers),
        "n_mentions": len(rows),
        "n_unlabelled": len(other_t),
        "answers": str(source),
        "entities": entities.stats(),
        "sentence_calibration": sent_cal.to_dict() if sent_cal else None,
    }
    figs = {"token": plot_score_distributions(
        gt_t, hal_t, out / "fig1a_token_scores.png", "Token-level verifier scores",
        "S(object, image)")}
    if gt_s and hal_s:
        figs["sentence"] = plot_score_distributions(
            gt_s, hal_s, out / "fig1b_sentence_scores.png", "Sentence-level verifier scores",
            "CLIP score of the sentence")
    refs = load_refs(cfg.captions) if cfg.captions else {}
    if refs and whole_scores:
        caps = {k: answers[k]["answer"] for k in ks}
        per = per_caption_bleu_rouge(caps, {k: refs.get(_norm_id(answers[k]["image_id"]), [])
                                            for k in ks})
        xs = [whole_scores[k] for k in per]
        if len(xs) >= 3:
            figs["bleu"] = plot_correlation(xs, [per[k]["bleu_4"] for k in per],
                                            out / "fig2a_sentence_vs_bleu.png",
                                            "sentence CLIP score", "BLEU-4")
            figs["rouge"] = plot_correlation(xs, [per[k]["rouge_l"] for k in per],
                                             out / "fig2b_sentence_vs_rouge.png",
                                             "sentence CLIP score", "ROUGE-L")
    result["figures"] = figs
    write_json(out / "calibration_report.json", result)
    if sent_cal:
        sent_cal.to_json(out / "calibration_sentence.json")
    # Written last: the file the trainer reads holds exactly the Calibration fields.
    tok_cal.to_json(out / "calibration.json")
    return result


def _norm_id(x: Any) -> Any:
    try:
        return int(x)
    except (TypeError, ValueError):
        return x


def load_refs(captions_path: str | os.PathLike) -> dict[Any, list[str]]:
    """{image_id: [reference caption, ...]} from a COCO captions file."""
    from visalign.data.coco import load_coco_captions

    return {_norm_id(k): v for k, v in load_coco_captions(captions_path).items()}


def answer_scores(answers: list[dict], scorer: Any, entities: Any, root: Path,
                  source: Any = None, batch_size: int = 32) -> list[dict]:
    """Every entity mention of every answer with its verifier score (no labels needed)."""
    paths = [_image_path(a, root, source, k) for k, a in enumerate(answers)]
    embs = image_embeddings(paths, scorer, batch_size)
    rows = []
    for k, (a, p) in enumerate(zip(answers, paths)):
        text = a.get("answer")
        if not isinstance(text, str):
            raise DataError(source, "missing answer text", record=a.get("id", k), field="answer")
        ms = entities.find(text)
        if not ms:
            continue
        sc = scorer.score([m.canonical for m in ms], embs[p]).reshape(-1).tolist()
        rows += [{"id": a.get("id"), "word": m.surface, "scored_as": m.canonical,
                  "score": float(s)} for m, s in zip(ms, sc)]
    return rows


def mean_shift_ci(before: list[dict], after: list[dict], n_boot: int = 2000, seed: int = 0,
                  key: str = "score") -> list[float]:
    """95 % interval of mean(after) − mean(before) over mentions, resampling the *answers*
    (rows grouped by ``id``; the same ids in both, paired, as two models answer the same
    prompts): mentions of one answer are not independent, so resampling them singly would make
    the interval too narrow. An id missing on one side counts as an answer with no mention.
    The bootstrap is :func:`visalign.eval.significance.paired_ratio_shift_ci`."""
    from visalign.eval.significance import paired_ratio_shift_ci

    sums: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    for name, rows in (("before", before), ("after", after)):
        for r in rows:
            g = sums[name].setdefault(str(r["id"]), [0.0, 0.0])
            g[0] += r[key]
            g[1] += 1
    ids = sorted(set(sums["before"]) | set(sums["after"]))
    if not ids:
        raise ValueError("mean_shift_ci: no mentions on either side")
    zero = [0.0, 0.0]
    return paired_ratio_shift_ci([sums["before"].get(i, zero) for i in ids],
                                 [sums["after"].get(i, zero) for i in ids],
                                 n_boot=n_boot, seed=seed)


def reward_shift(before: str | os.PathLike, after: str | os.PathLike, out: str | os.PathLike, *,
                 verifier: str | os.PathLike, calibration: str | os.PathLike | None = None,
                 entities: str | os.PathLike | None = None, image_root: str = "",
                 template: str = "a photo of a {}.") -> dict:
    """Fig. 4: verifier scores (and Eq. 8 rewards) of generated objects before vs after training.

    ``before`` / ``after``: answer files of the two models on the same prompts. With a
    ``calibration`` its template is used and the rewards are plotted too; ``entities`` (an
    entities.json, default: the calibration's, else built) decides which words are objects.
    Writes ``out/fig4_score_shift.png`` (+ ``fig4_reward_shift.png``) and
    ``out/reward_shift.json``; returns the latter's content, whose ``scores.shift_ci95`` is
    the paired 95 % interval of the mean-score shift (:func:`mean_shift_ci`).
    """
    import torch

    from visalign.analysis.distributions import plot_reward_shift
    from visalign.verifier.entities import EntitySet
    from visalign.verifier.reward import Calibration, normalized_reward
    from visalign.verifier.scorer import ClipScorer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    calib = Calibration.from_json(calibration) if calibration else None
    scorer = ClipScorer.from_pretrained(
        verifier, template=calib.template if calib else template,
        pooling=calib.pooling if calib else "image",
        patch_labels=calib.patch_labels if calib else None)
    ent_path = entities or (Path(calibration).parent / "entities.json" if calibration else None)
    ents = (EntitySet.load(ent_path) if ent_path and Path(ent_path).exists()
            else EntitySet.build())
    result: dict = {"before": str(before), "after": str(after)}
    scores, rows = {}, {}
    for name, path in (("before", before), ("after", after)):
        recs = read_records(path)
        root = Path(image_root) if image_root else Path(path).parent
        rows[name] = answer_scores(recs, scorer, ents, root, path)
        scores[name] = [r["score"] for r in rows[name]]
        result[f"n_{name}"] = len(recs)
        if not scores[name]:
            raise DataError(path, "no entity mentions in the answers")
    result["scores"] = plot_reward_shift(scores["before"], scores["after"],
                                         out / "fig4_score_shift.png",
                                         "Generated-object verifier scores", "S(object, image)")
    result["scores"]["shift_ci95"] = mean_shift_ci(rows["before"], rows["after"])
    if calib is not None:
        rw = {k: normalized_reward(torch.tensor(v), calib).tolist() for k, v in scores.items()}
        result["rewards"] = plot_reward_shift(rw["before"], rw["after"],
                                              out / "fig4_reward_shift.png",
                                              "Generated-object rewards (Eq. 8)", "reward")
        for k, v in rw.items():
            result[f"neg_share_{k}"] = sum(x < 0 for x in v) / len(v)
            result[f"pos_share_{k}"] = sum(x > 0 for x in v) / len(v)
    write_json(out / "reward_shift.json", result)
    return result
