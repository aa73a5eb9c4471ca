"""The benchmark registry of ``visalign eval suite`` (in the style of lm-evaluation-harness).

A benchmark turns the data paths of a :class:`SuiteData` into generation prompts and scores the
answers with its own protocol. The suite generates every benchmark's prompts with the same model
(batched, resumable JSONL answers), asks each benchmark to score them, and writes one row in the
shared result format. Built-in benchmarks (chair, pope, mmhal, objhal) live in
:mod:`visalign.eval.benchmarks`; another module registers its own with :func:`register` (AMBER's
module is imported on first use when it exists).
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Protocol, runtime_checkable

from visalign.config import field
from visalign.eval.judge import JudgeConfig

__all__ = ["Benchmark", "SuiteData", "register", "get", "names"]

# Modules that register benchmarks when imported; a missing optional one is not an error.
_PROVIDERS = ("visalign.eval.benchmarks", "visalign.eval.amber")


@dataclasses.dataclass
class SuiteData:
    """Where each benchmark's data lives, and the protocol options the field varies."""

    coco_root: str = field("", help="COCO root: annotations/{instances,captions}_{train,val}2014"
                                    ".json and the image folders (val2014/, train2017/, ...)")
    pope_dir: str = field("", help="folder of POPE's coco_pope_{random,popular,adversarial}.json "
                                   "('' = build them from the COCO root's val2014 annotations "
                                   "with POPE's sampling: pope_images, pope_seed)")
    amber_dir: str = field("", help="AMBER's data/ folder")
    mmhal_file: str = field("", help="MMHal-Bench response_template.json (images/ beside it)")
    objhal_file: str = field("", help="Object HalBench obj_halbench_300_with_image.jsonl")
    work_dir: str = field("", help="where benchmarks cache derived files (decoded images)")
    chair_images: str = field("chair-500", help="chair-500 (less-is-more's list) or val2014:N "
                                                "(a seeded sample of N val2014 images)")
    chair_seed: int = field(0, help="seed of the val2014:N sample")
    chair_variant: str = field("reference", help="reference (chair.py's semantics), pattern "
                                                 "(chair.py exactly) or lemma (OPERA / "
                                                 "less-is-more / PAI)")
    chair_caption_metrics: bool = field(True, help="also score the CHAIR descriptions with "
                                                   "BLEU/ROUGE-L/CIDEr against COCO's captions")
    pope_parser: str = field("llava", help="llava (eval_pope.py) or lmms (exact match)")
    pope_images: int = field(500, help="without pope_dir: images per split of the POPE files "
                                       "built from the COCO root's val2014 annotations")
    pope_seed: int = field(0, help="without pope_dir: seed of those files")
    pope_splits: list[str] = field(["random", "popular", "adversarial"], help="POPE splits")
    mmhal_images: str = field("", help="MMHal-Bench image folder (default: images/ beside the "
                                       "file)")
    objhal_mode: str = field("judge", help="judge (LLM object extraction) or words (no judge)")
    objhal_synonyms: str = field("", help="RLAIF-V's synonyms_refine.txt, or 'coco' for the "
                                          "packaged CHAIR table")
    objhal_nlp: str = field("spacy", help="parser of judge-extracted objects: spacy "
                                          "(en_core_web_trf, as the reference) or nltk")
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def path(self, name: str, what: str) -> Path:
        """The path option ``name``, or a one-line error saying which option to set."""
        value = getattr(self, name)
        if not value:
            raise ValueError(f"{what} needs --{name.replace('_', '-')}")
        p = Path(value)
        if not p.exists():
            raise FileNotFoundError(f"--{name.replace('_', '-')} {p}: not found")
        return p


@runtime_checkable
class Benchmark(Protocol):
    """One benchmark protocol: prompts to generate, and the scoring of the answers."""

    name: str              # "chair", "pope", "mmhal", "objhal", "amber"
    max_new_tokens: int    # protocol default, overridable by settings

    def prompts(self, data: SuiteData) -> list[dict]:
        """``[{"id": str, "image": absolute path, "prompt": str, ...extra}]``."""
        ...

    def score(self, prompts: list[dict], answers: dict[str, str], data: SuiteData,
              out: Path) -> dict:
        """``{"metrics": {...shared keys...}, ...details}``; ``out`` is the suite's folder."""
        ...


_REGISTRY: dict[str, Benchmark] = {}
_loaded = False


def register(b: Benchmark) -> None:
    """Add (or replace) a benchmark under ``b.name``."""
    if not isinstance(b, Benchmark):
        raise TypeError(f"{b!r} does not implement the Benchmark protocol")
    _REGISTRY[b.name] = b


def _load_providers() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _PROVIDERS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def get(name: str) -> Benchmark:
    """The benchmark registered as ``name``; an unknown name is a one-line error."""
    _load_providers()
    if name not in _REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Registered benchmark names."""
    _load_providers()
    return sorted(_REGISTRY)
