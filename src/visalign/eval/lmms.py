"""The alignment tax through lmms-eval: general VQA benchmarks (the nSFT paper's Table 9: SQA,
GQA, TextVQA, MM-Vet, MME, MMBench) run on a visalign model and merged into visalign's results.

lmms-eval (EvolvingLMMs-Lab/lmms-eval, the optional extra ``visalign[lmms]``) owns the tasks:
their data, prompts, generation settings, answer parsing and metrics. visalign supplies the model:
:func:`run_lmms` wraps a visalign model dir (a merged model, or a LoRA adapter on its base, loaded
by :func:`visalign.models.load_vlm`) as an lmms-eval model and calls ``simple_evaluate``. Each
request is answered with the model's chat template, one image and the task's generation
settings (greedy unless the task samples), cut at the task's stop strings.

Results become ``lmms_*`` metrics of visalign's shared result format (:data:`METRIC_KEYS`):
accuracies as fractions, MME as its own 0-2000 (perception) / 0-800 (cognition) score; any other
task's numeric metric as ``lmms_<task>_<metric>``. :func:`read_lmms_results` reads the results
file lmms-eval writes itself (``--output_path``), so a run made with lmms-eval's own command
merges the same way. MMBench and MM-Vet are judged by GPT through lmms-eval's own settings
(``OPENAI_API_KEY`` etc., see its docs); without them lmms-eval reports no score for them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from visalign.config import field
from visalign.io import DataError, read_json, write_json

__all__ = ["DEFAULT_TASKS", "METRIC_KEYS", "LmmsConfig", "run_lmms", "read_lmms_results",
           "lmms_metrics", "merge_into_results", "LmmsUnavailable"]

#: lmms-eval task names of the nSFT paper's Table 9 columns
DEFAULT_TASKS = ["scienceqa_img", "gqa", "textvqa_val", "mme", "mmbench_en_dev", "mmvet"]

#: (lmms-eval task, metric) -> (visalign key, factor to visalign's scale)
METRIC_KEYS: dict[tuple[str, str], tuple[str, float]] = {
    ("scienceqa_img", "exact_match"): ("lmms_sqa_img", 1.0),
    ("gqa", "exact_match"): ("lmms_gqa", 1.0),
    ("textvqa_val", "exact_match"): ("lmms_textvqa", 1.0),
    ("mme", "mme_perception_score"): ("lmms_mme_perception", 1.0),  # MME's own 0-2000 score
    ("mme", "mme_cognition_score"): ("lmms_mme_cognition", 1.0),  # 0-800
    ("mmbench_en_dev", "gpt_eval_score"): ("lmms_mmbench", 0.01),  # lmms-eval reports percent
    # options matched without a GPT judge: not the paper's protocol, so its own key
    ("mmbench_en_dev_static", "gpt_eval_score"): ("lmms_mmbench_static", 0.01),
    ("mmvet", "gpt_eval_score"): ("lmms_mmvet", 0.01),
}


class LmmsUnavailable(ValueError):
    """lmms-eval is not installed (one line naming the extra)."""


def _import_lmms():
    try:
        import lmms_eval  # noqa: F401
        from lmms_eval import evaluator
        from lmms_eval.api.model import lmms
        from lmms_eval.tasks import TaskManager
    except ImportError as e:
        raise LmmsUnavailable(f"lmms-eval is not installed ({e}): pip install 'visalign[lmms]' "
                              "(it needs torchvision matching your torch)") from None
    return evaluator, lmms, TaskManager


@dataclasses.dataclass
class LmmsConfig:
    """Settings of ``visalign eval lmms`` (the tasks' own settings are lmms-eval's)."""

    tasks: list[str] = field(list(DEFAULT_TASKS), help="lmms-eval task names")
    include_path: str | None = field(None, help="folder of extra lmms-eval task YAMLs")
    limit: float | None = field(None, help="first N documents per task (a smoke test)")
    batch_size: int = field(8, help="generation batch size")
    dtype: str = field("auto", help="float32 | bfloat16 | float16 | auto")
    device: str = field("auto", help="cpu | cuda | cuda:N | auto")
    seed: int = field(0, help="lmms-eval's random seeds")


def _cut(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def _model_class():
    """The lmms-eval model class over a visalign VLM (defined once lmms-eval is importable)."""
    _, lmms, _ = _import_lmms()

    class VisalignLMM(lmms):
        """lmms-eval model: one image + the task's text, answered by a visalign VLM."""

        def __init__(self, vlm: Any, batch_size: int = 8) -> None:
            super().__init__()
            self.vlm, self.batch_size = vlm, int(batch_size)

        def generate_until(self, requests) -> list[str]:
            from tqdm.auto import tqdm

            out: list[str | None] = [None] * len(requests)
            groups: dict[str, list[int]] = defaultdict(list)
            for i, req in enumerate(requests):
                groups[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
            bar = tqdm(total=len(requests), desc="lmms-eval", unit="req")
            for idxs in groups.values():
                gen = dict(requests[idxs[0]].args[1] or {})
                until = gen.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                temperature = float(gen.get("temperature") or 0.0)
                sample = bool(gen.get("do_sample")) and temperature > 0
                for start in range(0, len(idxs), self.batch_size):
                    chunk = idxs[start:start + self.batch_size]
                    images, prompts = [], []
                    for i in chunk:
                        ctx, _, doc_to_visual, doc_id, task, split = requests[i].args
                        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
                        if len(visuals) != 1:
                            raise DataError(task, f"{len(visuals)} images; visalign's lmms-eval "
                                            "model answers one-image questions", record=doc_id)
                        images.append(visuals[0].convert("RGB"))
                        prompts.append(ctx)
                    answers = self.vlm.generate(
                        images, prompts, max_new_tokens=int(gen.get("max_new_tokens", 128)),
                        do_sample=sample, temperature=temperature if sample else 1.0,
                        top_p=float(gen.get("top_p") or 1.0))
                    for i, a in zip(chunk, answers):
                        out[i] = _cut(a, until)
                    bar.update(len(chunk))
            bar.close()
            return out  # type: ignore[return-value]

        def loglikelihood(self, requests):
            raise NotImplementedError("visalign's lmms-eval model generates answers; choose "
                                      "generate_until tasks (all of the alignment-tax tasks are)")

        def generate_until_multi_round(self, requests):
            raise NotImplementedError("multi-round tasks are not supported")

    return VisalignLMM


def run_lmms(model: str | os.PathLike | Any, cfg: LmmsConfig | None = None) -> dict:
    """Run lmms-eval's ``cfg.tasks`` on ``model`` (a dir or a loaded VLM); returns the result
    (``metrics``: lmms_* keys; ``lmms``: lmms-eval's own results)."""
    cfg = cfg or LmmsConfig()
    evaluator, _, TaskManager = _import_lmms()
    from visalign.models import load_vlm

    if isinstance(model, (str, os.PathLike)):
        vlm = load_vlm(str(model), dtype=cfg.dtype, device=cfg.device)
        name = str(model)
    else:
        vlm, name = model, getattr(model, "name", "model")
    lm = _model_class()(vlm, batch_size=cfg.batch_size)
    manager = TaskManager("WARNING", include_path=cfg.include_path)
    raw = evaluator.simple_evaluate(
        model=lm, tasks=list(cfg.tasks), batch_size=cfg.batch_size, limit=cfg.limit,
        task_manager=manager, log_samples=False, random_seed=cfg.seed,
        numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed,
        verbosity="WARNING")
    if raw is None:  # non-zero ranks of a distributed run
        return {"metrics": {}, "lmms": None}
    result = lmms_result(raw)
    result.update(model=name, tasks=list(cfg.tasks), limit=cfg.limit)
    return result


def lmms_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """lmms-eval's ``results`` block (task -> {"metric,filter": value}) as lmms_* metrics."""
    out: dict[str, float] = {}
    for task, values in results.items():
        if not isinstance(values, Mapping):
            raise ValueError(f"lmms-eval results: task {task!r} is not an object")
        for name, value in values.items():
            metric, _, filt = name.partition(",")
            if metric == "alias" or "_stderr" in metric or isinstance(value, bool) \
                    or not isinstance(value, (int, float)) or math.isnan(value):
                continue  # stderr, aliases, "N/A" and submission placeholders
            key, factor = METRIC_KEYS.get((task, metric), (None, 1.0))
            if key is None:
                key = f"lmms_{task}_{metric}" + (f"_{filt}" if filt not in ("", "none") else "")
            elif filt not in ("", "none"):
                key = f"{key}_{filt}"
            out[key] = round(float(value) * factor, 6)
    return out


def lmms_result(raw: Mapping[str, Any]) -> dict:
    """The visalign result of an lmms-eval run (what ``simple_evaluate`` returns or its results
    file holds)."""
    results = raw.get("results")
    if not isinstance(results, Mapping):
        raise ValueError("not an lmms-eval result: no 'results' object")
    keep = {k: raw[k] for k in ("results", "versions", "n-shot", "n-samples", "higher_is_better",
                                "date", "lmms_eval_version") if k in raw}
    return {"metrics": lmms_metrics(results), "lmms": keep}


def read_lmms_results(path: str | os.PathLike) -> dict:
    """Read the results JSON lmms-eval writes (``<output_path>/<model>/<date>_results.json``)."""
    raw = read_json(path)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("results"), Mapping):
        raise DataError(path, "not an lmms-eval results file (no 'results' object)",
                        field="results")
    try:
        result = lmms_result(raw)
    except ValueError as e:
        raise DataError(path, str(e), field="results") from None
    result["source"] = str(path)
    return result


def merge_into_results(results_path: str | os.PathLike, metrics: Mapping[str, float], *,
                       method: str, data_size: int | None = None) -> dict:
    """Add ``metrics`` to the row of a comparison ``results.json`` (``{"rows": [...]}``) whose
    method (and data size, when given) match; rewrites the file atomically; returns the row."""
    data = read_json(results_path)
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise DataError(results_path, "expected a comparison results file with 'rows'",
                        field="rows")
    hits = [r for r in rows if isinstance(r, dict) and r.get("method") == method
            and (data_size is None or r.get("data_size", 0) == data_size)]
    if not hits:
        raise DataError(results_path, f"no row with method {method!r}"
                        + ("" if data_size is None else f" and data_size {data_size}"))
    if len(hits) > 1:
        raise DataError(results_path, f"{len(hits)} rows with method {method!r}: pass the "
                        "data size too")
    row = hits[0]
    row.setdefault("metrics", {}).update(metrics)
    write_json(Path(results_path), data)
    return row
