"""Result files of the evaluation commands: the JSON result plus a short markdown summary."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from visalign.io import atomic_write_text, write_json

__all__ = ["metrics_markdown", "format_value", "write_result"]


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
