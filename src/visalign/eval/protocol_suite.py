"""``visalign eval suite``: one model, the real benchmarks, each with its paper protocol.

For every requested benchmark (:mod:`visalign.eval.registry`): build its prompts, generate the
answers greedily with the benchmark's own ``max_new_tokens`` (batched and resumable through
:func:`visalign.models.generation.generate_answers`: ``OUT/answers_<name>.jsonl``), score them,
and write ``OUT/<name>.json`` (details), ``OUT/results.json`` (the shared result format: one row),
``OUT/results.md`` and ``OUT/results.png``. A re-run skips answers already generated and judge
requests already cached.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

from visalign.config import field
from visalign.eval.registry import SuiteData, get
from visalign.io import DataError, atomic_write_text, read_jsonl, write_json

__all__ = ["SuiteSettings", "run_suite", "PUBLISHED"]

#: Published LLaVA-1.5-7B numbers to print beside ours (fractions where ours are fractions).
PUBLISHED = {
    "pope_f1": (0.859, "nSFT paper, Table 9 (POPE)"),
    "mmhal_score": (2.80, "nSFT paper, Table 9 (MMHal-Bench)"),
}
# Metrics on a 0-1 scale that the figure shows (MMHal's 0-6 score is not one of them).
_FIGURE_KEYS = ("chair_s", "chair_i", "pope_f1", "mmhal_hallucination_rate",
                "objhal_response_hall", "objhal_object_hall", "amber_chair")


@dataclasses.dataclass
class SuiteSettings:
    """Generation settings of the suite (decoding is greedy, as every protocol here)."""

    batch_size: int = field(8, help="prompts per generate() call")
    max_new_tokens: dict = field(default_factory=dict,
                                 help="per-benchmark override of the protocol's length")
    dtype: str = field("auto", help="model dtype: auto | bfloat16 | float16 | float32")
    device: str = field("auto", help="cpu | cuda | cuda:N | auto")
    method: str = field("model", help="row name in results.json (base, nsft, ...)")
    progress: bool = field(True, help="show generation progress")


def _answers(path: Path, prompts: Sequence[dict]) -> dict[str, str]:
    rows = read_jsonl(path)
    by_id = {str(r["id"]): r["answer"] for r in rows}
    ids = {str(p["id"]) for p in prompts}
    extra = sorted(set(by_id) - ids)
    if extra:
        raise DataError(path, f"{len(extra)} answers for prompts this run does not have "
                              f"({', '.join(extra[:5])}): another image list or data file? "
                              "Use another --out or delete the file")
    missing = sorted(ids - set(by_id))
    if missing:
        raise DataError(path, f"{len(missing)} prompts have no answer ({', '.join(missing[:5])})")
    return by_id


def run_suite(model: Any, data: SuiteData, benchmarks: Sequence[str], out_dir: str | Path,
              settings: SuiteSettings | None = None) -> dict:
    """Generate and score ``benchmarks`` for ``model`` (a model or adapter dir, or a loaded
    :class:`~visalign.models.adapter.VLM`); returns the results.json object."""
    from visalign.models.generation import GenerationConfig, generate_answers

    settings = settings or SuiteSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not data.work_dir:
        data = dataclasses.replace(data, work_dir=str(out / "data"))
    benches = [get(n) for n in benchmarks]  # unknown names fail before any work
    unknown = set(settings.max_new_tokens) - {b.name for b in benches}
    if unknown:
        raise ValueError(f"--max-new-tokens names benchmarks not run: {', '.join(sorted(unknown))}")
    vlm = None
    metrics: dict[str, Any] = {}
    protocols: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for b in benches:
        t = time.time()
        prompts = b.prompts(data)
        mnt = int(settings.max_new_tokens.get(b.name, b.max_new_tokens))
        if vlm is None:
            vlm = _load(model, settings)
        path = out / f"answers_{b.name}.jsonl"
        # a prompt may carry its own length (AMBER's yes/no questions): one pass per length,
        # into the same resumable answer file
        for n in sorted({int(p.get("max_new_tokens", mnt)) for p in prompts}):
            gcfg = GenerationConfig(batch_size=settings.batch_size, max_new_tokens=n,
                                    id_key="id", prompt_key="prompt", image_key="image",
                                    progress=settings.progress)
            generate_answers(vlm, [p for p in prompts if int(p.get("max_new_tokens", mnt)) == n],
                             path, cfg=gcfg)
        timings[f"{b.name}_generate"] = round(time.time() - t, 3)
        t = time.time()
        res = b.score(prompts, _answers(path, prompts), data, out)
        timings[f"{b.name}_score"] = round(time.time() - t, 3)
        metrics.update(res["metrics"])
        protocols[b.name] = {**res.get("protocol", {}), "max_new_tokens": mnt,
                             "n_prompts": len(prompts), "decoding": "greedy"}
    result = {
        "rows": [{"method": settings.method, "data_size": 0, "metrics": metrics}],
        "config": {"model": getattr(vlm, "name", str(model)),
                   "benchmarks": list(benchmarks), "protocols": protocols,
                   "data": {k: v for k, v in dataclasses.asdict(data).items() if k != "judge"},
                   "judge": {k: v for k, v in dataclasses.asdict(data.judge).items()
                             if k in ("base_url", "model", "temperature", "max_tokens")},
                   "settings": dataclasses.asdict(settings)},
        "timings": timings,
    }
    write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", suite_markdown(result))
    if any(k in metrics for k in _FIGURE_KEYS):
        from visalign.report import plot_methods

        plot_methods(result["rows"], out / "results.png", keys=_FIGURE_KEYS)
    return result


def _load(model: Any, settings: SuiteSettings) -> Any:
    from visalign.models.adapter import VLM

    if isinstance(model, VLM):
        return model
    from visalign.models.loading import load_vlm

    # load_vlm detects a LoRA-only dir (adapter_config.json) and loads it on its base with peft
    return load_vlm(str(model), dtype=settings.dtype, device=settings.device)


def suite_markdown(result: dict) -> str:
    """The table of the shared report plus each benchmark's protocol and all its metrics."""
    from visalign.report import format_value
    from visalign.report import results_markdown

    row = result["rows"][0]
    parts = [results_markdown(result["rows"], f"visalign eval suite: {result['config']['model']}")]
    parts.append("## Protocols\n")
    for name, p in result["config"]["protocols"].items():
        desc = ", ".join(f"{k}={v}" for k, v in p.items())
        parts.append(f"- **{name}**: {desc}")
    parts.append("\n## All metrics\n\n| metric | value | published LLaVA-1.5-7B |\n|---|---|---|")
    for k, v in row["metrics"].items():
        pub = PUBLISHED.get(k)
        parts.append(f"| {k} | {format_value(v)} | "
                     f"{f'{pub[0]} ({pub[1]})' if pub else ''} |")
    return "\n".join(parts) + "\n"
