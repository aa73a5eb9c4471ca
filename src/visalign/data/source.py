"""What the comparison grid and the evaluation suite read: a data source.

A data source is a set of files in the formats visalign reads everywhere (COCO instances and
captions, LLaVA instruction records, detail-description prompts, a CHAIR synonyms table), named
per split. The micro-world (:class:`visalign.world.World`) is one; a COCO root with a
LLaVA-Instruct file is another. Code above the data layer asks a source for paths and never
needs to know which one it has.

Splits: ``train_split`` holds the alignment pool (instruction records whose images have
annotations) and FiSAO's calibration images; ``eval_split`` is held out for evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class DataSource(Protocol):
    """Paths of a data source's files (see the module docstring)."""

    @property
    def root(self) -> Path:
        """Directory of the source; derived files (e.g. POPE questions) are cached under it."""

    @property
    def image_root(self) -> Path:
        """Where relative image paths in the records and prompts start."""

    @property
    def synonyms_path(self) -> Path | None:
        """CHAIR synonyms table (None = COCO's, shipped with visalign)."""

    @property
    def splits(self) -> list[str]:
        """Every split the source has."""

    @property
    def train_split(self) -> str:
        """The split the alignment data and calibration images come from."""

    @property
    def eval_split(self) -> str:
        """The held-out split models are evaluated on."""

    def image_dir(self, split: str) -> Path:
        """Where the ``file_name`` of ``split``'s COCO images starts."""

    def instances_path(self, split: str) -> Path:
        """COCO instances JSON of ``split``."""

    def captions_path(self, split: str) -> Path:
        """COCO captions JSON of ``split``."""

    def llava_path(self, split: str) -> Path:
        """LLaVA instruction records of ``split``, each with ``task`` and ``image_id``."""

    def prompts_path(self, split: str) -> Path:
        """Detail-description prompts of ``split`` (JSONL: id, image, prompt, image_id)."""

    def train_image_ids(self) -> list[int]:
        """Images of ``train_split`` that have annotations, sorted: the alignment pool."""
