"""run.weight_sync: the auto rule (cluster/weight_sync.py) and the config checks."""

import pytest

from bond.config import ConfigError
from cluster.job_config import RunConfig, WeightSyncMethod
from cluster.weight_sync import AUTO_COLLECTIVE_MIN_BYTES, choose_method


def test_auto_rule_and_overrides():
    auto, small, big = WeightSyncMethod.AUTO, 2 << 20, AUTO_COLLECTIVE_MIN_BYTES
    assert choose_method(auto, small, on_gpu=False) is WeightSyncMethod.OBJECT_STORE
    assert choose_method(auto, big, on_gpu=False) is WeightSyncMethod.COLLECTIVE
    assert choose_method(auto, small, on_gpu=True) is WeightSyncMethod.COLLECTIVE
    for forced in (WeightSyncMethod.OBJECT_STORE, WeightSyncMethod.COLLECTIVE):
        assert choose_method(forced, small, on_gpu=False) is forced
        assert choose_method(forced, big, on_gpu=True) is forced


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="weight_sync_timeout_s"):
        RunConfig(weight_sync_timeout_s=0.0)
    with pytest.raises(ConfigError, match="weight_sync"):
        RunConfig(weight_sync="nccl")
