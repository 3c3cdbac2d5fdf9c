"""resources: the placement plan (cluster/runtime/placement.py) and the validation of its knobs."""

from __future__ import annotations

import pytest

from bond.config import ConfigError
from bond.records import Role
from cluster.main import parse_config
from cluster.runtime import placement


def resources(*sets: str):
    gpu = any(s.startswith("gpus_per_actor=") and not s.endswith("=0.0") for s in sets)
    sleep = ["--set", "engine.enable_sleep_mode=true"] if gpu else []
    return parse_config([a for s in sets for a in ("--set", f"resources.{s}")] + sleep).resources


def test_split_plan_gives_each_role_its_own_bundles_on_its_labelled_nodes():
    res = resources(
        "policy_actors=2",
        "learner_ranks=2",
        "cpus_per_actor=1",
        "cpus_per_learner=3",
        "actor_node_labels={pool: actors}",
        "learner_node_labels={pool: trainers}",
    )
    plan = placement.plan(res, actor_gpus=0.0)
    assert set(plan.groups) == {"policy", "anchor", placement.LEARNER}
    assert plan.groups["policy"].labels == plan.groups["anchor"].labels == {"pool": "actors"}
    assert plan.groups[placement.LEARNER].labels == {"pool": "trainers"}
    assert len(plan.groups["policy"].bundles) == 2 and len(plan.groups["anchor"].bundles) == 1
    assert [(s.group, s.bundle, s.num_cpus) for s in plan.actors[Role.POLICY]] == [
        ("policy", 0, 1.0),
        ("policy", 1, 1.0),
    ]
    assert [(s.bundle, s.num_cpus, s.omp_threads) for s in plan.learner] == [(0, 3.0, None), (1, 3.0, None)]


@pytest.mark.parametrize(
    ("ranks", "policy", "anchor", "gpus"), [(1, 1, 1, 0.0), (2, 1, 1, 0.0), (2, 3, 2, 1.0), (4, 1, 1, 1.0)]
)
def test_colocated_plan_fits_every_bundle_and_spreads_the_actors(ranks, policy, anchor, gpus):
    sets = [
        f"learner_ranks={ranks}",
        f"policy_actors={policy}",
        f"anchor_actors={anchor}",
        "colocate=true",
        "cpus_per_learner=2",
        f"gpus_per_learner={gpus}",
        f"gpus_per_actor={gpus}",
        "learner_node_labels={pool: gpu}",
    ]
    plan = placement.plan(resources(*sets), actor_gpus=gpus)
    (group,) = plan.groups.values()
    assert len(group.bundles) == ranks and group.labels == {"pool": "gpu"}
    slots = [s for role in (Role.POLICY, Role.ANCHOR) for s in plan.actors[role]] + list(plan.learner)
    assert all(s.group == placement.SHARED for s in slots)
    assert [s.bundle for s in plan.learner] == list(range(ranks))
    members = {b: [s for s in slots if s.bundle == b] for b in range(ranks)}
    for b, bundle in enumerate(group.bundles):
        assert sum(s.num_cpus for s in members[b]) <= bundle["CPU"]  # Ray would refuse an overfull bundle
        assert sum(s.num_gpus for s in members[b]) <= bundle["GPU"]
        assert all(s.num_cpus == pytest.approx(bundle["CPU"] / len(members[b]), abs=1e-4) for s in members[b])
    counts = [len(m) - 1 for m in members.values()]  # actors per bundle: round-robin, differing by at most one
    assert sum(counts) == policy + anchor and max(counts) - min(counts) <= 1
    if gpus:  # GPU processes keep Ray's thread default
        assert all(s.omp_threads is None for s in slots)
    else:  # CPU: the rank trains on the bundle's 2 cores alone; its actors sample together and split them
        assert all(s.omp_threads == 2 for s in plan.learner)
        assert all(s.omp_threads == max(1, 2 // counts[s.bundle]) for s in slots if s not in plan.learner)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["actor_node_labels=[pool]"], "^resources.actor_node_labels: expected a mapping"),
        (
            ["learner_node_labels={pool: 3}"],
            "^resources.learner_node_labels: label pool: 3 is not a Ray node-label value",
        ),
        (
            ["actor_node_labels={'has space': x}"],
            "^resources.actor_node_labels: 'has space' is not a Ray node-label key",
        ),
        (["colocate=true", "actor_node_labels={pool: a}"], "^resources.actor_node_labels: colocated actors run in"),
        (["colocate=true", "gpus_per_actor=0.5"], "^resources.gpus_per_actor: colocated actors share"),
    ],
)
def test_bad_placement_values_name_the_field(sets, message):
    with pytest.raises(ConfigError, match=message):
        resources(*sets)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "run.mode=pipelined"], "^resources.colocate: .*use run.mode: sync"),
        (
            ["--set", "resources.gpus_per_actor=1", "--set", "resources.gpus_per_learner=1"],
            "^engine.enable_sleep_mode: colocated vLLM engines on GPU",
        ),
    ],
)
def test_colocate_refuses_what_cannot_take_turns(extra, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(["--set", "resources.colocate=true", *extra])
