"""Result files and tables: one evaluation's JSON + markdown summary, and the comparison table
(Table-9 style, markdown + CSV) with its figures.

Columns are grouped as in the nSFT paper's Table 9: the alignment tax (held-out short-answer
accuracy), comprehension (caption metrics) and hallucination (POPE, CHAIR, judge). Each group
gets a ``(+x)`` total: the sum over its columns of the change against the base row, in points,
with the sign flipped where lower is better (CHAIR), so a positive total is always an
improvement.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping

from visalign.io import atomic_write_bytes, atomic_write_text, write_json

def format_value(v: Any) -> str:
    """Metric values for tables: ints as ints, floats with 4 decimals, None/NaN as n/a."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v).replace("|", "\\|")


def metrics_markdown(metrics: Mapping[str, Any], title: str) -> str:
    """A markdown section: ``## title`` and a two-column ``metric | value`` table."""
    lines = [f"## {title}", "", "| metric | value |", "|---|---|"]
    for k, v in metrics.items():
        lines.append(f"| {k} | {format_value(v)} |")
    return "\n".join(lines) + "\n"


def write_result(out: str | os.PathLike, result: Mapping[str, Any], title: str,
                 notes: list[str] | None = None) -> tuple[Path, Path]:
    """Write ``result`` as JSON to ``out`` and its metrics table to ``out`` with a ``.md``
    suffix (``result.json`` → ``result.md``), both atomically. Returns both paths."""
    out = Path(out)
    md_path = out.with_suffix(".md") if out.suffix != ".md" else out.with_name(out.name + ".md")
    md = metrics_markdown(result["metrics"], title)
    if notes:
        md += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    write_json(out, result)
    atomic_write_text(md_path, md)
    return out, md_path


# (group, metric key, header, higher_is_better, scale)
COLUMNS: list[tuple[str, str, str, bool, float]] = [
    ("Align. tax", "qa_count_accuracy", "Count", True, 100),
    ("Align. tax", "qa_color_accuracy", "Color", True, 100),
    ("Align. tax", "qa_position_accuracy", "Pos.", True, 100),
    ("Align. tax", "qa_vqa_accuracy", "VQA", True, 100),
    # real models: lmms-eval's benchmarks (visalign.eval.lmms), the paper's Table 9 columns
    ("Align. tax", "lmms_sqa_img", "SQA", True, 100),
    ("Align. tax", "lmms_gqa", "GQA", True, 100),
    ("Align. tax", "lmms_textvqa", "VQA^T", True, 100),
    ("Comprehension", "lmms_mmvet", "MMVet", True, 100),
    ("Comprehension", "lmms_mme_perception", "MME", True, 1),
    ("Comprehension", "lmms_mmbench", "MMB", True, 100),
    ("Comprehension", "bleu_4", "BLEU-4", True, 100),
    ("Comprehension", "rouge_l", "ROUGE-L", True, 100),
    ("Comprehension", "cider", "CIDEr", True, 100),
    # descriptions whose text broke down (visalign.eval.fluency): a low CHAIR from them is not
    # less hallucination
    ("Comprehension", "degenerate_share", "Degen.", False, 100),
    ("Hallucinations", "pope_f1", "POPE-F1", True, 100),
    ("Hallucinations", "chair_s", "CHAIR_s", False, 100),
    ("Hallucinations", "chair_i", "CHAIR_i", False, 100),
    ("Hallucinations", "chair", "CHAIR", False, 100),
    ("Hallucinations", "mmhal_score", "MMHal", True, 1),
    ("Hallucinations", "amber_score", "AMBER", True, 100),
    # Object HalBench (visalign eval suite): response- and object-level hallucination rates
    ("Hallucinations", "objhal_response_hall", "ObjHal-R", False, 100),
    ("Hallucinations", "objhal_object_hall", "ObjHal-O", False, 100),
    ("In-domain judge", "indomain_instruction", "Instr.", True, 1),
    ("In-domain judge", "indomain_accuracy", "Acc.", True, 1),
]
# CHAIR enters its group's total once, as the averaged CHAIR (not s and i again); MME's score
# (0-2000) is left out of the total as the paper's Table 9 does.
TOTAL_EXCLUDE = {"chair_s", "chair_i", "lmms_mme_perception"}


def _present(rows: list[dict]) -> list[tuple[str, str, str, bool, float]]:
    return [c for c in COLUMNS if any(c[1] in r["metrics"] for r in rows)]


