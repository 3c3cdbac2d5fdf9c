"""run.mode auto (cluster/runtime/mode.py): the rule before start-up, the probe's choice, the per-step schedule."""

import re

import pytest

from cluster.config.job import Mode
from cluster.main import parse_config
from cluster.runtime import mode
from cluster.runtime.mode import PROBE_STEPS, ModeSchedule, decide, faster

GPUS = ["resources.gpus_per_actor=1", "resources.gpus_per_learner=1"]


def job(*sets: str):
    """configs/local.yaml: 2 actors, 1 learner rank, 1 reward replica, each reserving 0.5 CPU."""
    return parse_config(["--config", "configs/local.yaml", *(a for s in sets for a in ("--set", s))])


def test_processes_sharing_the_cpu_cores_run_sync():
    local = job()
    assert decide(local, 2).mode is Mode.SYNC and "need 4 cores" in decide(local, 2).reason
    assert decide(local, 4).mode is Mode.AUTO  # each process has a core of its own: timed
    wide = job("resources.cpus_per_actor=2", "resources.cpus_per_learner=1.5", "reward.cpus_per_replica=1")
    assert decide(wide, 6).mode is Mode.SYNC and decide(wide, 7).mode is Mode.AUTO  # 2 * 2 + 2 + 1


def test_gpus_or_a_ray_cluster_are_probed():
    for j, cores in ((job(*GPUS), 2), (job("resources.gpus_per_actor=1"), 1), (job(), None)):
        d = decide(j, cores)
        assert d.mode is Mode.AUTO and d.reason.endswith("timing both modes"), d


@pytest.mark.parametrize(
    "sets,reason",
    [
        (["algorithm.algorithm=gkd", "algorithm.gkd_teacher=t"], "^gkd has no off-policy correction"),
        (["algorithm.algorithm=rest"], "^rest alternates"),
        (["run.max_staleness=0"], "^run.max_staleness 0"),
        (["run.pipeline_depth=2"], "^run.pipeline_depth 2 > run.max_staleness 1"),
        (["resources.colocate=true"], "^resources.colocate"),
        ([*GPUS, "engine.enable_sleep_mode=true"], "^engine.enable_sleep_mode"),
    ],
)
def test_what_cannot_pipeline_runs_sync_wherever_it_runs(sets, reason):
    for cores in (None, 64):
        d = decide(job(*sets), cores)
        assert d.mode is Mode.SYNC
        assert re.match(reason, d.reason), d.reason


def test_probe_keeps_the_lower_median_and_sync_on_a_tie():
    assert faster([2.0, 2.2], [1.5, 1.6]) is Mode.PIPELINED
    assert faster([1.0, 1.1, 9.0], [1.2, 1.3, 1.2]) is Mode.SYNC  # one slow step does not move the median
    assert faster([1.0, 1.0], [1.0, 1.0]) is Mode.SYNC


@pytest.mark.parametrize("pipelined_s,after", [(0.5, Mode.PIPELINED), (2.0, Mode.SYNC)])
def test_schedule_probes_from_its_start_then_keeps_the_faster(pipelined_s, after):
    lines = []
    schedule = ModeSchedule(Mode.AUTO, start=10, note=lines.append)
    modes = []
    for step in range(10, 10 + 2 * PROBE_STEPS + 3):
        modes.append(schedule.mode_at(step))
        warm_up = (step - 10) % PROBE_STEPS == 0
        schedule.record(step, 99.0 if warm_up else (1.0 if modes[-1] is Mode.SYNC else pipelined_s))
    assert modes == [Mode.SYNC] * PROBE_STEPS + [Mode.PIPELINED] * PROBE_STEPS + [after] * 3
    assert lines == [f"run.mode auto: median s/step sync 1.000, pipelined {pipelined_s:.3f}: {after} from step 17"]


def test_schedule_of_a_set_mode_never_changes():
    for set_mode in (Mode.SYNC, Mode.PIPELINED):
        schedule = ModeSchedule(set_mode, start=0, note=pytest.fail)
        for step in range(3 * PROBE_STEPS):
            assert schedule.mode_at(step) is set_mode
            schedule.record(step, float(step))


def test_resolve_starts_an_auto_job_sync_or_probed_and_says_why(monkeypatch, capsys):
    for cores, want, line in ((2, Mode.SYNC, "run.mode auto -> sync: the actors"), (4, Mode.AUTO, "-> probe: ")):
        monkeypatch.setattr(mode, "node_cores", lambda cores=cores: cores)
        assert mode.resolve(job()).run.mode is want
        assert line in capsys.readouterr().out
    # a cluster of several nodes: their cores are unknown to the driver, so the loop times both modes
    assert mode.resolve(job(), cluster_nodes=3).run.mode is Mode.AUTO
    assert "-> probe: the roles run on a Ray cluster's nodes" in capsys.readouterr().out
    pipelined = job("run.mode=pipelined")
    assert mode.resolve(pipelined) is pipelined and capsys.readouterr().out == ""
