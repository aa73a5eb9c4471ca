"""Figure of benchmarks/results/fisao_data_scaling.json: what more FiSAO data buys, and when the
text breaks; prints the PNG's path as JSON.

Left: CHAIR against POPE F1 on the grid's val split for every run, coloured by the share of
degenerate descriptions (``visalign.eval.fluency``). Right: CHAIR against the policy's final
per-token KL to the reference (log scale), the same colours: past ~0.2 nats/token the policy
writes broken words, which CHAIR counts as less hallucination.

    python benchmarks/research/plot_fisao_scaling.py \
        [--json benchmarks/results/fisao_data_scaling.json] \
        [--out benchmarks/results/fisao_data_scaling.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="benchmarks/results/fisao_data_scaling.json")
    ap.add_argument("--out", default="benchmarks/results/fisao_data_scaling.png")
    args = ap.parse_args(argv)

    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from visalign.analysis.distributions import _save

    d = json.loads(Path(args.json).read_text())
    base = d["base"]["val"]
    rows = d["rows"]
    norm, cmap = Normalize(0.0, 0.4), colormaps["RdYlGn_r"]
    fig = Figure(figsize=(11, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for r in rows:
        v = r["val"]
        c = cmap(norm(v["degenerate_share"]))
        label = r["setting"].replace(" (the grid setting)", " (grid)")
        label = label.replace(" (diagnostic, after the choice)", " *")
        ax1.scatter([100 * v["chair"]], [100 * v["pope_f1"]], color=c, s=40, edgecolor="k",
                    linewidth=0.4)
        ax1.annotate(label, (100 * v["chair"], 100 * v["pope_f1"]), fontsize=6,
                     xytext=(4, 2), textcoords="offset points")
        ax2.scatter([r["kl_ref_last10"]], [100 * v["chair"]], color=c, s=40, edgecolor="k",
                    linewidth=0.4)
        ax2.annotate(label, (r["kl_ref_last10"], 100 * v["chair"]), fontsize=6,
                     xytext=(4, 2), textcoords="offset points")
    bx, by = 100 * base["chair"], 100 * base["pope_f1"]
    ax1.scatter([bx], [by], marker="x", s=80, color="black", label="base")
    ax1.axvline(0.85 * bx, ls=":", color="grey", lw=1, label="-15 % CHAIR (FiSAO's target)")
    ax1.axhline(by, ls="--", color="grey", lw=1, label="base POPE F1")
    ax1.set_xlabel("CHAIR (val), lower is better")
    ax1.set_ylabel("POPE F1 (val)")
    ax1.set_title("FiSAO runs: hallucination vs POPE", fontsize=9)
    ax1.legend(fontsize=6, loc="lower left")
    ax2.axhline(bx, ls="--", color="grey", lw=1, label="base CHAIR")
    ax2.set_xscale("log")
    ax2.set_xlabel("policy KL to the reference, nats/token (last 10 rollouts)")
    ax2.set_ylabel("CHAIR (val)")
    ax2.set_title("drift vs CHAIR; colour = share of degenerate descriptions", fontsize=9)
    ax2.legend(fontsize=6, loc="lower left")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax2,
                 label="degenerate descriptions (share)")
    fig.tight_layout()
    out = {"plot": str(_save(fig, args.out))}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
