"""In a real job the anchor actors follow the policy push with their own EMA (run.anchor_ema_on_actors): no anchor
bytes move per step, a restarted anchor actor gets the learner's anchor once and then follows again, and at the
end the actor's anchor equals the learner's bit for bit. Also: the processes run the threads resources.threads
gives them."""

from __future__ import annotations

import pytest
import ray
import torch

from bond.records import Role
from tests.integration.test_job import smoke_job


def _actor_anchor(actor) -> dict[str, torch.Tensor]:
    return ray.get(actor.__ray_call__.remote(lambda a: {k: v.clone() for k, v in a._weights.ema.tensors.items()}))


def _learner_anchor(rank) -> dict[str, torch.Tensor]:
    stream = rank.weights.options(num_returns="streaming").remote(Role.ANCHOR)
    return {k: v.clone() for ref in stream for k, v in ray.get(ref).unpack().tensors.items()}


@pytest.mark.timeout(300)
def test_anchor_actor_follows_the_policy_push_and_survives_a_restart(local_ray, tiny_dir, tmp_path, capfd):  # noqa: F811
    from cluster.config.job import WeightSyncMethod
    from cluster.config.prompts import PromptCursor, load_prompts
    from cluster.core import LoopState
    from cluster.runtime.ray_system import start_system
    from cluster.runtime.threads import job_threads
    from cluster.training.loop import train

    # buckets of 200 kB (the largest tiny tensor is 197 kB): a push of about ten buckets, more than are kept in flight
    job = smoke_job(tmp_path, tiny_dir, run__steps=3, learner__bucket_bytes=200_000)
    system = start_system(job)
    try:
        assert system.learner.method is WeightSyncMethod.OBJECT_STORE and system.learner.anchor_follows
        anchor = system.samplers.fleet.actors[Role.ANCHOR][0]
        # resources.threads=phase (sync): each process runs the threads of its phase, not Ray's 1 for 0.5 CPU
        threads = job_threads(job)
        assert ray.get(system.learner.ranks[0].threads.remote()) == threads.learner
        assert ray.get(anchor.__ray_call__.remote(lambda a: torch.get_num_threads())) == threads.actor
        records = []

        def on_step(rec) -> None:
            records.append(rec)
            if rec.stats.step == 1:  # Ray restarts it with the base weights; the next sampling notices
                ray.kill(anchor, no_restart=False)

        train(job, system, load_prompts(job.prompts).prompts, LoopState(0, PromptCursor()), on_step)
        assert [r.syncs[Role.ANCHOR].version for r in records] == [1, 2, 3]
        assert all(r.syncs[Role.ANCHOR].num_bytes == 0 for r in records)  # the anchor rode the policy push
        assert all(r.stats.sample_anchor_version == r.stats.step - 1 for r in records)  # on-policy throughout
        assert "anchor actor 0 restarted (1/" in capfd.readouterr().out
        want, got = _learner_anchor(system.learner.ranks[0]), _actor_anchor(anchor)
        assert want.keys() == got.keys() and all(torch.equal(got[k], v) for k, v in want.items())
        _refused_push_moves_nothing(system, anchor, job)
    finally:
        system.shutdown()


def _refused_push_moves_nothing(system, anchor, job) -> None:
    """A policy push with a NaN in one bucket is refused whole, although the driver has sent later buckets before
    that one was answered: neither the engine nor the anchor's EMA moves, and the same push, repaired, then goes
    through. Twice: the NaN in the next-to-last bucket (the last one is still sent: staged, it would release the
    push without the refused bucket), then in the second (the driver stops before the last: the retry must not be
    refused for it)."""
    from cluster.runtime.weight_sync import BUCKETS_IN_FLIGHT, push_weights

    rank, targets = system.learner.ranks[0], [system.samplers.fleet.actors[r][0] for r in (Role.POLICY, Role.ANCHOR)]
    plan = ray.get(rank.__ray_call__.remote(lambda r: r._export.bucket_plan(r._export.dtype)))
    assert len(plan) > 2 + BUCKETS_IN_FLIGHT

    def edit(index: int, value: float | None, last_scale: float) -> float:
        """Set the first element of parameter `index` (None: leave it) and scale the last parameter, so that a
        partial load would show; returns the element's value before."""

        def apply(r) -> float:
            element = r._export.params[index].data.view(-1)[:1]
            was = element.item()
            if value is not None:
                element.fill_(value)
            r._export.params[-1].data.mul_(last_scale)  # x2 then x0.5: exact in floating point
            return was

        return ray.get(rank.__ray_call__.remote(apply))

    def served() -> list:  # what the policy actor's engine computes: log pi of a fixed completion
        return ray.get(targets[0].token_logprobs.remote(["the movie"], [[5, 6, 7, 8]]))

    anchor_before, logprobs = _actor_anchor(anchor), served()
    for bucket in (len(plan) - 2, 1):
        index = plan[bucket][0]
        held = edit(index, float("nan"), 2.0)
        with pytest.raises(ray.exceptions.RayTaskError, match="non-finite values"):
            push_weights([rank], targets, Role.POLICY)
        anchor_after = _actor_anchor(anchor)
        assert all(torch.equal(anchor_after[k], v) for k, v in anchor_before.items())
        assert served() == logprobs, f"a push refused at bucket {bucket} reached the engine"
        edit(index, held, 0.5)
        assert push_weights([rank], targets, Role.POLICY).version == 3
        assert served() == logprobs  # the repaired push is the weights the engine served before
