"""Paired bootstrap of CHAIR differences."""

from __future__ import annotations

import pytest

from visalign.eval.significance import paired_chair_bootstrap


def _cap(image_id: int, hal: int, ok: int) -> dict:
    men = [{"hallucinated": True}] * hal + [{"hallucinated": False}] * ok
    return {"image_id": image_id, "mentions": men, "chair_s": int(hal > 0)}


def test_point_estimates_are_chair_of_the_common_captions():
    base = [_cap(1, 1, 1), _cap(2, 0, 2), _cap(3, 2, 0), _cap(9, 5, 0)]
    other = [_cap(1, 0, 2), _cap(2, 0, 2), _cap(3, 1, 1)]
    r = paired_chair_bootstrap(base, other, n_boot=200)
    assert r["n"] == 3  # image 9 has no partner
    assert r["base"]["chair_s"] == pytest.approx(2 / 3)
    assert r["base"]["chair_i"] == pytest.approx(3 / 6)
    assert r["other"]["chair_i"] == pytest.approx(1 / 6)
    assert r["delta"]["chair"] == pytest.approx(
        (1 / 3 + 1 / 6) / 2 - (2 / 3 + 3 / 6) / 2)
    lo, hi = r["ci"]["chair"]
    assert lo <= r["delta"]["chair"] <= hi


def test_identical_models_have_a_zero_width_interval_and_no_preference():
    caps = [_cap(i, i % 2, 2) for i in range(40)]
    r = paired_chair_bootstrap(caps, caps, n_boot=300)
    assert r["ci"]["chair_s"] == [0.0, 0.0] and r["p_lower"]["chair"] == 0.0


def test_a_clear_improvement_excludes_zero_and_a_small_one_does_not():
    base = [_cap(i, 1, 2) for i in range(200)]
    clear = [_cap(i, 0, 3) if i % 2 else _cap(i, 1, 2) for i in range(200)]
    r = paired_chair_bootstrap(base, clear, n_boot=500, seed=1)
    assert r["ci"]["chair_s"][1] < 0 and r["p_lower"]["chair_s"] > 0.99
    slight = [_cap(i, 0, 3) if i == 0 else _cap(i, 1, 2) for i in range(200)]
    noisy_base = [_cap(i, 1 if i % 3 else 0, 2) for i in range(200)]
    noisy = [_cap(i, 1 if (i + 1) % 3 else 0, 2) for i in range(200)]
    r2 = paired_chair_bootstrap(noisy_base, noisy, n_boot=500, seed=1)
    assert r2["ci"]["chair_s"][0] < 0 < r2["ci"]["chair_s"][1]
    assert paired_chair_bootstrap(base, slight, n_boot=200)["delta"]["chair_s"] == \
        pytest.approx(-1 / 200)


def test_no_common_caption_is_a_clear_error():
    with pytest.raises(ValueError, match="in common"):
        paired_chair_bootstrap([_cap(1, 0, 1)], [_cap(2, 0, 1)])


def test_ratio_shift_ci_matches_the_chair_i_interval_on_the_same_resamples():
    from visalign.eval.significance import paired_ratio_shift_ci

    base = [_cap(i, i % 3 == 0, 2 + i % 2) for i in range(60)]
    other = [_cap(i, i % 5 == 0, 2) for i in range(60)]
    r = paired_chair_bootstrap(base, other, n_boot=400, seed=3)
    def units(caps):  # in paired_chair_bootstrap's unit order (keys sorted as strings)
        caps = sorted(caps, key=lambda c: str((c["image_id"], None)))
        return [(sum(m["hallucinated"] for m in c["mentions"]), len(c["mentions"])) for c in caps]

    ci = paired_ratio_shift_ci(units(base), units(other), n_boot=400, seed=3)
    assert ci == pytest.approx(r["ci"]["chair_i"])


def test_ratio_shift_ci_weights_units_by_count_and_refuses_bad_input():
    from visalign.eval.significance import paired_ratio_shift_ci

    # every unit's items move by +1: every resample gives +1, whatever the counts
    assert paired_ratio_shift_ci([(3, 3), (10, 2)], [(6, 3), (12, 2)], n_boot=50) == \
        pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        paired_ratio_shift_ci([(1, 1)], [(1, 1), (2, 1)])
    with pytest.raises(ValueError):
        paired_ratio_shift_ci([], [])
    with pytest.raises(ValueError):
        paired_ratio_shift_ci([(0, 0)], [(1, 1)])
