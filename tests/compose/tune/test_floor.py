"""compose.tune.floor: a floor that no model could meet on the selection split is said before the study runs."""

from __future__ import annotations

import pytest

from compose.tune.floor import floor_check, half_width, rows_for

SEARCH = {"min_retained": 0.965, "judged_on": "interval_low"}


def test_the_half_width_matches_the_sst2_study_and_shrinks_with_rows():
    assert half_width(1388) == pytest.approx(0.02, abs=0.002)  # docs/tune.md: about ±2 points on 1,388 rows
    assert half_width(4 * 1388) == pytest.approx(half_width(1388) / 2)
    assert half_width(rows_for(0.01)) <= 0.01 < half_width(rows_for(0.01) - 1)


def test_a_small_selection_split_gets_a_warning_with_three_fixes():
    assert floor_check(SEARCH, rows=700, metric="f1")["warning"] is None  # reachable: with 99.3% or more
    assert floor_check(SEARCH, rows=700, metric="f1")["point_needed"] == pytest.approx(0.9926, abs=1e-3)
    found = floor_check(SEARCH, rows=300, metric="f1", train_rows=1500)
    assert found["best_interval_low"] < 0.965
    warning = found["warning"]
    assert warning.startswith("search: on 300 selection rows retained's paired interval is about ±4.2%")
    assert "interval_low >= 96.5% is out of reach even for a model as good as its baseline" in warning
    assert "selection_share: 0.50 (~" in warning  # capped: the rows it needs are more than half of train
    assert "judged_on: point with a margin (e.g. min_retained: 0.970)" in warning
    assert warning.endswith("or min_retained: 0.952")


@pytest.mark.parametrize(
    ("search", "rows", "metric"),
    [
        (SEARCH, 5000, "accuracy"),  # enough rows
        ({**SEARCH, "judged_on": "point"}, 300, "accuracy"),  # the point estimate: no interval to fit
        (SEARCH, 300, "perplexity"),  # not a per-row metric: no estimate
    ],
)
def test_no_warning_where_the_floor_can_be_met_or_the_estimate_does_not_apply(search, rows, metric):
    assert floor_check(search, rows, metric)["warning"] is None
