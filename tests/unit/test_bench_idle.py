"""The benchmark's idle-machine check (bench/idle.py): its load threshold and step spread."""

import pytest

from bench import idle


@pytest.mark.parametrize(
    ("load", "cores", "expected"),
    [(0.0, 2, False), (0.3, 2, False), (0.7, 2, False), (0.71, 2, True), (1.0, 2, True), (1.0, 4, False)],
)
def test_loaded_is_load_per_core_above_threshold(load, cores, expected):
    assert idle.loaded(load, cores) is expected


def test_one_other_busy_process_on_two_cores_is_loaded():
    assert idle.loaded(1.0, 2)


def test_spread_is_slowest_over_fastest():
    assert idle.spread([2.0, 2.5, 3.0, 2.2]) == pytest.approx(1.5)
    assert idle.spread([2.0, 2.1]) < idle.SPREAD_MAX < idle.spread([2.0, 3.0])


def test_spread_of_one_step_is_even():
    assert idle.spread([4.0]) == 1.0


def test_uneven_steps_warn_and_even_ones_do_not():
    assert idle.uneven([2.0, 2.1, 2.05, 2.2], "steps") is None
    warning = idle.uneven([2.0, 2.1, 2.05, 3.0], "the naive loop's steps")
    assert warning.startswith("warning: the naive loop's steps spread 1.50x")
