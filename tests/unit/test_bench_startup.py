"""The start-up bench's CPU window (bench/bench_startup.py): each process's CPU between two snapshots, by title."""

import pytest

from bench.bench_startup import window_cpu


def test_cpu_between_the_snapshots_summed_by_title():
    start = {1: (5.0, "cluster.main"), 2: (1.0, "raylet"), 3: (0.5, "ray::IDLE")}
    end = {
        1: (5.5, "cluster.main"),
        2: (1.25, "raylet"),
        3: (7.0, "ray::VllmSampler"),  # an idle worker that became an actor: named by its title at the end
        4: (6.0, "ray::VllmSampler"),  # started inside the window: counts from zero
        5: (2.0, "ray::LearnerRank"),
    }
    assert window_cpu(start, end) == pytest.approx(
        {"cluster.main": 0.5, "raylet": 0.25, "ray::VllmSampler x2": 12.5, "ray::LearnerRank": 2.0}
    )


def test_a_process_that_exited_before_the_end_keeps_its_last_sample():
    # the sampler keeps an exited process's last sample, so it is in `end` with what it had spent
    assert window_cpu({7: (1.0, "ray::IDLE")}, {7: (1.5, "ray::IDLE")}) == pytest.approx({"ray::IDLE": 0.5})


def test_empty_window():
    assert window_cpu({}, {}) == {}
