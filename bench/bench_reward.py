"""Reward service throughput: scored completions/s in-process vs through Ray Serve (1 and 2 replicas).

All on the tiny learned reward model and the same 1024 (prompt, completion) pairs, measured side by side
in one run. Each replica gets 1 CPU, and the in-process model 1 torch thread, so the ratios compare
like with like; on a 2-core machine shared with other work, 2 replicas cannot double throughput.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from cluster.runtime.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 1024
REQUEST_SIZE = 16  # samples per request when many callers send small requests concurrently
REPEATS = 3


def _pairs(n: int) -> tuple[list[str], list[str]]:
    from demo import review_grammar as grammar

    rng = random.Random(0)
    prompts, completions = [], []
    for _ in range(n):
        words = grammar.sentence(rng, p_positive=0.5).split()
        cut = rng.randrange(1, len(words))
        prompts.append(" ".join(words[:cut]))
        completions.append(" ".join(words[cut:]))
    return prompts, completions


def _rates(runs: dict[str, object], n: int) -> dict[str, float]:
    """Samples/s of each run: one warm-up each, then REPEATS rounds that interleave the runs (so a load
    spike from other work on the machine hits all of them alike), median time per run."""
    times: dict[str, list[float]] = {label: [] for label in runs}
    for run in runs.values():
        run()
    for _ in range(REPEATS):
        for label, run in runs.items():
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
    return {label: n / statistics.median(t) for label, t in times.items()}


def main() -> None:
    import ray
    import torch

    from demo.tiny import build
    from reward_service import serve_app
    from reward_service.learned import LearnedRewardModel
    from reward_service.spec import RewardSpec

    path = str(build(ROOT / "artifacts" / "tiny") / "reward")
    prompts, completions = _pairs(SAMPLES)
    torch.set_num_threads(1)  # like a replica with cpus_per_replica=1 (Ray sets OMP_NUM_THREADS=1 there)
    local = LearnedRewardModel(path)
    in_process = "in-process, 1 call"
    rows: dict[str, float] = {}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()  # one Serve HTTP proxy per cluster: every deploy must name the same port
        for replicas in (1, 2):
            spec = RewardSpec(
                "learned",
                path,
                replicas=replicas,
                cpus_per_replica=1.0,
                max_batch_size=32,
                batch_wait_timeout_s=0.005,
                http_port=port,
            )
            handle = serve_app.deploy(spec, name="bench-reward")
            replies = []
            one, many = f"serve, {replicas} replica(s), 1 request", f"serve, {replicas} replica(s), many requests"
            rates = _rates(
                {
                    in_process: lambda: local.score(prompts, completions),
                    one: lambda h=handle: h.score.remote(prompts, completions).result(timeout_s=120),
                    many: lambda h=handle, out=replies: out.extend(_many_requests(h, prompts, completions)),
                },
                SAMPLES,
            )
            rows[f"{in_process} (beside {replicas} replica(s))"] = rates[in_process]
            rows[one] = rates[one]
            rows[
                f"{many}: {SAMPLES // REQUEST_SIZE} concurrent x {REQUEST_SIZE} samples, mean batch "
                f"{statistics.mean(r.batch_requests for r in replies):.1f} requests, "
                f"{len({r.replica for r in replies})} replica(s) answered"
            ] = rates[many]
    finally:
        serve_app.shutdown()
        ray.shutdown()

    print(f"tiny learned reward model, {SAMPLES} samples per run, median of {REPEATS} interleaved runs")
    for replicas in (1, 2):
        base = rows[f"{in_process} (beside {replicas} replica(s))"]
        for label, rate in rows.items():
            if f"{replicas} replica" in label:
                print(f"  {rate:9.0f} completions/s  {rate / base:5.2f}x in-process   {label}")
    many = {r: rate for label, rate in rows.items() for r in (1, 2) if label.startswith(f"serve, {r} replica(s), many")}
    print(f"  2 replicas / 1 replica (many concurrent requests): {many[2] / many[1]:.2f}x")


def _many_requests(handle, prompts: list[str], completions: list[str]) -> list:
    """All samples as concurrent small requests, as many actors calling the service at once would send them."""
    responses = [
        handle.score.remote(prompts[i : i + REQUEST_SIZE], completions[i : i + REQUEST_SIZE])
        for i in range(0, len(prompts), REQUEST_SIZE)
    ]
    return [r.result(timeout_s=120) for r in responses]


if __name__ == "__main__":
    main()
