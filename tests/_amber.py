"""A small AMBER data folder in AMBER's own formats (annotations.json, relation.json,
safe_words.txt, query/*.json, image/), and responses with the cases the reference trips on.

relation.json holds AMBER's real entries for the words used; safe_words.txt is AMBER's file.
The expected numbers in the tests come from running AMBER's inference.py on these files.
"""

from __future__ import annotations

import json
from pathlib import Path

RELATION = {
    "sky": [], "grass": ["ground"], "person": ["people", "individual", "man", "woman", "boy",
                                               "girl"],
    "road": ["path", "street", "ground"], "cloud": [], "dog": [], "bird": ["bill"],
    "table": ["desk"], "cup": [], "tree": ["forest", "leave", "bush"],
    "car": ["window", "door", "tire", "vehicle", "light", "mirror", "plate"],
    "bench": ["chair", "armrest"], "building": [], "cat": [], "lake": ["water", "sea", "river"],
    "chair": ["bench"], "house": ["building"],
    "truck": ["car", "window", "door", "tire", "vehicle", "light", "mirror", "plate", "bed"],
    "forest": ["tree", "leave", "bush"], "river": ["lake", "water"], "plate": [], "fork": [],
    "window": ["glass"],
}
SAFE_WORDS = ["orange", "snack", "line", "camera", "light", "shoe", "sign", "range", "individual"]

GENERATIVE = [  # (truth, hallu, response)
    (["sky", "grass", "person", "road"], ["cloud", "dog", "bird"],
     "A Man walks his dogs along the road. There is no cloud in the sky. The grass is green, "
     "and a street sign stands near two people."),
    (["table", "cup", "person", "window"], ["cat", "fork", "chair"],
     "Yes, there is a table with two cups on it. A cat sleeps under the Table next to a bench, "
     "and the light from the window falls on a man."),
    (["tree", "building", "lake"], ["car", "truck", "bird"],
     "The forest surrounds a house by the river. A vehicle and a truck are parked near the "
     "trees, and birds fly over the water."),
    (["cat", "plate"], ["dog", "cup", "table"], "A cat sits on a plate on the desk."),
]
DISCRIMINATIVE = [  # (type, truth, query, response)
    ("discriminative-hallucination", "no", "Is there a dog in this image?", "No"),
    ("discriminative-hallucination", "yes", "Is there a sky in this image?",
     "Yes, there is a sky in the image."),
    ("discriminative-hallucination", "no", "Is there a cat in this image?", "no"),
    ("discriminative-attribute-state", "no", "Is the sky cloudy in this image?", "No."),
    ("discriminative-attribute-state", "yes", "Is the grass green in this image?", "Yes"),
    ("discriminative-attribute-number", "no", "Are there three cups in this image?", "Yes"),
    ("discriminative-attribute-number", "yes", "Are there two cups in this image?", "No"),
    ("discriminative-attribute-action", "no", "Is the cat running in this image?", "No"),
    ("discriminative-attribute-action", "yes", "Is the man walking in this image?", ""),
    ("discriminative-relation", "no",
     "Is there direct contact between the cat and table?", "No, they are not touching."),
    ("relation", "yes", "Is there direct contact between the cat and plate?", "Yes"),
    ("relation", "no", "Is there direct contact between the bird and water?", "No"),
]
QUERY_FILES = {
    "all": "query_all.json", "generative": "query_generative.json",
    "discriminative": "query_discriminative.json",
    "existence": "query_discriminative-existence.json",
    "attribute": "query_discriminative-attribute.json",
    "relation": "query_discriminative-relation.json",
}


def _task(kind: str) -> str:
    if kind == "generative":
        return "generative"
    if kind == "discriminative-hallucination":
        return "existence"
    return "attribute" if kind.startswith("discriminative-attribute") else "relation"


def responses() -> list[dict]:
    """One response per query id, in id order (AMBER's response format)."""
    out = [{"id": i + 1, "response": r} for i, (_, _, r) in enumerate(GENERATIVE)]
    out += [{"id": len(GENERATIVE) + i + 1, "response": r}
            for i, (_, _, _, r) in enumerate(DISCRIMINATIVE)]
    return out


def build_amber_dir(root: Path, images: bool = True) -> Path:
    """Write the folder (``root/data``, images in ``root/data/image``); returns ``root/data``."""
    data = Path(root) / "data"
    (data / "query").mkdir(parents=True, exist_ok=True)
    ann, queries = [], []
    for i, (truth, hallu, _) in enumerate(GENERATIVE):
        ann.append({"id": i + 1, "type": "generative", "truth": truth, "hallu": hallu})
        queries.append({"id": i + 1, "image": f"AMBER_{i + 1}.jpg",
                        "query": "Describe this image."})
    for j, (kind, truth, query, _) in enumerate(DISCRIMINATIVE):
        qid = len(GENERATIVE) + j + 1
        ann.append({"id": qid, "type": kind, "truth": truth})
        queries.append({"id": qid, "image": f"AMBER_{j % len(GENERATIVE) + 1}.jpg",
                        "query": query})
    (data / "annotations.json").write_text(json.dumps(ann, indent=1), encoding="utf-8")
    (data / "relation.json").write_text(json.dumps(RELATION, indent=1), encoding="utf-8")
    # AMBER's file ends without a newline
    (data / "safe_words.txt").write_text("\n".join(SAFE_WORDS), encoding="utf-8")
    kinds = {a["id"]: _task(a["type"]) for a in ann}
    sets = {"all": None, "generative": {"generative"},
            "discriminative": {"existence", "attribute", "relation"},
            "existence": {"existence"}, "attribute": {"attribute"}, "relation": {"relation"}}
    for name, tasks in sets.items():
        rows = [q for q in queries if tasks is None or kinds[q["id"]] in tasks]
        (data / "query" / QUERY_FILES[name]).write_text(json.dumps(rows, indent=1),
                                                         encoding="utf-8")
    if images:
        from PIL import Image

        (data / "image").mkdir(exist_ok=True)
        for i in range(len(GENERATIVE)):
            Image.new("RGB", (8, 8), (40 * i, 90, 160)).save(data / "image" / f"AMBER_{i + 1}.jpg")
    return data


# spaCy stand-in for the near-synonym tests: Doc.similarity from a table (1.0 for the same
# word, as spaCy gives); the same table drove inference.py for the expected numbers.
SIMILARITIES = {("house", "building"): 0.9, ("house", "bill"): 0.95, ("desk", "plate"): 0.82,
                ("desk", "cat"): 0.8}


class TableDoc:
    def __init__(self, text: str, table: dict):
        self.text, self.table = text, table

    def similarity(self, other: "TableDoc") -> float:
        if self.text == other.text:
            return 1.0
        return self.table.get((self.text, other.text), self.table.get((other.text, self.text),
                                                                      0.0))


class TableNLP:
    """Callable like a spaCy pipeline: ``nlp(word).similarity(nlp(other))``."""

    def __init__(self, table: dict | None = None):
        self.table = SIMILARITIES if table is None else table
        self.texts: list[str] = []

    def __call__(self, text: str) -> TableDoc:
        self.texts.append(text)
        return TableDoc(text, self.table)
