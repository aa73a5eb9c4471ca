"""Batched, resumable, multi-process generation over (image, prompt) records.

``generate_answers`` appends one answer record per record key to a JSONL file (the answer format
of docs/formats-and-interfaces.md) and skips keys already there, so a killed run resumes where it stopped (a
partial last line is dropped first). A key is the record's id, or ``ID#k`` for the k-th repeat
of an id (LLaVA-Instruct-150K repeats them); text-only records are skipped and counted.
Sampling uses one seed per record, derived from (seed, key), so an interrupted-and-resumed run,
a run with another batch size and a multi-process run all give the answers of a single
uninterrupted run.

Under ``accelerate launch``/``torchrun`` with N processes, rank r answers the remaining records
r::N into ``OUT.rank{r}.jsonl``; after a barrier rank 0 merges everything into OUT in input order
(each id once) and removes the rank files. Rank files left by a killed distributed run count as
done and are merged by the next run, whatever its process count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from visalign.config import field
from visalign.io import DataError, JsonlAppender, iter_jsonl, write_jsonl

IMAGE_PLACEHOLDER = "<image>"


@dataclasses.dataclass
class GenerationConfig:
    """Settings of ``visalign generate`` (decoding, record keys, batching, devices)."""

    batch_size: int = field(16, help="records per generate() call")
    max_new_tokens: int = field(128, help="maximum tokens per answer")
    do_sample: bool = field(False, help="sample instead of greedy decoding")
    temperature: float = field(1.0, help="sampling temperature")
    top_p: float = field(1.0, help="nucleus sampling mass")
    seed: int = field(0, help="sampling seed (each record uses hash(seed, id))")
    limit: int | None = field(None, help="only the first N input records")
    id_key: str = field("id", help="record field holding the id")
    prompt_key: str = field("prompt", help="record field holding the prompt")
    image_key: str = field("image", help="record field holding the image path")
    image_root: str | None = field(None, help="dir relative image paths start from "
                                              "(default: the data file's dir)")
    adapter: str | None = field(None, help="LoRA adapter dir applied on the model")
    dtype: str = field("float32", help="float32 | bfloat16 | float16 | auto")
    device: str = field("auto", help="cpu | cuda | cuda:N | auto")
    progress: bool = field(True, help="show a progress bar")


GenerateConfig = GenerationConfig  # alias, after the command's name


@dataclasses.dataclass
class PromptRecord:
    id: str
    image: str
    prompt: str
    record: dict


def generation_hash(cfg: GenerationConfig) -> str:
    """Short hash of the settings that change answers (stored as ``gen`` in each record)."""
    s: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.do_sample,
                         "prompt_key": cfg.prompt_key}
    if cfg.do_sample:
        s.update(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    return hashlib.sha1(json.dumps(s, sort_keys=True).encode()).hexdigest()[:12]


def record_seed(seed: int, record_id: str) -> int:
    """The sampling seed of one record: stable across runs, batchings and process counts."""
    digest = hashlib.sha256(f"{seed}\x00{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def prompt_records(records: Sequence[dict], cfg: GenerationConfig,
                   source: str | os.PathLike | None = None) -> list[PromptRecord]:
    """Validate records into (key, image, prompt). LLaVA conversation records are accepted:
    their first human turn, without ``<image>``, is the prompt.

    Records may share an id (LLaVA-Instruct-150K gives all records of an image its id): each gets
    a unique key (:func:`~visalign.data.instruct.unique_keys`: the id, then ``ID#k``), which its
    answer carries as its id, with the original id in ``source_id``. A record without
    ``image_id`` whose image has a COCO file name gets its id from it.
    """
    from visalign.data.coco import coco_image_id
    from visalign.data.instruct import unique_keys

    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(source, "expected a JSON object", record=i)
        if rec.get(cfg.id_key) is None:
            raise DataError(source, "missing id", record=i, field=cfg.id_key)
    keys = unique_keys(rec[cfg.id_key] for rec in records)
    out = []
    for rec, rid in zip(records, keys):
        image = rec.get(cfg.image_key)
        if not isinstance(image, str) or not image:
            raise DataError(source, "missing image path", record=rid, field=cfg.image_key)
        if cfg.prompt_key in rec:
            prompt = rec[cfg.prompt_key]
            if not isinstance(prompt, str):
                raise DataError(source, "prompt must be a string", record=rid,
                                field=cfg.prompt_key)
        elif isinstance(rec.get("conversations"), list):
            human = [t for t in rec["conversations"]
                     if isinstance(t, dict) and t.get("from") == "human"]
            if not human or not isinstance(human[0].get("value"), str):
                raise DataError(source, "no human turn", record=rid, field="conversations")
            prompt = human[0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        else:
            raise DataError(source, f"no prompt (neither '{cfg.prompt_key}' nor "
                                    "'conversations')", record=rid, field=cfg.prompt_key)
        if rid != str(rec[cfg.id_key]):
            rec = {**rec, cfg.id_key: rid, "source_id": rec[cfg.id_key]}
        if rec.get("image_id") is None and coco_image_id(image) is not None:
            # CHAIR and the verifier calibration read the ground truth by image id.
            rec = {**rec, "image_id": coco_image_id(image)}
        out.append(PromptRecord(rid, image, prompt, rec))
    return out


def rank_path(out_path: Path, rank: int) -> Path:
    return out_path.with_name(f"{out_path.name}.rank{rank}.jsonl")


def _rank_files(out_path: Path) -> list[Path]:
    return sorted(out_path.parent.glob(f"{out_path.name}.rank*.jsonl"))


def _existing_rows(paths: Iterable[Path], id_key: str) -> list[dict]:
    rows = []
    for p in paths:
        if p.exists():
            for row in iter_jsonl(p, tolerate_partial_last_line=True):
                if row.get(id_key) is None:
                    raise DataError(p, "answer record without id", field=id_key)
                rows.append(row)
    return rows


def _check_gen(rows: list[dict], gen: str, out_path: Path) -> None:
    other = {r.get("gen") for r in rows} - {gen}
    if other:
        raise DataError(out_path, f"holds answers generated with other settings (gen="
                                  f"{sorted(map(str, other))}, now {gen}); use another --out "
                                  "or delete it")


def _merge(out_path: Path, order: list[str], id_key: str) -> None:
    """Rewrite OUT from itself + rank files: input order, each id once; drop rank files."""
    rank_files = _rank_files(out_path)
    rows = _existing_rows([out_path, *rank_files], id_key)
    by_id: dict[str, dict] = {}
    for row in rows:
        by_id.setdefault(str(row[id_key]), row)
    known = set(order)
    ordered = [by_id[i] for i in order if i in by_id]
    ordered += [r for i, r in by_id.items() if i not in known]
    write_jsonl(out_path, ordered)
    for f in rank_files:
        f.unlink()


def _load_image(rec: PromptRecord, root: Path, source: Any):
    from PIL import Image, UnidentifiedImageError

    path = Path(rec.image)
    if not path.is_absolute():
        path = root / path
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(source, f"image not found: {path}", record=rec.id, field="image") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(source, f"cannot read image {path}: {e}", record=rec.id,
                        field="image") from None


def _partial_state(device: str):
    import torch
    from accelerate import PartialState

    # CPU runs (tests, CPU-only machines) need cpu=True for accelerate to pick gloo.
    cpu = (device == "cpu" or not torch.cuda.is_available()
           or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))
    return PartialState(cpu=cpu)


def generate_answers(vlm_or_path: Any, records: Sequence[dict] | str | os.PathLike,
                     out_path: str | os.PathLike, *, cfg: GenerationConfig | None = None,
                     model_name: str | None = None) -> Path:
    """Answer every record into ``out_path`` (JSONL, appended, resumable); returns the path.

    ``vlm_or_path``: a :class:`~visalign.models.adapter.VLM` or a model dir/hub id (loaded with
    ``cfg.dtype``/``cfg.device``/``cfg.adapter``). ``records``: prompt or LLaVA records, or a
    JSON/JSONL file of them. Each output line is the input record plus ``answer``, ``model`` and
    ``gen`` (:func:`generation_hash`).
    """
    from tqdm.auto import tqdm

    from visalign.data.instruct import is_text_only
    from visalign.io import read_records
    from visalign.models.adapter import VLM
    from visalign.models.loading import load_vlm, resolve_device

    cfg = cfg or GenerationConfig()
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    source = None
    if isinstance(records, (str, os.PathLike)):
        source = Path(records)
        records = read_records(source)
    image_root = Path(cfg.image_root) if cfg.image_root else (
        source.parent if source is not None else Path.cwd())
    # Text-only conversations (mix665k's ShareGPT records) have nothing to look at.
    image_records = [r for r in records if not (isinstance(r, dict) and is_text_only(r))]
    n_text_only = len(records) - len(image_records)
    if cfg.limit is not None:
        image_records = image_records[:cfg.limit]
    prompts = prompt_records(image_records, cfg, source)
    out_path = Path(out_path)
    gen = generation_hash(cfg)

    state = _partial_state(cfg.device)
    rank, world = state.process_index, state.num_processes
    previous = _existing_rows([out_path, *_rank_files(out_path)], cfg.id_key)
    _check_gen(previous, gen, out_path)
    done = {str(r[cfg.id_key]) for r in previous}
    todo = [p for p in prompts if p.id not in done]
    # Everyone has read the existing files before anyone appends to them.
    state.wait_for_everyone()
    mine = todo[rank::world]
    if n_text_only and state.is_main_process:
        print(f"[visalign generate] {source or 'records'}: skipped {n_text_only} text-only "
              "records (no image)", file=sys.stderr, flush=True)
    if world > 1 or (done and cfg.progress):
        print(f"[visalign generate] rank {rank}/{world}: {len(mine)} of {len(todo)} records to "
              f"answer ({len(done)} already done)", file=sys.stderr, flush=True)

    if isinstance(vlm_or_path, VLM):
        vlm = vlm_or_path
        name = model_name or vlm.name
    else:
        device = str(state.device) if (world > 1 and cfg.device == "auto") else resolve_device(
            cfg.device)
        vlm = load_vlm(vlm_or_path, dtype=cfg.dtype, device=device, adapter=cfg.adapter)
        name = model_name or str(vlm_or_path)

    target = out_path if world == 1 else rank_path(out_path, rank)
    bar = tqdm(total=len(mine), desc="generate", unit="rec",
               disable=not (cfg.progress and state.is_main_process))
    with JsonlAppender(target) as sink:
        for start in range(0, len(mine), cfg.batch_size):
            chunk = mine[start:start + cfg.batch_size]
            images = [_load_image(p, image_root, source) for p in chunk]
            seeds = [record_seed(cfg.seed, p.id) for p in chunk] if cfg.do_sample else None
            answers = vlm.generate(images, [p.prompt for p in chunk],
                                   max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                                   temperature=cfg.temperature, top_p=cfg.top_p, seeds=seeds)
            for p, answer in zip(chunk, answers):
                sink.write({**p.record, "answer": answer, "model": name, "gen": gen})
            bar.update(len(chunk))
    bar.close()
    state.wait_for_everyone()
    if state.is_main_process and _rank_files(out_path):
        _merge(out_path, [p.id for p in prompts], cfg.id_key)
    state.wait_for_everyone()
    return out_path
