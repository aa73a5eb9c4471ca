"""A COCO root and a LLaVA instruction file as a data source (:class:`~visalign.data.source.
DataSource`): what the comparison grid needs to align and evaluate a real model.

- The alignment pool: records of the instruction file (llava_instruct_150k.json, detail_23k.json
  or llava_v1_5_mix665k.json, read as they ship) whose images belong to ``alignment``:
  ``coco`` = COCO train images that have annotations (``train_split``, train2017 by default);
  ``ocrvqa`` / ``textcaps`` = mix665k's records under ``ocr_vqa/`` / ``textvqa/`` (the nSFT
  paper's other two alignment sources, Table 9), which have no COCO objects.
- Evaluation: the COCO ``eval_split`` (val2014, where CHAIR and POPE are defined), with
  detail-description prompts for ``eval_images`` images drawn with ``seed`` (or a given list).

The source writes its normalised files once into ``root`` (records with unique keys, task,
image id and absolute image paths; prompts as JSONL), so every stage above reads plain files the
way it reads the micro-world's. A changed input or option rewrites them.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path, PurePath
from typing import Any, Sequence

from visalign.data.coco import CocoRoot, coco_image_id
from visalign.io import DataError, read_json, write_json, write_jsonl

ALIGNMENT_SOURCES = ("coco", "ocrvqa", "textcaps")
# where mix665k keeps each source's images (the first folder of the record's image path)
SOURCE_FOLDERS = {"ocrvqa": "ocr_vqa", "textcaps": "textvqa"}
# The CHAIR prompt papers use (LLaVA's detail-description instruction).
DETAIL_PROMPT = "Please describe this image in detail."


class CocoInstructSource:
    """A COCO root + an instruction file, materialised under ``root`` (see the module docs)."""

    def __init__(self, coco_root: str | os.PathLike, instruct: str | os.PathLike,
                 root: str | os.PathLike, *, image_folder: str | os.PathLike | None = None,
                 alignment: str = "coco", train_split: str = "train2017",
                 eval_split: str = "val2014", eval_images: int = 500,
                 eval_image_ids: Sequence[int] | None = None, seed: int = 0,
                 synonyms: str | os.PathLike | None = None):
        if alignment not in ALIGNMENT_SOURCES:
            raise ValueError(f"alignment must be one of {', '.join(ALIGNMENT_SOURCES)}, got "
                             f"{alignment!r}")
        self.coco = CocoRoot(coco_root)
        self.instruct = Path(instruct)
        if not self.instruct.is_file():
            raise DataError(self.instruct, "instruction file not found")
        self._root = Path(root)
        self.image_folder = Path(image_folder) if image_folder else None
        self.alignment = alignment
        self._train, self._eval = train_split, eval_split
        self.eval_images = eval_images
        self.eval_image_ids = list(eval_image_ids) if eval_image_ids else None
        self.seed = seed
        self._synonyms = Path(synonyms) if synonyms else None
        self._prepared = False

    # ------------------------------------------------------------------ DataSource
    @property
    def root(self) -> Path:
        return self._root

    @property
    def image_root(self) -> Path:
        # every record and prompt the source writes carries an absolute image path
        return self.coco.path

    @property
    def synonyms_path(self) -> Path | None:
        return self._synonyms

    @property
    def splits(self) -> list[str]:
        return [self._train, self._eval]

    @property
    def train_split(self) -> str:
        return self._train

    @property
    def eval_split(self) -> str:
        return self._eval

    def instances_path(self, split: str) -> Path:
        return self.coco.instances_path(split)

    def captions_path(self, split: str) -> Path:
        return self.coco.captions_path(split)

    def image_dir(self, split: str) -> Path:
        """Where the split's COCO file names start."""
        return self.coco.image_dir(split)

    def llava_path(self, split: str) -> Path:
        self.prepare()
        return self._root / f"llava_{split}.json"

    def prompts_path(self, split: str) -> Path:
        self.prepare()
        return self._root / f"prompts_{split}.jsonl"

    def train_image_ids(self) -> list[int]:
        self.prepare()
        return read_json(self._root / "alignment_image_ids.json")

    # ------------------------------------------------------------------ materialising
    def describe(self) -> dict:
        """What the files under ``root`` were made from (a change rewrites them)."""
        st = self.instruct.stat()
        return {"coco_root": str(self.coco.path), "instruct": str(self.instruct.resolve()),
                "instruct_size": st.st_size, "instruct_mtime_ns": st.st_mtime_ns,
                "image_folder": str(self.image_folder) if self.image_folder else None,
                "alignment": self.alignment, "train_split": self._train,
                "eval_split": self._eval, "eval_images": self.eval_images,
                "eval_image_ids": self.eval_image_ids, "seed": self.seed}

    def prepare(self) -> None:
        """Write the normalised records, prompts and the alignment pool (once)."""
        if self._prepared:
            return
        manifest = self._root / "source.json"
        want = self.describe()
        if manifest.exists() and read_json(manifest) == want:
            self._prepared = True
            return
        self._root.mkdir(parents=True, exist_ok=True)
        records = self._alignment_records()
        pool = sorted({r["image_id"] for r in records})
        write_json(self._root / f"llava_{self._train}.json", records)
        # a held-out split without instruction records: no short-answer questions to score
        write_json(self._root / f"llava_{self._eval}.json", [])
        write_jsonl(self._root / f"prompts_{self._train}.jsonl", self._pool_prompts(records))
        write_jsonl(self._root / f"prompts_{self._eval}.jsonl", self._eval_prompts())
        write_json(self._root / "alignment_image_ids.json", pool)
        write_json(manifest, want)   # last: a source cut off while writing is redone
        self._prepared = True

    def _image_path(self, image: str) -> Path:
        """Absolute path of a record's image: under ``image_folder`` when given (mix665k's
        relative paths), else the COCO train split's folder."""
        p = Path(image)
        if p.is_absolute():
            return p
        if self.image_folder is not None:
            return self.image_folder / p
        return self.coco.image_dir(self._train) / PurePath(image).name

    def _alignment_records(self) -> list[dict]:
        from visalign.data.llava import load_llava_records

        records = load_llava_records(self.instruct)
        out: list[dict] = []
        skipped = 0
        if self.alignment == "coco":
            known = set(self.coco.image_ids(self._train))
            for r in records:
                iid = r.get("image_id")
                if iid is None:
                    iid = coco_image_id(r["image"])
                if iid is None or int(iid) not in known:
                    skipped += 1
                    continue
                out.append({**r, "image_id": int(iid),
                            "image": str(self._image_path(r["image"]))})
        else:
            folder = SOURCE_FOLDERS[self.alignment]
            if self.image_folder is None:
                raise ValueError(f"alignment={self.alignment} needs image_folder=DIR, the "
                                 f"folder mix665k's image paths ({folder}/...) start in")
            ids: dict[str, int] = {}
            for r in records:
                if PurePath(r["image"]).parts[:1] != (folder,):
                    skipped += 1
                    continue
                # no COCO id: a stable integer per image file, for the grid's subsets
                iid = ids.setdefault(r["image"], len(ids) + 1)
                out.append({**r, "image_id": iid, "image": str(self._image_path(r["image"]))})
        if not out:
            raise DataError(self.instruct, f"no records of alignment source "
                                           f"{self.alignment!r} (checked {len(records)})")
        if skipped:
            print(f"{self.instruct}: {skipped} record(s) outside alignment source "
                  f"{self.alignment!r} left out", file=sys.stderr)
        missing = sorted({r["image"] for r in out if not Path(r["image"]).is_file()})
        if missing:
            raise DataError(self.instruct, f"{len(missing)} image file(s) not found, e.g. "
                                           f"{missing[0]}", field="image")
        return out

    def _pool_prompts(self, records: list[dict]) -> list[dict]:
        """One detail-description prompt per alignment image (FiSAO's calibration images)."""
        seen: dict[int, dict] = {}
        for r in records:
            if r["image_id"] not in seen:
                seen[r["image_id"]] = {"id": f"{self._train}-{r['image_id']}",
                                       "image": r["image"], "prompt": DETAIL_PROMPT,
                                       "image_id": r["image_id"]}
        return [seen[k] for k in sorted(seen)]

    def _eval_prompts(self) -> list[dict]:
        """Detail-description prompts of the evaluation images (the CHAIR protocol's prompt)."""
        ids = self.eval_image_ids
        if ids is None:
            pool = sorted(self.coco.image_ids(self._eval))
            n = min(self.eval_images, len(pool)) if self.eval_images else len(pool)
            ids = sorted(random.Random(self.seed).sample(pool, n))
        else:
            self.coco.check_image_ids([{"id": i, "image_id": i} for i in ids], self._eval,
                                      "eval_image_ids")
        return [{"id": f"{self._eval}-{i}", "image": str(self.coco.image_path(self._eval, i)),
                 "prompt": DETAIL_PROMPT, "image_id": i} for i in ids]


def source_summary(source: Any) -> str:
    """One line naming a data source (for reports)."""
    if isinstance(source, CocoInstructSource):
        return (f"COCO {source.coco.path} + {source.instruct.name} (alignment "
                f"{source.alignment}: {source.train_split}; evaluation {source.eval_split})")
    return f"micro-world {source.root}"


__all__ = ["ALIGNMENT_SOURCES", "CocoInstructSource", "DETAIL_PROMPT", "source_summary"]