def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells; the base row of each data size is the reference."""
    cols = _present(rows)
    groups: list[str] = []
    for g, *_ in cols:
        if g not in groups:
            groups.append(g)
    header = ["Align. data", "Method"]
    for g in groups:
        header += [h for gg, _, h, _, _ in cols if gg == g] + [f"{g} total"]
    base = next((r for r in rows if r["method"] == "base"), None)
    out = []
    for r in rows:
        m = r["metrics"]
        cells = [str(r.get("data_size", 0) or "-"), r["method"]]
        for g in groups:
            total = 0.0
            for gg, key, _, hib, scale in cols:
                if gg != g:
                    continue
                v = m.get(key)
                cells.append("-" if v is None else f"{v * scale:.1f}" if scale != 1
                             else f"{v:.2f}")
                if base is not None and v is not None and key in base["metrics"] \
                        and key not in TOTAL_EXCLUDE:
                    d = (v - base["metrics"][key]) * scale
                    total += d if hib else -d
            cells.append(f"({total:+.1f})")
        out.append(cells)
    return header, out


def results_markdown(rows: list[dict], title: str = "Results") -> str:
    header, body = table_rows(rows)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in body]
    lines += ["", "Numbers are percentages (MMHal on its 0-6 scale, MME on its 0-2000 scale, "
              "the in-domain judge on 0-10). `(+x)`: sum of changes "
              "against the base row in points, sign flipped for CHAIR (lower is better), so "
              "positive = better."]
    return "\n".join(lines) + "\n"


def results_csv(rows: list[dict]) -> str:
    keys = sorted({k for r in rows for k in r["metrics"]})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "data_size"] + keys)
    for r in rows:
        w.writerow([r["method"], r.get("data_size", 0)] + [r["metrics"].get(k, "") for k in keys])
    return buf.getvalue()


def write_results(rows: list[dict], out_dir: str | Path, title: str = "Results") -> None:
    out = Path(out_dir)
    atomic_write_text(out / "results.md", results_markdown(rows, title))
    atomic_write_text(out / "results.csv", results_csv(rows))


def plot_methods(rows: list[dict], path: str | Path,
                 keys: tuple[str, ...] = ("chair", "chair_s", "chair_i", "pope_f1")) -> Path:
    """Grouped bars: one group per metric, one bar per (method, size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = tuple(k for k in keys if any(k in r["metrics"] for r in rows))
    labels = [r["method"] + (f"-{r['data_size']}" if r.get("data_size") else "") for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys) * len(rows) / 3), 4))
    width = 0.8 / max(1, len(rows))
    # tab10 repeats after 10 bars (the full grid has 15): one distinct colour per bar
    cmap = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    for i, (r, lab) in enumerate(zip(rows, labels)):
        vals = [100 * r["metrics"].get(k, 0.0) for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], vals, width, label=lab,
               color=cmap(i % cmap.N))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
    ax.set_xticklabels([k.upper().replace("_", " ") for k in keys])
    ax.set_ylabel("%")
    ax.set_title("Hallucination metrics per method (CHAIR: lower is better)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_chair_deltas(deltas: list[dict], path: str | Path, metric: str = "chair",
                      versus: str = "base") -> Path:
    """Forest plot: each cell's CHAIR change against ``versus`` (the base, or the base cut to
    the cell's length) with its 95 % interval
    (``deltas``: ``{"cell", "delta": {metric: x}, "ci": {metric: [lo, hi]}}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.35 * len(deltas) + 1.2))
    for y, d in enumerate(reversed(deltas)):
        x, (lo, hi) = 100 * d["delta"][metric], d["ci"][metric]
        better = hi < 0
        worse = lo > 0
        color = "tab:green" if better else "tab:red" if worse else "tab:gray"
        ax.plot([100 * lo, 100 * hi], [y, y], color=color, lw=2)
        ax.plot([x], [y], "o", color=color)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(deltas)))
    ax.set_yticklabels([d["cell"] for d in reversed(deltas)])
    ax.set_xlabel(f"{metric.upper().replace('_', ' ')} − {versus} (points; < 0 is better)\n"
                  "95 % paired bootstrap interval over images")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def degeneration_notes(rows: list[dict], tolerance: float = 0.01) -> list[str]:
    """A warning per row whose share of degenerate descriptions (``degenerate_share``,
    :mod:`visalign.eval.fluency`) exceeds its data size's base row's by more than ``tolerance``:
    broken words are not CHAIR entities, so such a row's CHAIR is partly broken text."""
    bases = [r for r in rows if r["method"] == "base" and "degenerate_share" in r["metrics"]]
    if not bases:
        return []
    ref = bases[0]["metrics"]["degenerate_share"]
    out = []
    for r in rows:
        d = r["metrics"].get("degenerate_share")
        if r["method"] == "base" or d is None or d <= ref + tolerance:
            continue
        out.append(f"WARNING {r['method']}-{r.get('data_size', 0)}: {100 * d:.1f} % of its "
                   f"descriptions are degenerate (base {100 * ref:.1f} %); its CHAIR counts broken "
                   f"text as less hallucination (visalign.eval.fluency)")
    return out


def report_markdown(rows: list[dict], figures: dict[str, str], timings: dict[str, float],
                    notes: list[str] | None = None, title: str = "visalign comparison") -> str:
    """A short report embedding the table and the figures (paths relative to the report)."""
    parts = [results_markdown(rows, title)]
    for caption, rel in figures.items():
        parts.append(f"## {caption}\n\n![{caption}]({rel})\n")
    if timings:
        parts.append("## Timings (seconds)\n\n| stage | s |\n|---|---|\n" + "\n".join(
            f"| {k} | {v:.1f} |" for k, v in timings.items()) + "\n")
    if notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    return "\n".join(parts)
