"""run.weight_sync: the auto rule (cluster/runtime/weight_sync.py) and the config checks."""

import pytest

from bond.config import ConfigError
from cluster.config.job import RunConfig, WeightSyncMethod
from cluster.runtime.weight_sync import choose_method


def test_auto_rule_and_overrides():
    auto = WeightSyncMethod.AUTO
    assert choose_method(auto, on_gpu=False) is WeightSyncMethod.OBJECT_STORE
    assert choose_method(auto, on_gpu=True) is WeightSyncMethod.COLLECTIVE
    for forced in (WeightSyncMethod.OBJECT_STORE, WeightSyncMethod.COLLECTIVE):
        for on_gpu in (False, True):
            assert choose_method(forced, on_gpu=on_gpu) is forced


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="weight_sync_timeout_s"):
        RunConfig(weight_sync_timeout_s=0.0)
    with pytest.raises(ConfigError, match="weight_sync"):
        RunConfig(weight_sync="nccl")
