"""A LoRA learner's adapter pushes into a live vLLM engine that serves base + adapter as LoRA requests.

The served log-probabilities must be the learner's after every push, by either transport (the tensors in the
call, as the object-store path hands them over, or a gloo broadcast over a weight group); a push moves only
adapter bytes; a bad adapter tensor is refused with the engine still serving the previous adapter.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from actors.lora_adapter import AdapterSpec
from actors.vllm_sampler import VllmSampler
from actors.weight_broadcast import GroupAddress, WeightGroup
from bond.config import BondConfig
from bond.records import Completion, Role, WeightUpdate
from cluster.runtime.ports import free_port
from learner.config import LoraConfig
from tests.component.test_learner import learner, make_batch

LORA = LoraConfig(r=4, alpha=8.0, target_modules=("q_proj", "v_proj", "down_proj"))
BOND = BondConfig(prompts_per_step=8, lr=1e-2, warmup_steps=0, gamma=0.5, eta=0.1, max_grad_norm=1.0)
LOGPROB_ATOL = 1e-4  # as in test_vllm_sampler.py: kernels differ by ~3e-6 nats, a stale adapter by > 1e-2


PROMPTS = ["the movie", "the plot was", "a story"]
COMPLETIONS = [[51, 33, 55, 25, 5, 2], [33, 13, 5], [40, 41, 42, 2]]  # token ids of the tiny vocabulary


def served_and_learned(engine, lrn) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y | x) of fixed sequences as the engine serves them and as the learner computes them."""
    probe = [
        Completion(
            prompt_id=i,
            prompt=text,
            prompt_token_ids=tuple(ids),
            token_ids=tuple(c),
            text="y",
            logprobs=(0.0,) * len(c),
            role=Role.POLICY,
            weights_version=0,
        )
        for i, (text, ids, c) in enumerate(zip(PROMPTS, engine.encode(PROMPTS), COMPLETIONS, strict=True))
    ]
    return torch.tensor(engine.score_logprobs(PROMPTS, COMPLETIONS)), lrn.logprobs(probe)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_adapter_pushes_serve_the_learners_policy(tiny_dir):
    lrn = learner(tiny_dir, bond=BOND, zero_stage=0, micro_batch_prompts=8, lora=LORA)
    engine = VllmSampler(
        str(tiny_dir / "policy"),
        Role.POLICY,
        max_model_len=64,
        lora=AdapterSpec(LORA.r, LORA.alpha, LORA.target_modules),
    )
    try:
        served, learned = served_and_learned(engine, lrn)
        torch.testing.assert_close(served, learned, rtol=0, atol=LOGPROB_ATOL)  # version 0: the base

        lrn.step(make_batch(0))
        updates = list(lrn.weights(Role.POLICY))
        assert sum(u.num_bytes for u in updates) == lrn.model_bytes
        t0 = time.perf_counter()
        assert [engine.load_weights(u) for u in updates][-1] == 1
        print(f"adapter push into vLLM: {lrn.model_bytes} bytes, {1e3 * (time.perf_counter() - t0):.1f} ms")
        served1, learned1 = served_and_learned(engine, lrn)
        assert (learned1 - learned).abs().max() > 1e-2  # the step moved the policy
        torch.testing.assert_close(served1, learned1, rtol=0, atol=LOGPROB_ATOL)
        first_dir = engine._weights.lora_request.lora_path

        # a bad adapter tensor: refused before anything is served; the engine keeps version 1
        bad = {k: v.clone() for k, v in updates[0].tensors.items()}
        bad[next(iter(bad))] = torch.zeros(3, 3)
        with pytest.raises(ValueError, match="shape"):
            engine.load_weights(WeightUpdate(Role.POLICY, 2, bad))
        assert engine.weights_version == 1
        torch.testing.assert_close(served_and_learned(engine, lrn)[0], learned1, rtol=0, atol=LOGPROB_ATOL)

        # the second push by broadcast (the collective transport): learner thread = group rank 0, engine = rank 1
        lrn.step(make_batch(1))
        address = GroupAddress("127.0.0.1", free_port(), world_size=2, backend="gloo", timeout_s=60)

        def send() -> None:
            group = WeightGroup(address, 0, torch.device("cpu"))
            for update in lrn.weights(Role.POLICY):
                group.send(update)

        sender = threading.Thread(target=send)
        sender.start()
        engine.join_weight_group(address, 1)
        assert engine.receive_weights() == 2
        sender.join(timeout=60)
        served2, learned2 = served_and_learned(engine, lrn)
        torch.testing.assert_close(served2, learned2, rtol=0, atol=LOGPROB_ATOL)
        assert (learned2 - learned1).abs().max() > 1e-3
        assert not os.path.exists(first_dir)  # the replaced adapter's files are gone
    finally:
        engine.close()
