"""The FiSAO analysis figures: score distributions (Fig. 1, 6), reward shift (Fig. 4) and
correlation with caption metrics (Fig. 2, 7).

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch, safe
in threads and headless runs) and written atomically: rendered to memory, then
:func:`visalign.io.atomic_write_bytes`. Each function returns the statistics it drew so a report
can print them next to the picture. The density curves are Gaussian KDEs with Scott's bandwidth,
computed with numpy (no scipy dependency).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from visalign.io import atomic_write_bytes
from visalign.verifier.calibration import auroc


def _figure(figsize=(5.0, 3.6)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format=fmt)
    return atomic_write_bytes(path, buf.getvalue())


def _clean(values: Sequence[float], name: str) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.float64).reshape(-1)
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ValueError(f"{name}: no finite values to plot")
    return a


def gaussian_kde(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian kernel density of ``samples`` at ``grid`` (Scott's rule bandwidth).

    samples: (n,); grid: (g,) -> (g,) density. A constant sample gets a tiny bandwidth.
    """
    n = samples.size
    std = samples.std(ddof=1) if n > 1 else 0.0
    bw = std * n ** (-1.0 / 5.0)
    if not bw > 0:
        bw = max(abs(float(samples.mean())) * 1e-3, 1e-6)
    dens = np.zeros_like(grid, dtype=np.float64)
    for s in range(0, n, 4096):  # bounded memory for large samples
        z = (grid[:, None] - samples[None, s:s + 4096]) / bw
        dens += np.exp(-0.5 * z * z).sum(1)
    return dens / (n * bw * np.sqrt(2 * np.pi))


def _grid(*arrays: np.ndarray, n: int = 200) -> np.ndarray:
    lo = min(a.min() for a in arrays)
    hi = max(a.max() for a in arrays)
    pad = 0.1 * (hi - lo) if hi > lo else 1.0
    return np.linspace(lo - pad, hi + pad, n)


def _overlay(ax, series: list[tuple[np.ndarray, str, str]], bins: int) -> None:
    grid = _grid(*[s for s, _, _ in series])
    edges = np.linspace(grid[0], grid[-1], bins + 1)
    for values, label, color in series:
        ax.hist(values, bins=edges, density=True, alpha=0.35, color=color, label=label)
        if values.size > 1:
            ax.plot(grid, gaussian_kde(values, grid), color=color, lw=1.5)
    ax.set_ylabel("density")


def plot_score_distributions(gt: Sequence[float], hal: Sequence[float],
                             path: str | os.PathLike, title: str = "Token-level reward",
                             xlabel: str = "verifier score", bins: int = 30) -> dict:
    """Fig. 1 style: overlapping histograms + KDE of correct vs hallucinated object scores.

    Returns ``{"auroc", "mean_gt", "mean_hal", "n_gt", "n_hal", "path"}`` (AUROC of correct
    above hallucinated, also shown in the legend).
    """
    g, h = _clean(gt, "gt"), _clean(hal, "hal")
    a = auroc(g, h)
    fig, ax = _figure()
    _overlay(ax, [(g, f"correct (n={g.size})", "tab:blue"),
                  (h, f"hallucinated (n={h.size})", "tab:red")], bins)
    ax.plot([], [], " ", label=f"AUROC = {a:.3f}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    return {"auroc": a, "mean_gt": float(g.mean()), "mean_hal": float(h.mean()),
            "n_gt": int(g.size), "n_hal": int(h.size), "path": str(out)}


def plot_reward_shift(before: Sequence[float], after: Sequence[float],
                      path: str | os.PathLike, title: str = "Generated-object scores",
                      xlabel: str = "verifier score", bins: int = 30) -> dict:
    """Fig. 4: distribution of the scores of generated objects before vs after training.

    Returns ``{"mean_before", "mean_after", "shift", "n_before", "n_after", "path"}``.
    """
    b, a = _clean(before, "before"), _clean(after, "after")
    fig, ax = _figure()
    _overlay(ax, [(b, f"before (mean {b.mean():.3g})", "tab:gray"),
                  (a, f"after (mean {a.mean():.3g})", "tab:green")], bins)
    ax.axvline(b.mean(), color="tab:gray", ls="--", lw=1)
    ax.axvline(a.mean(), color="tab:green", ls="--", lw=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    return {"mean_before": float(b.mean()), "mean_after": float(a.mean()),
            "shift": float(a.mean() - b.mean()), "n_before": int(b.size),
            "n_after": int(a.size), "path": str(out)}


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either variable is constant or fewer than 2 points."""
    x = np.asarray(list(x), dtype=np.float64)
    y = np.asarray(list(y), dtype=np.float64)
    if x.size != y.size:
        raise ValueError(f"pearson_r: {x.size} x values but {y.size} y values")
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / np.sqrt((xc * xc).sum() * (yc * yc).sum()))


def plot_correlation(x: Sequence[float], y: Sequence[float], path: str | os.PathLike,
                     xlabel: str = "sentence-level reward", ylabel: str = "BLEU",
                     title: str | None = None) -> dict:
    """Fig. 2: scatter of ``y`` against ``x`` with the least-squares line and Pearson r.

    Returns ``{"pearson_r", "slope", "intercept", "n", "path"}`` (slope/intercept NaN when x
    is constant).
    """
    xs = np.asarray(list(x), dtype=np.float64)
    ys = np.asarray(list(y), dtype=np.float64)
    if xs.size != ys.size:
        raise ValueError(f"plot_correlation: {xs.size} x values but {ys.size} y values")
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if xs.size == 0:
        raise ValueError("plot_correlation: no finite (x, y) pairs")
    r = pearson_r(xs, ys)
    fig, ax = _figure()
    ax.scatter(xs, ys, s=8, alpha=0.5, color="tab:blue")
    slope = intercept = float("nan")
    if xs.size >= 2 and xs.std() > 0:
        slope, intercept = (float(v) for v in np.polyfit(xs, ys, 1))
        line_x = np.array([xs.min(), xs.max()])
        ax.plot(line_x, slope * line_x + intercept, color="tab:red", lw=1.5,
                label=f"fit, r = {r:.2f}")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} vs {xlabel} (r = {r:.2f})")
    out = _save(fig, path)
    return {"pearson_r": r, "slope": slope, "intercept": intercept, "n": int(xs.size),
            "path": str(out)}
