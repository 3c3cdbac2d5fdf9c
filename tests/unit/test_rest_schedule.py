"""ReST's Improve schedule (bond/rest.py): thresholds are the reward quantiles, the kept sets shrink and nest as
the thresholds rise, and every phase's batches cover its kept samples, checked against literal computations."""

import math
import random

import numpy as np
import pytest

from bond.rest import improve_schedule, quantile


@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.7, 0.9, 0.95, 1.0])
def test_quantile_is_numpys_linear_interpolation(q):
    rng = random.Random(1)
    values = [rng.gauss(0, 1) for _ in range(13)]
    assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)), rel=1e-12)
    assert quantile([3.0], q) == 3.0


def test_rising_thresholds_keep_nested_shrinking_sets():
    rng = random.Random(2)
    rewards = [rng.uniform(-1, 1) for _ in range(40)]
    phases = improve_schedule(rewards, (0.0, 0.7, 0.8, 0.9), batch_size=8, seed=0)
    kept_sets = []
    for phase in phases:
        kept = {j for j, r in enumerate(rewards) if r >= phase.threshold}  # the literal filter
        assert phase.kept == len(kept) and phase.threshold == quantile(rewards, phase.quantile)
        assert len(phase.batches) == math.ceil(len(kept) / 8) and all(len(b) == 8 for b in phase.batches)
        used = [j for b in phase.batches for j in b]
        assert set(used) == kept  # every kept sample is trained on, nothing else
        assert len(used) - len(set(used)) == len(phase.batches) * 8 - len(kept)  # only the top-up repeats
        kept_sets.append(kept)
    assert [len(k) for k in kept_sets] == [40, 12, 8, 4]  # continuous rewards: 1 - q of the data
    assert all(a >= b for a, b in zip(kept_sets, kept_sets[1:], strict=False))  # nested


def test_ties_at_the_threshold_are_all_kept():
    rewards = [0.0] * 6 + [1.0] * 4  # a binary reward: the 0.9-quantile is 1.0, every 1.0 passes
    phases = improve_schedule(rewards, (0.0, 0.9), batch_size=4, seed=3)
    assert [p.kept for p in phases] == [10, 4]
    assert {j for b in phases[1].batches for j in b} == {6, 7, 8, 9}


def test_the_order_is_seeded():
    rewards = [float(i) for i in range(20)]
    a = improve_schedule(rewards, (0.0, 0.5), 4, seed=1)
    assert a == improve_schedule(rewards, (0.0, 0.5), 4, seed=1)
    assert a[0].batches != improve_schedule(rewards, (0.0, 0.5), 4, seed=2)[0].batches


def test_bad_schedules_raise():
    with pytest.raises(ValueError, match="rise"):
        improve_schedule([1.0, 2.0], (0.5, 0.2), 1, 0)
    with pytest.raises(ValueError, match="rise"):
        improve_schedule([1.0, 2.0], (0.0, 1.0), 1, 0)
    with pytest.raises(ValueError, match="batch_size"):
        improve_schedule([1.0], (0.0,), 0, 0)
