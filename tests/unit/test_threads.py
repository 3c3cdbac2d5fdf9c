"""resources.threads: which thread count each kind of process gets (cluster/runtime/threads.py)."""

import pytest

from cluster.config import loading
from cluster.config.job import JobConfig
from cluster.runtime.threads import ThreadCounts, ThreadPolicy, thread_counts, thread_env

LOCAL = {
    "learner_ranks": 1,
    "actors": 2,
    "reward_replicas": 1,
    "cpus_per_learner": 0.5,
    "cpus_per_actor": 0.5,
    "cpus_per_replica": 0.5,
}


def test_sync_phase_gives_the_active_phase_the_idle_cores():
    # configs/local.yaml on 2 cores: Ray alone would give every process 1 thread
    assert thread_counts(ThreadPolicy.PHASE, True, 2, **LOCAL) == ThreadCounts(learner=2, actor=1, reward=2)
    eight = thread_counts(ThreadPolicy.PHASE, True, 8, **{**LOCAL, "learner_ranks": 2, "actors": 3})
    assert eight == ThreadCounts(learner=4, actor=2, reward=8)


def test_pipelined_and_reserved_keep_the_reservation_rounded_up():
    for policy, sync in ((ThreadPolicy.PHASE, False), (ThreadPolicy.RESERVED, True)):
        assert thread_counts(policy, sync, 2, **LOCAL) == ThreadCounts(learner=1, actor=1, reward=1)
    big = {**LOCAL, "cpus_per_learner": 2.5, "cpus_per_actor": 1.0, "cpus_per_replica": 3.0}
    assert thread_counts(ThreadPolicy.RESERVED, True, 2, **big) == ThreadCounts(learner=3, actor=1, reward=3)


def test_more_processes_than_cores_still_one_thread_each():
    many = {**LOCAL, "learner_ranks": 4, "actors": 6, "reward_replicas": 3}
    assert thread_counts(ThreadPolicy.PHASE, True, 2, **many) == ThreadCounts(1, 1, 1)


def test_env_and_config_field():
    assert thread_env(3) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    data = {"resources": {"threads": "reserved"}}
    assert loading.build(JobConfig, data).resources.threads is ThreadPolicy.RESERVED
    data["resources"]["threads"] = "all"
    with pytest.raises(Exception, match="resources.threads"):
        loading.build(JobConfig, data)
