"""Caption metrics against COCO reference captions: BLEU-1..4, ROUGE-L, CIDEr (pycocoevalcap's
CIDEr-D implementation, document frequencies from the evaluated images' references, as the
COCO caption evaluation does) and METEOR when Java is present.

Tokenisation is the COCO caption evaluation's: Stanford PTBTokenizer (the jar shipped inside
``pycocoevalcap``, lower-cased, one line per caption) followed by removal of pycocoevalcap's
punctuation tokens. We run the jar ourselves with the temp file in the system temp dir (the
pycocoevalcap wrapper writes it next to the jar, i.e. into site-packages). Without Java the
fallback is a documented Python tokenizer: lower-case, keep runs of letters/digits (hyphenated
words and contractions like "don't" stay one token), drop everything else. Its scores are close
to but not identical with the PTB ones; the result says which tokenizer ran (``tokenizer``) and
why METEOR is missing (``meteor_skipped``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from visalign.data.coco import coco_json, norm_image_id
from visalign.eval.chair import caption_text
from visalign.io import DataError, read_records

__all__ = ["load_captions", "load_references", "caption_metrics", "python_tokenize",
           "java_available"]

_PY_TOKEN_RE = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH (PTB tokenizer and METEOR need it)."""
    return shutil.which("java") is not None


def python_tokenize(text: str) -> str:
    """Fallback tokenizer: lower-case words (letters/digits, inner ' and - kept), space-joined."""
    return " ".join(_PY_TOKEN_RE.findall(text.lower()))


def load_captions(path: str | os.PathLike) -> list[dict]:
    """Caption records (JSON list or JSONL) with ``image_id`` and ``caption`` (or ``answer``
    as ``visalign generate`` writes it), normalised to ``{"image_id", "caption", ...}``."""
    out = []
    for i, rec in enumerate(read_records(path)):
        if "image_id" not in rec:
            raise DataError(path, "missing image id", record=i, field="image_id")
        out.append({**rec, "caption": caption_text(rec, i, path)})
    return out


def load_references(captions_path_or_coco: Any) -> dict[Any, list[str]]:
    """Reference captions per image id from a COCO ``captions`` JSON."""
    data, path = coco_json(captions_path_or_coco, "captions")
    refs: dict[Any, list[str]] = {}
    for i, ann in enumerate(data.get("annotations") or []):
        if "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise DataError(path, "expected 'image_id' and a string 'caption'",
                            record=f"annotations[{i}]")
        refs.setdefault(norm_image_id(ann["image_id"]), []).append(ann["caption"])
    return refs


def _ptb_tokenize(sentences: list[str]) -> list[str]:
    """Stanford PTBTokenizer over ``sentences`` (one per line), pycocoevalcap punctuation out."""
    from pycocoevalcap.tokenizer import ptbtokenizer as ptb

    jar = Path(ptb.__file__).with_name(ptb.STANFORD_CORENLP_3_4_1_JAR)
    text = "\n".join(" ".join(s.split()) for s in sentences)  # no newline inside a caption
    with tempfile.TemporaryDirectory(prefix="visalign-ptb-") as d:
        src = Path(d) / "captions.txt"
        src.write_text(text, encoding="utf-8")
        proc = subprocess.run(
            ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", "-encoding", "UTF-8", str(src)],
            capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"PTBTokenizer exited with {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-500:]}")
    lines = proc.stdout.decode("utf-8", errors="replace").split("\n")
    if len(lines) < len(sentences):
        raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {len(sentences)}")
    punct = set(ptb.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in punct)
            for line in lines[:len(sentences)]]


