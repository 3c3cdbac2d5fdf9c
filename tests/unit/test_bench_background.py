"""The background bench's window attribution (bench/bench_background.py): a step counts only inside its window."""

from bench.bench_background import window_steps


def test_a_step_counts_where_it_ran_wholly_inside_a_window():
    windows = [("idle", 10.0, 20.0), ("frozen", 20.0, 30.0), ("idle", 30.0, 40.0)]
    steps = [(12.0, 1.5), (15.0, 3.0), (19.5, 4.0), (23.0, 4.0), (26.0, 3.0), (34.0, 5.0), (39.0, 4.0)]
    # (12, 1.5) started at 10.5; (15, 3) at 12; (19.5, 4) at 15.5: all inside idle [10, 20]
    # (23, 4) started at 19: straddles the freeze, in no window; (26, 3) at 23: frozen
    # (34, 5) started at 29: straddles the thaw; (39, 4) at 35: idle
    assert window_steps(steps, windows) == {"idle": [1.5, 3.0, 4.0, 4.0], "frozen": [3.0]}


def test_a_step_that_ends_after_the_last_window_is_not_counted():
    assert window_steps([(41.0, 2.0)], [("idle", 30.0, 40.0)]) == {"idle": []}


def test_no_windows_no_steps():
    assert window_steps([(1.0, 0.5)], []) == {}
