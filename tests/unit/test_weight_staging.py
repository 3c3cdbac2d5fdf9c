"""WeightStaging across the buckets of one push: a refused bucket refuses the rest of its push, so a sender that
queued later buckets before the refusal came back never gets a push applied without the refused bucket."""

from __future__ import annotations

import pytest
import torch

from actors.weight_staging import ParamSpec, WeightStaging
from bond.records import Role, WeightUpdate

NAMES = [f"model.layers.{i}.mlp.down_proj.weight" for i in range(3)]


def _staging() -> WeightStaging:
    return WeightStaging({n: ParamSpec((2, 2), torch.float32) for n in NAMES}, Role.POLICY, 0)


def _bucket(version: int, i: int, value: float = 1.0) -> WeightUpdate:
    return WeightUpdate(Role.POLICY, version, {NAMES[i]: torch.full((2, 2), value)}, last_bucket=i == len(NAMES) - 1)


def test_a_refused_bucket_refuses_the_rest_of_its_push():
    staging = _staging()
    assert staging.stage(_bucket(1, 0)) is None
    with pytest.raises(ValueError, match="non-finite"):
        staging.stage(_bucket(1, 1, float("nan")))
    with pytest.raises(ValueError, match="an earlier bucket of this push was refused"):
        staging.stage(_bucket(1, 2))  # the last bucket: without the mark it would release buckets 0 and 2
    # the push is over: the same version, sent again whole, is taken
    assert [staging.stage(_bucket(1, i)) for i in range(2)] == [None, None]
    assert list(staging.stage(_bucket(1, 2))) == NAMES


def test_a_refused_last_bucket_leaves_nothing_behind():
    staging = _staging()
    staging.stage(_bucket(1, 0))
    staging.stage(_bucket(1, 1))
    with pytest.raises(ValueError, match="non-finite"):
        staging.stage(_bucket(1, 2, float("inf")))
    assert list(staging.stage(_bucket(2, 2))) == [NAMES[2]]  # buckets 0 and 1 of the refused push are gone


def test_a_newer_push_is_not_refused_for_an_older_ones_bad_bucket():
    staging = _staging()
    with pytest.raises(ValueError, match="non-finite"):
        staging.stage(_bucket(1, 0, float("nan")))
    assert staging.stage(_bucket(2, 0)) is None
    assert list(staging.stage(_bucket(2, 2))) == [NAMES[0], NAMES[2]]
