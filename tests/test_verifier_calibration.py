"""Eq. 7 calibration, AUROC (Mann-Whitney with ties) and the analysis figures."""

import math

import pytest

from visalign.analysis.distributions import (pearson_r, plot_correlation, plot_reward_shift,
                                             plot_score_distributions)
from visalign.verifier.calibration import auroc, calibrate


def test_auroc_hand_examples():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1], [1]) == 0.5                      # a tie counts one half
    # pairs (1,2)=0 (1,3)=0 (2,2)=.5 (2,3)=0 -> .5/4
    assert auroc([1, 2], [2, 3]) == 0.125
    # 2 vs {1,2,3}: 1 + .5 + 0 over 3
    assert auroc([2], [1, 2, 3]) == 0.5
    # gt {.5,.7,.9} vs hal {.1,.3,.5}: 8 wins + 1 tie over 9
    assert auroc([0.5, 0.7, 0.9], [0.1, 0.3, 0.5]) == pytest.approx(8.5 / 9)
    with pytest.raises(ValueError):
        auroc([], [1.0])


def test_calibrate_means_range_and_percentiles():
    gt, hal = [0.5, 0.7, 0.9], [0.1, 0.3, 0.5]
    c = calibrate(gt, hal, lam=0.05, template="a {}", scale=100.0)
    assert (c.mu_gt, c.mu_hal) == (pytest.approx(0.7), pytest.approx(0.3))     # Eq. 7
    assert (c.s_min, c.s_max, c.n_gt, c.n_hal) == (0.1, 0.9, 3, 3)
    assert c.lam == 0.05 and c.template == "a {}" and c.scale == 100.0
    assert c.auroc == pytest.approx(8.5 / 9)
    # other entity tokens only widen the range
    c2 = calibrate(gt, hal, other_scores=[-1.0, 2.0])
    assert (c2.s_min, c2.s_max, c2.mu_gt) == (-1.0, 2.0, pytest.approx(0.7))
    # percentiles of the pooled scores [.1,.3,.5,.5,.7,.9]: 50th = .5, 100th = .9
    with pytest.warns(UserWarning, match="can never fire"):   # mu_hal = .3 < S_min = .5
        c3 = calibrate(gt, hal, percentiles=(50, 100))
    assert (c3.s_min, c3.s_max) == (pytest.approx(0.5), pytest.approx(0.9))


def test_calibrate_errors_and_warnings():
    with pytest.raises(ValueError, match="both"):
        calibrate([], [0.1])
    with pytest.raises(ValueError):
        calibrate([0.1], [0.2], percentiles=(99, 1))
    with pytest.raises(ValueError, match="NaN"):
        calibrate([float("nan")], [0.2])
    with pytest.warns(UserWarning, match="does not separate"):
        calibrate([0.1, 0.2], [0.3, 0.4])


def _png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_files_atomically(tmp_path):
    gt = [0.6, 0.7, 0.8, 0.75, 0.65]
    hal = [0.3, 0.5, 0.4, 0.65]
    st = plot_score_distributions(gt, hal, tmp_path / "fig1.png", title="token")
    assert _png(tmp_path / "fig1.png")
    assert st["auroc"] == pytest.approx(auroc(gt, hal)) and st["n_gt"] == 5
    sh = plot_reward_shift([0.1, 0.2, 0.3], [0.4, 0.5, 0.6], tmp_path / "fig4.png")
    assert _png(tmp_path / "fig4.png") and sh["shift"] == pytest.approx(0.3)
    co = plot_correlation([1, 2, 3, 4], [2, 4, 6, 8], tmp_path / "sub" / "fig2.png",
                          ylabel="ROUGE")
    assert _png(tmp_path / "sub" / "fig2.png")
    assert co["pearson_r"] == pytest.approx(1.0) and co["slope"] == pytest.approx(2.0)
    # no temp files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig1.png", "fig4.png", "sub"]
    assert math.isnan(pearson_r([1, 1, 1], [1, 2, 3]))
    assert pearson_r([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        plot_score_distributions([], [1.0], tmp_path / "x.png")
