"""Does the model look at the image? Two checks that separate "the features carry the object"
from "the language model uses them".

* :func:`yes_no_scores` / :func:`image_dependence`: answer POPE-style questions by comparing the
  teacher-forced log-likelihood of "Yes" and "No" (no generation, so no parsing noise), once with
  the real image and once with a blank grey image. A model that answers from the question alone
  (the language prior) scores the same on both; the gap is what the image contributes.
* :func:`vision_probe_auroc`: a linear probe on the vision tower's pooled features, trained on
  one split and scored per category on another (macro AUROC). It bounds what the LM could read
  from the image if it used it well.

Together they tell which side of a VLM to fix when POPE sits near chance: a high probe AUROC with
no real-vs-blank gap means the LM ignores good features.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = ["yes_no_scores", "image_dependence", "pooled_vision_features", "vision_probe_auroc"]


def _answer_logprob(vlm: Any, images: Sequence[Any], questions: Sequence[str],
                    answer: str) -> "Any":
    """Summed log-probability of ``answer`` (plus the end-of-turn token) per sample."""
    import torch

    from visalign.models.adapter import sequence_logprobs

    convs = [[{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": answer}]
             for q in questions]
    with torch.no_grad():
        return sequence_logprobs(vlm.model, vlm.encode(list(images), convs)).sum(1).cpu()


def yes_no_scores(vlm: Any, images: Sequence[Any], questions: Sequence[str], *,
                  batch_size: int = 32, yes: str = "Yes", no: str = "No") -> list[float]:
    """log P(yes) − log P(no) for each (image, question): > 0 means the model answers yes."""
    out: list[float] = []
    for i in range(0, len(questions), batch_size):
        ims, qs = images[i:i + batch_size], questions[i:i + batch_size]
        diff = _answer_logprob(vlm, ims, qs, yes) - _answer_logprob(vlm, ims, qs, no)
        out += [float(d) for d in diff]
    return out


def _accuracy(scores: Sequence[float], labels: Sequence[bool]) -> dict[str, float]:
    pred = [s > 0 for s in scores]
    n = max(1, len(labels))
    return {"accuracy": sum(p == y for p, y in zip(pred, labels)) / n,
            "yes_ratio": sum(pred) / n}


def image_dependence(vlm: Any, records: Sequence[Mapping], *, image_root: str = "",
                     blank_color: tuple[int, int, int] = (128, 128, 128),
                     batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    """POPE accuracy by answer likelihood with the real image and with a blank one.

    ``records``: POPE question records (``image``, ``question``, ``label`` "yes"/"no"). Returns
    ``real`` and ``blank`` (accuracy, yes_ratio), ``gap`` (real − blank accuracy) and
    ``flipped``: the share of questions whose answer changes when the image is blanked, and
    ``score_shift``: the mean |change| of log P(yes) − log P(no) (0 for a model that is blind).
    """
    from PIL import Image

    from visalign.data.llava import resolve_image
    from visalign.io import DataError

    if not records:
        raise DataError(None, "image_dependence needs at least one question")
    images, blanks, questions, labels = [], [], [], []
    cache: dict[str, Any] = {}
    for r in records:
        path = str(resolve_image(r["image"], image_root or None))
        if path not in cache:
            with Image.open(path) as im:
                cache[path] = im.convert("RGB")
        img = cache[path]
        images.append(img)
        blanks.append(Image.new("RGB", img.size, blank_color))
        questions.append(r.get("question") or r["prompt"])
        labels.append(str(r["label"]).lower() == "yes")
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=2, desc="image dependence", unit="pass")
    real = yes_no_scores(vlm, images, questions, batch_size=batch_size)
    if bar:
        bar.update(1)
    blank = yes_no_scores(vlm, blanks, questions, batch_size=batch_size)
    if bar:
        bar.update(1)
        bar.close()
    r_acc, b_acc = _accuracy(real, labels), _accuracy(blank, labels)
    flipped = sum((a > 0) != (b > 0) for a, b in zip(real, blank)) / len(labels)
    shift = sum(abs(a - b) for a, b in zip(real, blank)) / len(labels)
    return {"n": len(labels), "real": r_acc, "blank": b_acc,
            "gap": r_acc["accuracy"] - b_acc["accuracy"], "flipped": flipped,
            "score_shift": shift}


def _vision_tower(model: Any) -> Any:
    for owner in (getattr(model, "model", None), model):
        tower = getattr(owner, "vision_tower", None)
        if tower is not None:
            return tower
    raise ValueError(f"{type(model).__name__} has no `vision_tower` (LLaVA-style models only)")


def pooled_vision_features(vlm: Any, images: Sequence[Any], *, layer: int = -1,
                           batch_size: int = 64) -> "Any":
    """Mean of the vision tower's patch features at hidden layer ``layer``, one row per image."""
    import torch

    tower = _vision_tower(vlm.model)
    rows = []
    for i in range(0, len(images), batch_size):
        pix = vlm.processor.image_processor(list(images[i:i + batch_size]),
                                            return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            hs = tower(pix.to(vlm.device, dtype=tower.dtype),
                       output_hidden_states=True).hidden_states[layer]
        rows.append(hs[:, 1:].float().mean(1).cpu())  # drop the class token
    return torch.cat(rows)


def vision_probe_auroc(train_x: "Any", train_y: "Any", val_x: "Any", val_y: "Any", *,
                       steps: int = 300, lr: float = 1e-2, weight_decay: float = 1e-4,
                       seed: int = 0) -> dict[str, Any]:
    """Linear multi-label probe (features → categories present); macro and micro val AUROC.

    ``*_x``: (n, d) float tensors; ``*_y``: (n, categories) 0/1 tensors. Categories that are
    all-present or all-absent on the validation rows are left out of the macro mean.
    """
    import torch

    from visalign.verifier.calibration import auroc

    if train_x.shape[0] != train_y.shape[0] or val_x.shape[0] != val_y.shape[0]:
        raise ValueError("features and labels must have the same number of rows")
    g = torch.Generator().manual_seed(seed)
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (val_x - mu) / sd
    lin = torch.nn.Linear(a.shape[1], train_y.shape[1])
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.01)
        lin.bias.zero_()
    opt = torch.optim.Adam(lin.parameters(), lr, weight_decay=weight_decay)
    y = train_y.float()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(lin(a), y).backward()
        opt.step()
    with torch.no_grad():
        p = lin(b)
    vy = val_y.bool()
    per = []
    for c in range(vy.shape[1]):
        pos, neg = p[vy[:, c], c].tolist(), p[~vy[:, c], c].tolist()
        if pos and neg:
            per.append(auroc(pos, neg))
    micro = auroc(p[vy].tolist(), p[~vy].tolist())
    return {"macro_auroc": sum(per) / len(per) if per else float("nan"),
            "micro_auroc": micro, "categories": len(per)}