def caption_metrics(records: Iterable[Mapping], references: Any, *,
                    meteor: bool = True, tokenizer: str = "auto", path: Any = None) -> dict:
    """BLEU-1..4, ROUGE-L, CIDEr (+ METEOR) of one caption per image against its references.

    ``references``: ``{image_id: [caption, ...]}``, or a COCO captions JSON (path, dict or
    pycocotools ``COCO``). ``tokenizer``: ``auto`` (PTB when Java is present, else Python),
    ``ptb`` or ``python``.
    Returns ``{"metrics": {bleu_1..bleu_4, rouge_l, cider[, meteor]}, "tokenizer": ...,
    "meteor_skipped": reason | None, "n_captions": n, "images": {image_id: {cider, ...}}}``.
    """
    if tokenizer not in ("auto", "ptb", "python"):
        raise ValueError(f"tokenizer must be auto, ptb or python, got {tokenizer!r}")
    if isinstance(references, (str, os.PathLike)) or hasattr(references, "dataset") or (
            isinstance(references, Mapping) and "annotations" in references):
        references = load_references(references)
    references = {norm_image_id(k): v for k, v in references.items()}
    hyps: dict[Any, str] = {}
    for i, rec in enumerate(records):
        if "image_id" not in rec:
            raise DataError(path, "missing image id", record=i, field="image_id")
        image_id = norm_image_id(rec["image_id"])
        if image_id in hyps:
            raise DataError(path, f"a second caption for image {rec['image_id']!r}: caption "
                                  "metrics need exactly one caption per image", record=i,
                            field="image_id")
        if image_id not in references or not references[image_id]:
            raise DataError(path, f"image {rec['image_id']!r} has no reference captions",
                            record=i, field="image_id")
        hyps[image_id] = caption_text(rec, i, path)
    if not hyps:
        raise DataError(path, "no captions to evaluate")

    ids = list(hyps)
    flat = [hyps[k] for k in ids]
    ref_lists = [list(references[k]) for k in ids]
    for refs in ref_lists:
        flat.extend(refs)

    notes: list[str] = []
    used = tokenizer
    if tokenizer in ("auto", "ptb"):
        if java_available():
            try:
                toks = _ptb_tokenize(flat)
                used = "ptb"
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                if tokenizer == "ptb":
                    raise
                notes.append(f"PTB tokenizer failed ({e}); used the Python tokenizer")
                used = "python"
        elif tokenizer == "ptb":
            raise RuntimeError("tokenizer 'ptb' needs Java (java not found on PATH)")
        else:
            notes.append("Java not found: used the Python tokenizer instead of PTBTokenizer")
            used = "python"
    if used == "python":
        toks = [python_tokenize(s) for s in flat]

    res = {k: [toks[i]] for i, k in enumerate(ids)}
    gts: dict[Any, list[str]] = {}
    j = len(ids)
    for k, refs in zip(ids, ref_lists):
        gts[k] = toks[j:j + len(refs)]
        j += len(refs)

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    metrics: dict[str, float] = {}
    per_image: dict[Any, dict[str, float]] = {k: {} for k in ids}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        metrics[f"bleu_{n + 1}"] = float(bleu[n])
    rouge, rouge_each = Rouge().compute_score(gts, res)
    metrics["rouge_l"] = float(rouge)
    cider, cider_each = Cider().compute_score(gts, res)
    metrics["cider"] = float(cider)
    for i, k in enumerate(ids):
        per_image[k] = {"bleu_4": float(bleu_each[3][i]), "rouge_l": float(rouge_each[i]),
                        "cider": float(cider_each[i])}

    meteor_skipped = None
    if not meteor:
        meteor_skipped = "disabled (--no-meteor)"
    elif not java_available():
        meteor_skipped = "Java not found"
    else:
        try:
            score, each = _meteor(gts, res)
            metrics["meteor"] = score
            for i, k in enumerate(ids):
                per_image[k]["meteor"] = each[i]
        except (OSError, ValueError, RuntimeError) as e:
            meteor_skipped = f"METEOR failed: {e}"
    return {"metrics": metrics, "tokenizer": used, "meteor_skipped": meteor_skipped,
            "notes": notes, "n_captions": len(ids),
            "images": [{"image_id": k, **per_image[k]} for k in ids]}


def _meteor(gts: dict, res: dict) -> tuple[float, list[float]]:
    """pycocoevalcap METEOR (a Java subprocess), always shut down afterwards."""
    from pycocoevalcap.meteor.meteor import Meteor

    m = Meteor()
    try:
        score, each = m.compute_score(gts, res)
    finally:
        # pycocoevalcap only stops the JVM in __del__; stop it now so no process lingers.
        try:
            m.meteor_p.stdin.close()
            m.meteor_p.kill()
            m.meteor_p.wait(timeout=10)
        except Exception:
            pass
        m.meteor_p = _Stopped()
    return float(score), [float(s) for s in each]


class _Stopped:
    """Stand-in so Meteor.__del__ finds nothing left to close."""

    class _Pipe:
        def close(self) -> None:
            pass

    stdin = _Pipe()

    def kill(self) -> None:
        pass

    def wait(self, *a: Any) -> None:
        pass
