"""The anchor actor's own EMA (actors/weight_ema.py) equals the learner's anchor bit for bit.

The policy pushes go the way a job sends them on the object store: packed into one flat buffer per bucket
(actors/weight_flat.py) and through pickle (what Ray's object store does to them).
"""

from __future__ import annotations

import pickle

import pytest
import torch

from actors.checkpoint_files import checkpoint_tensors
from actors.weight_ema import AnchorEma
from actors.weight_flat import FlatUpdate
from bond.config import BondConfig
from bond.records import Role
from tests.component.test_learner import learner, make_batch

ETA = 0.3  # large, so every step moves the anchor far from where it was
BOND = BondConfig(prompts_per_step=8, lr=1e-2, warmup_steps=0, gamma=0.5, eta=ETA)
STEPS = 3


def shipped(updates):
    """Buckets as an actor receives them from the object store: flat buffers through pickle."""
    return [pickle.loads(pickle.dumps(FlatUpdate.pack(u))) for u in updates]


def whole(buckets) -> dict[str, torch.Tensor]:
    return {k: v for b in buckets for k, v in b.unpack().tensors.items()}


def learner_anchor(lr) -> dict[str, torch.Tensor]:
    return {k: v for u in lr.weights(Role.ANCHOR) for k, v in u.tensors.items()}


def test_actor_side_ema_equals_the_learners_anchor_bit_for_bit(tiny_dir):
    lr = learner(tiny_dir, BOND, zero_stage=0, micro_batch_prompts=4, bucket_bytes=1 << 18)
    ema = AnchorEma(checkpoint_tensors(tiny_dir / "policy", torch.float32), ETA)
    start = {k: v.clone() for k, v in ema.tensors.items()}
    assert all(torch.equal(ema.tensors[k], v) for k, v in learner_anchor(lr).items())
    for step in range(1, STEPS + 1):
        lr.step(make_batch(step))
        buckets = shipped(lr.weights(Role.POLICY))
        assert len(buckets) > 1  # a bucketed push: the EMA waits for the whole of it
        assert ema.follow(whole(buckets), step) is ema.tensors
        want = learner_anchor(lr)
        assert want.keys() == ema.tensors.keys()
        for name, tensor in want.items():
            assert torch.equal(ema.tensors[name], tensor), f"{name} differs after step {step}"
    moved = max((ema.tensors[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3  # the anchor really moved: equality is not the trivial one
    assert ema.follow(whole(buckets), STEPS) is None  # a retried push of the version held changes nothing
    with pytest.raises(ValueError, match="skipped EMA step"):
        ema.follow(whole(buckets), STEPS + 2)
    with pytest.raises(ValueError, match="whole policy"):
        ema.follow(dict(list(whole(buckets).items())[:2]), STEPS + 1)


def _parameter_storages(worker) -> set[int]:
    """Run in the engine's worker: where the served parameters' memory starts."""
    return {p.untyped_storage().data_ptr() for p in worker.model_runner.get_model().parameters()}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_vllm_anchor_actor_follows_policy_pushes_and_serves_the_learners_anchor(tiny_dir):
    from actors.sampling import SamplingSettings
    from actors.vllm_sampler import VllmSampler
    from demo.review_grammar import PROMPTS
    from tests.component.test_vllm_sampler import LOGPROB_ATOL

    lr = learner(tiny_dir, BOND, zero_stage=0, micro_batch_prompts=4, bucket_bytes=1 << 18)
    anchor = VllmSampler(str(tiny_dir / "policy"), Role.ANCHOR, max_model_len=64, anchor_ema=ETA)
    # the EMA moves the engine's own parameters: nothing is applied after a step, so the served log-probs checked
    # below are the EMA's (a copy kept beside the engine would leave them at the checkpoint's)
    assert anchor._weights.ema_in_engine
    served = anchor.llm.collective_rpc(_parameter_storages)[0]
    assert all(t.untyped_storage().data_ptr() in served for t in anchor._weights.ema.tensors.values())
    try:
        for step in (1, 2):
            lr.step(make_batch(step))
            for bucket in shipped(lr.weights(Role.POLICY)):
                version = anchor.load_weights(bucket)
            assert version == step == anchor.weights_version
        want = learner_anchor(lr)
        assert all(torch.equal(anchor._weights.ema.tensors[k], v) for k, v in want.items())
        # the engine serves that anchor: its sample log-probs are the learner's log pi_anchor
        completions = anchor.generate(PROMPTS[:6], 2, SamplingSettings(max_new_tokens=12, seed=3))
        served = torch.tensor([sum(c.logprobs) for c in completions])
        torch.testing.assert_close(served, lr.logprobs(completions, Role.ANCHOR), atol=LOGPROB_ATOL * 12, rtol=0)
        # the learner's anchor, pushed whole (a restarted actor, a resumed job), resets the EMA copy
        for bucket in shipped(lr.weights(Role.ANCHOR)):
            anchor.load_weights(bucket)
        lr.step(make_batch(3))
        for bucket in shipped(lr.weights(Role.POLICY)):
            anchor.load_weights(bucket)
        assert all(torch.equal(anchor._weights.ema.tensors[k], v) for k, v in learner_anchor(lr).items())
        with pytest.raises(ValueError, match="skipped EMA step"):
            lr.step(make_batch(4))
            lr.step(make_batch(5))
            for bucket in shipped(lr.weights(Role.POLICY)):
                anchor.load_weights(bucket)
    finally:
        anchor.close()
