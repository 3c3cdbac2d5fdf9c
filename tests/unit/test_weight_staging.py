"""WeightStaging across the buckets of one push: buckets come numbered in order from 0, and a push with a bucket
refused or missing is refused whole, so a sender that queued later buckets before a refusal came back (the
object-store push keeps several in flight) never gets a push applied without one of them."""

from __future__ import annotations

import pytest
import torch

from actors.weight_staging import ParamSpec, WeightStaging
from bond.records import Role, WeightUpdate

NAMES = [f"model.layers.{i}.mlp.down_proj.weight" for i in range(3)]


def _staging() -> WeightStaging:
    return WeightStaging({n: ParamSpec((2, 2), torch.float32) for n in NAMES}, Role.POLICY, 0)


def _bucket(version: int, i: int, value: float = 1.0) -> WeightUpdate:
    tensors = {NAMES[i]: torch.full((2, 2), value)}
    return WeightUpdate(Role.POLICY, version, tensors, last_bucket=i == len(NAMES) - 1, bucket=i)


def _whole(staging: WeightStaging, version: int) -> list[str]:
    assert [staging.stage(_bucket(version, i)) for i in range(len(NAMES) - 1)] == [None] * (len(NAMES) - 1)
    return list(staging.stage(_bucket(version, len(NAMES) - 1)))


def test_a_refused_bucket_refuses_the_rest_of_its_push():
    staging = _staging()
    assert staging.stage(_bucket(1, 0)) is None
    with pytest.raises(ValueError, match="non-finite"):
        staging.stage(_bucket(1, 1, float("nan")))
    with pytest.raises(ValueError, match="bucket 2 arrived where a push's bucket 0 was due"):
        staging.stage(_bucket(1, 2))  # the last bucket: staged, it would release buckets 0 and 2
    assert _whole(staging, 1) == NAMES  # the same version sent again whole is taken


def test_a_push_cut_short_does_not_block_its_retry():
    """The first bucket refused and the rest never sent (the sender stopped): a retry of that version is taken."""
    staging = _staging()
    with pytest.raises(ValueError, match="non-finite"):
        staging.stage(_bucket(1, 0, float("inf")))
    assert _whole(staging, 1) == NAMES


def test_the_tail_of_a_push_alone_is_refused():
    """What a receiver restarted mid-push gets: the push's later buckets without its first."""
    staging = _staging()
    with pytest.raises(ValueError, match="bucket 1 arrived where a push's bucket 0 was due"):
        staging.stage(_bucket(1, 1))
    with pytest.raises(ValueError, match="bucket 2 arrived"):
        staging.stage(_bucket(1, 2))
    assert staging.version == 0


def test_a_skipped_bucket_refuses_the_push():
    staging = _staging()
    staging.stage(_bucket(1, 0))
    with pytest.raises(ValueError, match="bucket 2 arrived where bucket 1 of version 1 was due"):
        staging.stage(_bucket(1, 2))


def test_a_newer_push_replaces_a_half_received_one():
    staging = _staging()
    staging.stage(_bucket(1, 0, 5.0))
    staging.stage(_bucket(1, 1, 5.0))
    assert [staging.stage(_bucket(2, i, 7.0)) for i in range(2)] == [None, None]
    out = staging.stage(_bucket(2, 2, 7.0))
    assert list(out) == NAMES and all(torch.equal(t, torch.full((2, 2), 7.0)) for t in out.values())
    with pytest.raises(ValueError, match="bucket 1 arrived where a push's bucket 0 was due"):
        staging.stage(_bucket(1, 1))  # nothing of version 1 is pending any more


def test_a_newer_push_without_its_first_bucket_is_refused():
    staging = _staging()
    staging.stage(_bucket(1, 0))
    with pytest.raises(ValueError, match="bucket 1 arrived where bucket 1 of version 1 was due"):
        staging.stage(_bucket(2, 1))
    with pytest.raises(ValueError, match="bucket 2 arrived where a push's bucket 0 was due"):
        staging.stage(_bucket(2, 2))  # version 1's half push is gone too: nothing can complete it


def test_an_older_push_does_not_disturb_a_newer_one():
    staging = _staging()
    staging.stage(_bucket(2, 0))
    with pytest.raises(ValueError, match="version 1 arrived while version 2 was half received"):
        staging.stage(_bucket(1, 0))
    staging.stage(_bucket(2, 1))
    assert list(staging.stage(_bucket(2, 2))) == NAMES
