"""Learner step time on the tiny model: DeepSpeed ZeRO-2/3 vs plain torch on 1 rank, and 1 vs 2 gloo ranks; then
ZeRO-2 vs plain torch at one rank on the 27 M medium_random policy with every core (a sync job's one learner rank),
with the page faults each step takes (memory the step allocates afresh from the kernel, which zeroes it).

One process per rank (one torch thread each on the tiny model, so 2 ranks use 2 cores), the same global batch of
32 prompts; the engines of a rank count are stepped in turn (a load spike hits each alike); medians over the timed
steps.
"""

from __future__ import annotations

import multiprocessing
import random
import resource
import statistics
from pathlib import Path

import torch

from bond.config import BondConfig
from bond.records import Batch, Completion, Role, ScoredCompletion
from cluster.runtime.ports import free_port
from cluster.runtime.threads import node_cores

PROMPTS, STEPS, WARMUP = 32, 6, 1
ROOT = Path(__file__).resolve().parents[1]


def _batch(seed: int) -> Batch:
    rng = random.Random(seed)

    def sample(i: int, role: Role) -> ScoredCompletion:
        prompt = (1,) + tuple(rng.randrange(5, 58) for _ in range(8))
        tokens = tuple(rng.randrange(2, 58) for _ in range(rng.randint(12, 24)))
        c = Completion(
            prompt_id=i,
            prompt="x",
            prompt_token_ids=prompt,
            token_ids=tokens,
            text="y",
            logprobs=(-1.0,) * len(tokens),
            role=role,
            weights_version=0,
        )
        return ScoredCompletion(c, rng.random(), "bench")

    return Batch(
        policy=tuple((sample(i, Role.POLICY),) for i in range(PROMPTS)),
        target=tuple((sample(i, Role.ANCHOR), sample(i, Role.ANCHOR)) for i in range(PROMPTS)),
    )


def _rank(
    rank: int, world_size: int, stages: tuple[int, ...], port: int, model: Path, results, threads: int = 1
) -> None:
    """One rank holding a learner per ZeRO stage, stepped in turn so load spikes hit every engine alike."""
    torch.set_num_threads(threads)
    from learner.config import LearnerConfig
    from learner.learner import Learner

    bond = BondConfig(prompts_per_step=PROMPTS, lr=1e-4, warmup_steps=0)
    learners = {
        z: Learner(
            model,
            bond,
            LearnerConfig(zero_stage=z, micro_batch_prompts=PROMPTS // world_size),
            rank=rank,
            world_size=world_size,
            master_port=port,
        )
        for z in stages
    }
    seconds: dict[int, list[float]] = {z: [] for z in stages}
    faults: dict[int, list[int]] = {z: [] for z in stages}
    tokens = 0
    for s in range(WARMUP + STEPS):
        for z, learner in learners.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            stats = learner.step(_batch(s))
            tokens = stats.tokens
            if s >= WARMUP:
                seconds[z].append(stats.seconds)
                faults[z].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    if rank == 0:
        medians = {z: (statistics.median(seconds[z]), statistics.median(faults[z])) for z in stages}
        results.put((medians, tokens))


def _measure(
    world_size: int, stages: tuple[int, ...], model: Path, threads: int = 1
) -> tuple[dict[int, tuple[float, float]], int]:
    """{zero_stage: (median seconds, median page faults) per step}, and the tokens a step trains on."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank, args=(r, world_size, stages, port, model, results, threads))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    out = results.get(timeout=300)
    for p in procs:
        p.join(timeout=60)
    return out


def main() -> None:
    from demo.tiny import build

    model = build(ROOT / "artifacts" / "tiny") / "policy"
    print(f"tiny policy, {PROMPTS} prompts/step (1 policy + 2 anchor samples each), 1 torch thread per rank")
    times = {}
    for world_size, stages in ((1, (0, 2, 3)), (2, (0, 3))):
        medians, tokens = _measure(world_size, stages, model)
        for zero_stage, (seconds, _) in medians.items():
            times[world_size, zero_stage] = seconds
            print(
                f"  {world_size} rank{'s' if world_size > 1 else ' '} {_engine(zero_stage):18s} "
                f"{seconds * 1e3:7.1f} ms/step  {tokens / seconds:8.0f} tokens/s",
                flush=True,
            )
    t = times
    print(f"DeepSpeed / torch, 1 rank:   ZeRO-2 {t[1, 2] / t[1, 0]:.2f}x  ZeRO-3 {t[1, 3] / t[1, 0]:.2f}x")
    print(f"1 rank / 2 ranks (speed-up): torch {t[1, 0] / t[2, 0]:.2f}x  ZeRO-3 {t[1, 3] / t[2, 3]:.2f}x")
    _medium_one_rank()


def _medium_one_rank() -> None:
    from bench.medium_model import build_medium_random

    threads = node_cores()
    print(f"medium_random policy (27 M), 1 rank, {threads} torch threads (a sync job's learner on this node)")
    medians, tokens = _measure(1, (0, 2), build_medium_random() / "policy", threads)
    for zero_stage, (seconds, faults) in medians.items():
        print(
            f"  {_engine(zero_stage):18s} {seconds:6.2f} s/step  {tokens / seconds:6.0f} tokens/s  "
            f"{faults:8.0f} page faults/step"
        )
    print(f"DeepSpeed ZeRO-2 / torch at one rank: {medians[2][0] / medians[0][0]:.2f}x")


def _engine(zero_stage: int) -> str:
    return "plain torch" if zero_stage == 0 else f"DeepSpeed ZeRO-{zero_stage}"
