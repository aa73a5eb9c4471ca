"""Figure of benchmarks/results/method_scaling.json: CHAIR change against the alignment
set's size for continual SFT, nSFT and FiSAO; prints the PNG's path as JSON.

One panel per split (the grid's val, the 2,000 fresh images). Top: relative CHAIR change against
the base (each trainer seed a point, the line through seed 0), with the papers' targets (nSFT
−20 %, FiSAO −15 %). Bottom: words per description, which shows when a lower CHAIR is only
shorter text.

    python benchmarks/research/plot_method_scaling.py \
        [--json benchmarks/results/method_scaling.json] \
        [--out benchmarks/results/method_scaling.png]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

METHODS = {"cont-sft": ("cont-SFT", "tab:gray"), "nsft": ("nSFT", "tab:blue"),
           "fisao": ("FiSAO", "tab:red")}
TARGETS = {"nsft": -0.20, "fisao": -0.15}
CELL = re.compile(r"^(cont-sft|nsft|fisao)-(\d+)(?:-seed(\d+))?$")


def series(rows: list[dict]) -> dict[str, dict[int, list[dict]]]:
    """method -> size -> rows (seed 0 first); cells that are not a plain method/size/seed (e.g.
    nsft-1200-keep_gt_long) are left out."""
    out: dict[str, dict[int, list[dict]]] = {m: {} for m in METHODS}
    for r in rows:
        m = CELL.match(r["cell"])
        if not m:
            continue
        seed = int(m.group(3) or 0)
        out[m.group(1)].setdefault(int(m.group(2)), []).append({**r, "seed": seed})
    for by_size in out.values():
        for rs in by_size.values():
            rs.sort(key=lambda r: r["seed"])
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="benchmarks/results/method_scaling.json")
    ap.add_argument("--out", default="benchmarks/results/method_scaling.png")
    args = ap.parse_args(argv)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    data = json.loads(Path(args.json).read_text())
    splits = [(k, t) for k, t in (("val", "val (500 descriptions)"),
                                  ("fresh", "fresh images (2,000)")) if data.get(k)]
    fig = Figure(figsize=(5.2 * len(splits), 6.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(splits), squeeze=False, sharex=True,
                        gridspec_kw={"height_ratios": [2, 1]})
    for j, (key, title) in enumerate(splits):
        top, bottom = axes[0][j], axes[1][j]
        base_words = data[f"base_{key}"]["avg_len"]
        for method, by_size in series(data[key]).items():
            if not by_size:
                continue
            label, colour = METHODS[method]
            sizes = sorted(by_size)
            seed0 = [by_size[n][0] for n in sizes]
            top.plot(sizes, [100 * r["rel_change_chair"] for r in seed0], "-o", color=colour,
                     label=label)
            bottom.plot(sizes, [r["avg_len"] for r in seed0], "-o", color=colour)
            for n in sizes:
                more = by_size[n][1:]
                top.scatter([n] * len(more), [100 * r["rel_change_chair"] for r in more],
                            marker="x", color=colour, zorder=3)
            if method in TARGETS:
                top.axhline(100 * TARGETS[method], color=colour, ls=":", lw=1)
        top.axhline(0, color="black", lw=0.8)
        bottom.axhline(base_words, color="black", lw=0.8, ls="--", label="base")
        top.set_title(title)
        top.set_ylabel("CHAIR change vs base (%)")
        bottom.set_ylabel("words per description")
        bottom.set_xlabel("alignment images")
        bottom.set_xscale("log")
        bottom.set_xticks(sorted({n for s in series(data[key]).values() for n in s}))
        bottom.get_xaxis().set_major_formatter(ScalarFormatter())
        bottom.get_xaxis().set_minor_formatter(NullFormatter())
        if j == 0:
            top.legend(title="o seed 0, x seeds 1-2; dotted: target", fontsize=8,
                       title_fontsize=8)
            bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    rep = {"png": args.out}
    print(json.dumps(rep))
    return rep


if __name__ == "__main__":
    main()
