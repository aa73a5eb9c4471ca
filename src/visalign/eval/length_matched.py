"""Is a lower CHAIR more than writing less? CHAIR against the base cut to the same length.

CHAIR_s counts descriptions with any hallucinated object, so it falls when descriptions name
fewer objects, whether or not they name them more truthfully; a method that shortens its
descriptions lowers CHAIR for free. The comparator here is the base model's own description
of each image *cut to the method's length*: for every image the base's text is cut after as
many words (CHAIR's tokens) as the method's description of that image has; when the method
writes more, the base's description stays whole. A method below this length-matched base
names objects more truthfully than the base writing as little; one at or above it only writes
less. Cutting keeps the base's first words, so if the base hallucinates late in a description
the cut base is a favourable comparator (it is what "the base writing less" means; a model
that shortens differently could do better).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from visalign.eval.chair import _TOKEN_RE

__all__ = ["cut_to_words", "length_matched_captions", "chair_vs_length_matched_base",
           "caption_summary"]


def cut_to_words(text: str, n: int) -> str:
    """``text`` up to the end of its ``n``-th word (CHAIR's tokens); whole if it is shorter."""
    if n <= 0:
        return ""
    for i, m in enumerate(_TOKEN_RE.finditer(text), 1):
        if i == n:
            return text[:m.end()]
    return text


def length_matched_captions(chair: Any, base_caps: Sequence[Mapping],
                            cell_caps: Sequence[Mapping]) -> list[dict]:
    """CHAIR details (``Chair.evaluate``'s ``captions``) of the base's descriptions cut, image by
    image, to the word count (``n_words``) of the cell's description of the same image; images
    the cell did not describe are left out."""
    n_words = {c["image_id"]: c["n_words"] for c in cell_caps}
    # the base's record id travels with its cut text, so the pairing by (image, id) holds
    recs = [{"image_id": c["image_id"],
             "caption": cut_to_words(c["caption"], n_words[c["image_id"]]),
             **({"id": c["id"]} if "id" in c else {})}
            for c in base_caps if c["image_id"] in n_words]
    if not recs:
        raise ValueError("no image in common: were both models evaluated on the same prompts?")
    return chair.evaluate(recs)["captions"]


def caption_summary(caps: Sequence[Mapping]) -> dict:
    """CHAIR_s, CHAIR_i, CHAIR, recall, mean words and objects named per description."""
    n = len(caps)
    men = sum(len(c["mentions"]) for c in caps)
    hal = sum(sum(bool(m["hallucinated"]) for m in c["mentions"]) for c in caps)
    s = sum(c["chair_s"] for c in caps) / n if n else 0.0
    i = hal / men if men else 0.0
    return {"chair": (s + i) / 2, "chair_s": s, "chair_i": i,
            "recall": sum(c["recall"] for c in caps) / n if n else 0.0,
            "words": sum(c["n_words"] for c in caps) / n if n else 0.0,
            "objects_named": men / n if n else 0.0, "n": n}


def chair_vs_length_matched_base(chair: Any, base_caps: Sequence[Mapping],
                                 cell_caps: Sequence[Mapping], *, n_boot: int = 1000,
                                 seed: int = 0) -> dict:
    """The cell's CHAIR minus the length-matched base's, paired over images, with a bootstrap
    interval (:func:`visalign.eval.significance.paired_chair_bootstrap`'s ``delta``, ``ci``,
    ``p_lower``), plus both sides' :func:`caption_summary` (``other``: the cell's, ``base_cut``)."""
    from visalign.eval.significance import paired_chair_bootstrap

    cut = length_matched_captions(chair, base_caps, cell_caps)
    ids = {c["image_id"] for c in cut}
    cell = [c for c in cell_caps if c["image_id"] in ids]
    b = paired_chair_bootstrap(cut, cell, n_boot=n_boot, seed=seed)
    return {"n": b["n"], "other": caption_summary(cell), "base_cut": caption_summary(cut),
            "delta": b["delta"], "ci": b["ci"], "p_lower": b["p_lower"]}
