"""The collective weight push on CPU: a real learner (1 rank, or 2 gloo ranks under ZeRO-3 where only rank 0 sends
but both gather) broadcasts over a gloo weight group to a real in-process vLLM engine and an HF sampler.

The model is the tied-embedding Qwen2 of conftest.tied_qwen2_dir, so the push also covers a checkpoint whose
lm_head is its embedding. Learner ranks run in spawned processes (each needs its own default process group);
the receivers run in this process, each in a thread, as two actors would.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from actors.weight_broadcast import GroupAddress, WeightGroup
from bond.config import BondConfig
from bond.records import Batch, Completion, Role, ScoredCompletion
from cluster.runtime.ports import free_port

VOCAB = 58
TIMEOUT_S = 20.0
PROMPTS = ["the movie", "the plot was", "a story"]
COMPLETIONS = [[51, 33, 55, 25, 5, 2], [33, 13, 5], [40, 41, 42, 2]]


def _batch(seed: int) -> Batch:
    rng = random.Random(seed)

    def completion(i: int, role: Role) -> Completion:
        prompt = tuple([1] + [rng.randrange(5, VOCAB) for _ in range(rng.randint(0, 4))])
        tokens = tuple(rng.randrange(2, VOCAB) for _ in range(rng.randint(1, 7)))
        return Completion(
            prompt_id=i,
            prompt="x",
            prompt_token_ids=prompt,
            token_ids=tokens,
            text="y",
            logprobs=(-1.0,) * len(tokens),
            role=role,
            weights_version=0,
        )

    policy = tuple((ScoredCompletion(completion(i, Role.POLICY), rng.random(), "rm"),) for i in range(4))
    anchor = tuple(
        tuple(ScoredCompletion(completion(i, Role.ANCHOR), rng.choice([0.2, 0.5]), "rm") for _ in range(2))
        for i in range(4)
    )
    return Batch(policy=policy, target=anchor)


def _learner_main(
    rank: int,
    world: int,
    model_dir: Path,
    master_port: int,
    address: GroupAddress,
    probe_ids: list[list[int]],
    out: Path,
) -> None:
    """Step once, push the policy (version 1), then push a diverged (NaN) policy, then die without a word."""
    import os

    from learner.config import LearnerConfig
    from learner.learner import Learner

    torch.set_num_threads(1)
    lrn = Learner(
        model_dir,
        BondConfig(prompts_per_step=4, lr=1e-2, warmup_steps=0),
        LearnerConfig(zero_stage=3, micro_batch_prompts=4 // world, bucket_bytes=150_000),
        rank=rank,
        world_size=world,
        master_port=master_port,
    )
    lrn.step(_batch(0))
    probe = [
        Completion(
            prompt_id=i,
            prompt="x",
            prompt_token_ids=tuple(p),
            token_ids=tuple(c),
            text="y",
            logprobs=(0.0,) * len(c),
            role=Role.POLICY,
            weights_version=0,
        )
        for i, (p, c) in enumerate(zip(probe_ids, COMPLETIONS, strict=True))
    ]
    logprobs = lrn.logprobs(probe)  # collective under ZeRO-3
    group = WeightGroup(address, 0, lrn.device) if rank == 0 else None
    buckets = 0
    for update in lrn.weights(Role.POLICY):  # every rank gathers, rank 0 alone sends
        buckets += 1
        if group is not None:
            group.send(update)
    if rank == 0:  # written whole, then renamed: the test reads it as soon as the receivers are done
        torch.save({"logprobs": logprobs, "buckets": buckets}, out / "learner.pt.partial")
        os.replace(out / "learner.pt.partial", out / "learner.pt")
    with torch.no_grad():  # a learner that diverged: one parameter turns NaN on every rank
        lrn.engine.local(lrn._params[3]).fill_(float("nan"))
    for update in lrn.weights(Role.POLICY):
        if group is not None:
            group.send(update)
    os._exit(0)  # gone without closing anything: the receivers must notice, not hang


def _when_written(path: Path, timeout_s: float = 60.0) -> Path:
    """The learner writes its file after its last send, so the receivers may be done before it is there."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was not written within {timeout_s} s"
        time.sleep(0.05)
    return path


@pytest.fixture(scope="module")
def receivers(tied_qwen2_dir):
    from actors.hf_sampler import HfSampler
    from actors.vllm_sampler import VllmSampler

    engine = VllmSampler(str(tied_qwen2_dir), Role.POLICY, max_model_len=64)
    original = engine.token_logprobs(PROMPTS, COMPLETIONS)
    yield engine, HfSampler(str(tied_qwen2_dir), Role.POLICY), original
    engine.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("world", [1, 2], ids=["1-rank", "2-ranks-zero3"])
def test_collective_push_equals_learner_refuses_bad_buckets_and_notices_a_dead_sender(
    receivers, tied_qwen2_dir, tmp_path, world
):
    engine, hf, original = receivers
    address = GroupAddress("127.0.0.1", free_port(), world_size=3, backend="gloo", timeout_s=TIMEOUT_S)
    ctx = multiprocessing.get_context("spawn")
    master_port = free_port()
    procs = [
        ctx.Process(
            target=_learner_main,
            args=(r, world, tied_qwen2_dir, master_port, address, engine.encode(PROMPTS), tmp_path),
        )
        for r in range(world)
    ]
    for p in procs:
        p.start()
    try:
        with ThreadPoolExecutor(2) as pool:  # two actors: each call blocks until every member takes part
            list(pool.map(lambda a: a[0].join_weight_group(address, a[1]), [(engine, 1), (hf, 2)]))
            got = list(pool.map(lambda s: s.receive_weights(), [engine, hf]))
            assert got == [1, 1]  # the learner's version after one step
            learner = torch.load(_when_written(tmp_path / "learner.pt"), weights_only=True)
            assert learner["buckets"] > 2  # bucketed: one broadcast per bucket, several buckets
            served = torch.tensor([sum(t) for t in engine.token_logprobs(PROMPTS, COMPLETIONS)])
            torch.testing.assert_close(served, learner["logprobs"], atol=1e-4, rtol=0)
            torch.testing.assert_close(
                torch.tensor(hf.score_logprobs(PROMPTS, COMPLETIONS)), learner["logprobs"], atol=1e-4, rtol=0
            )
            assert (served - torch.tensor([sum(t) for t in original])).abs().max() > 1e-2  # the update took effect

            # a diverged learner's push: refused by both, nothing applied, still serving version 1
            after_first = engine.token_logprobs(PROMPTS, COMPLETIONS)
            futures = [pool.submit(s.receive_weights) for s in (engine, hf)]
            for f in futures:
                with pytest.raises(ValueError, match="non-finite"):
                    f.result()
            assert (engine.weights_version, hf.weights_version) == (1, 1)
            assert engine.token_logprobs(PROMPTS, COMPLETIONS) == after_first

            # the sender is gone: a receive fails within the group timeout instead of hanging
            t0 = time.monotonic()
            with pytest.raises(RuntimeError):
                engine.receive_weights()
            assert time.monotonic() - t0 < TIMEOUT_S + 5
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * world
