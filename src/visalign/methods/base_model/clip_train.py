"""Contrastive training of the micro-world's tiny CLIP (the VLM's vision tower and FiSAO's verifier).

Texts per image are its reference captions and object phrases ("a photo of a cup", with
synonyms). An object phrase is a positive for every image in the batch that contains that
object, so the InfoNCE targets are multi-positive (rows/columns normalised); treating those as
negatives would teach the verifier that present objects are absent.

Dense term (``dense_weight``): the contrastive loss only shapes the class token, and on the
micro-world it left the patch tokens nearly blind to object identity (a linear probe named the
object under a patch 23 % of the time), so the VLM, which reads patch tokens, had nothing to
ground its answers on. Each patch covered by an object is therefore also classified against the
object phrases of every category ("a photo of a {category}."), through the same projection and
temperature as the global score: the patch tokens become phrase-like, as a large CLIP's are.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Any, Callable

from visalign.config import field


@dataclasses.dataclass
class ClipTrainSettings:
    epochs: float = field(12.0, help="passes over the training images")
    images: int = field(
        0, help="distinct training images: the world's train split, then (when larger) more "
        "scenes drawn in memory from the same distribution (`world.build.generate_scenes`), as "
        "a real CLIP is pre-trained on far more images than the VLM's instruction data; 0 = "
        "the train split alone")
    batch_size: int = field(64, help="images per batch")
    lr: float = field(2e-3, help="peak learning rate (AdamW, cosine)")
    weight_decay: float = field(0.05, help="AdamW weight decay")
    phrase_share: float = field(0.6, help="share of texts that are object phrases (vs captions)")
    template: str = field("a photo of a {}.", help="object phrase template (FiSAO's too)")
    dense_weight: float = field(
        1.0, help="weight of the patch-vs-object-phrase loss (0 = contrastive only)")


@dataclasses.dataclass
class ClipExample:
    image: Any                     # PIL image
    captions: list[str]
    objects: list[tuple[str, list[str]]]  # (category, surface names incl. synonyms)
    # category index (into train_clip's ``categories``) of the object covering each patch,
    # row-major, -1 for background; None = no dense supervision for this image
    patch_labels: list[int] | None = None


def patch_labels(boxes: list[tuple[float, float, float, float, int]], image_size: int,
                 patch_size: int) -> list[int]:
    """Per-patch label from ``(x, y, w, h, label)`` boxes: the box holding the patch centre,
    the smallest one where boxes overlap (it is drawn on top or is the harder object)."""
    g = image_size // patch_size
    out = [-1] * (g * g)
    for x, y, w, h, label in sorted(boxes, key=lambda b: -(b[2] * b[3])):
        for py in range(g):
            cy = py * patch_size + patch_size / 2
            if not y <= cy < y + h:
                continue
            for px in range(g):
                cx = px * patch_size + patch_size / 2
                if x <= cx < x + w:
                    out[py * g + px] = label
    return out


def encode_clip_texts(tok: Any, texts: list[str], max_len: int) -> dict:
    """Tokenise for CLIP's text tower; every row must end with EOS.

    HF CLIP pools the text at the first ``eos_token_id``. The CLIP dir's tokenizer appends it
    (``models.tiny``); a tokenizer that did not would silently pool the first token, so check.
    """
    enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    last = ids.gather(1, (mask.sum(1, keepdim=True) - 1).clamp(min=0))
    if not bool((last == tok.eos_token_id).all()):
        raise ValueError("CLIP tokenizer does not end texts with EOS; build the CLIP dir with "
                         "visalign.models.tiny.build_tiny_clip")
    return {"input_ids": ids, "attention_mask": mask}


def _pixel_values(processor: Any, images: list) -> Any:
    return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


def train_clip(model: Any, processor: Any, examples: list[ClipExample], cfg: ClipTrainSettings,
               *, seed: int = 0, progress: bool = True, categories: list[str] | None = None,
               log: Callable[[dict], None] | None = None) -> dict:
    """Train ``model`` (a ``CLIPModel``) in place, on the device it sits on; returns summary
    stats.

    ``categories`` names the classes of ``ClipExample.patch_labels``; the dense term runs when
    both are given and ``cfg.dense_weight > 0``.
    """
    import torch
    import torch.nn.functional as F

    rng = random.Random(seed)
    torch.manual_seed(seed)
    tok = processor.tokenizer
    max_len = model.config.text_config.max_position_embeddings
    # Images are tensorised once: the processor is the slow part on a CPU.
    dev = next(model.parameters()).device
    pix_all = torch.cat([_pixel_values(processor, [e.image for e in examples[i:i + 256]])
                         for i in range(0, len(examples), 256)]).to(dev)
    n = len(examples)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else
        0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="clip", dynamic_ncols=True)
    model.train()
    order: list[int] = []
    t0 = time.time()
    loss_v = dense_v = float("nan")
    dense = bool(categories) and cfg.dense_weight > 0 and any(
        e.patch_labels is not None for e in examples)
    if dense:
        cat_enc = {k: v.to(dev) for k, v in encode_clip_texts(
            tok, [cfg.template.format(c) for c in categories], max_len).items()}
        n_patch = (pix_all.shape[-1] // model.config.vision_config.patch_size) ** 2
        labels_all = torch.tensor([e.patch_labels if e.patch_labels is not None
                                   else [-1] * n_patch for e in examples], device=dev)
    for step in range(total):
        if len(order) < cfg.batch_size:
            order = list(range(n))
            rng.shuffle(order)
        idx, order = order[: cfg.batch_size], order[cfg.batch_size:]
        texts, text_objs = [], []
        for i in idx:
            ex = examples[i]
            if ex.objects and rng.random() < cfg.phrase_share:
                cat, names = ex.objects[rng.randrange(len(ex.objects))]
                texts.append(cfg.template.format(rng.choice(names)))
                text_objs.append(cat)
            else:
                texts.append(rng.choice(ex.captions))
                text_objs.append(None)
        enc = encode_clip_texts(tok, texts, max_len)
        out = model(input_ids=enc["input_ids"].to(dev),
                    attention_mask=enc["attention_mask"].to(dev),
                    pixel_values=pix_all[idx])
        logits = out.logits_per_image  # (images, texts)
        b = len(idx)
        target = torch.eye(b, device=dev)
        for j, cat in enumerate(text_objs):
            if cat is None:
                continue
            for i_, i in enumerate(idx):
                if any(c == cat for c, _ in examples[i].objects):
                    target[i_, j] = 1.0
        loss_i = -(target / target.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
        loss_t = -(target / target.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
        loss = (loss_i + loss_t) / 2
        if dense:
            lab = labels_all[idx].reshape(-1)
            if bool((lab >= 0).any()):
                patches = model.visual_projection(model.vision_model.post_layernorm(
                    out.vision_model_output.last_hidden_state[:, 1:]))
                patches = patches / patches.norm(dim=-1, keepdim=True)
                cat_t = model.get_text_features(**cat_enc).pooler_output
                cat_t = cat_t / cat_t.norm(dim=-1, keepdim=True)
                plog = (patches @ cat_t.T).reshape(lab.shape[0], -1) * model.logit_scale.exp()
                dense_loss = F.cross_entropy(plog, lab, ignore_index=-1)
                loss = loss + cfg.dense_weight * dense_loss
                dense_v = float(dense_loss.detach())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():  # CLIP's clamp keeps the temperature from collapsing
            model.logit_scale.clamp_(0, math.log(100))
        loss_v = float(loss.detach())
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.3f}")
        if log and (step % 50 == 0 or step == total - 1):
            log({"stage": "clip", "step": step + 1, "loss": loss_v, "dense_loss": dense_v,
                 "elapsed": round(time.time() - t0, 2)})
    if bar:
        bar.close()
    model.eval()
    return {"steps": total, "loss": loss_v, "dense_loss": dense_v,
            "seconds": round(time.time() - t0, 2)}


def object_auroc(model: Any, processor: Any, images: list, present: list[set[str]],
                 categories: list[str], template: str = "a photo of a {}.") -> float:
    """AUROC of S(category, image) for present vs absent categories over ``images``."""
    import torch

    from visalign.verifier.calibration import auroc

    tok = processor.tokenizer
    dev = next(model.parameters()).device
    with torch.no_grad():
        enc = {k: v.to(dev) for k, v in encode_clip_texts(
            tok, [template.format(c) for c in categories],
            model.config.text_config.max_position_embeddings).items()}
        t = model.get_text_features(**enc).pooler_output
        t = t / t.norm(dim=-1, keepdim=True)
        pos, neg = [], []
        for i in range(0, len(images), 128):
            v = model.get_image_features(
                pixel_values=_pixel_values(processor, images[i:i + 128]).to(dev)).pooler_output
            v = v / v.norm(dim=-1, keepdim=True)
            s = (v @ t.T) * model.logit_scale.exp()
            for r, objs in enumerate(present[i:i + 128]):
                for c, cat in enumerate(categories):
                    (pos if cat in objs else neg).append(float(s[r, c]))
    return auroc(pos, neg)
