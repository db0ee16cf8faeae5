"""The front's ranking: by the first objective, speed as measured side by side, the members that beat the
hand-written run on every objective first."""

from __future__ import annotations

from types import SimpleNamespace

from compose.tune.front import REFERENCE, beats_reference, ranked

OBJECTIVES = ["size", "throughput"]


def test_with_a_hand_written_run_the_members_that_beat_it_are_named_first():
    smallest = SimpleNamespace(number=1, values=[5.0, 400.0])  # smaller than the hand-written run, but slower
    faster = SimpleNamespace(number=2, values=[6.0, 1100.0])  # smaller and faster
    side_by_side = {
        1: {"throughput_per_s": 410.0, "batch1_p50_ms": 1.1},
        2: {"throughput_per_s": 1220.0, "batch1_p50_ms": 0.7},
        REFERENCE: {"throughput_per_s": 1000.0, "batch1_p50_ms": 0.9},
    }
    hand = SimpleNamespace(size_bytes=10.0)
    assert ranked([smallest, faster], OBJECTIVES, side_by_side) == [smallest, faster]  # by size alone
    assert ranked([smallest, faster], OBJECTIVES, side_by_side, hand) == [faster, smallest]
    assert beats_reference(faster, OBJECTIVES, side_by_side, hand) is True
    assert beats_reference(smallest, OBJECTIVES, side_by_side, hand) is False
    assert beats_reference(faster, OBJECTIVES, {2: side_by_side[2]}, hand) is None  # not measured beside it


def test_side_by_side_speed_outranks_the_trials_own():
    slow_in_trial = SimpleNamespace(number=1, values=[300.0])
    fast_in_trial = SimpleNamespace(number=2, values=[900.0])
    again = {1: {"throughput_per_s": 950.0, "batch1_p50_ms": 1.0}, 2: {"throughput_per_s": 500.0, "batch1_p50_ms": 2.0}}
    assert ranked([fast_in_trial, slow_in_trial], ["throughput"], again) == [slow_in_trial, fast_in_trial]
    assert ranked([slow_in_trial, fast_in_trial], ["throughput"], {}) == [fast_in_trial, slow_in_trial]
