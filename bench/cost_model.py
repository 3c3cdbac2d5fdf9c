"""A first-order cost model of one J-BOND step on a GPU cluster: `python -m bench.cost_model`.

It predicts the seconds of each loop phase (sample, score, learn, sync) from the model's size, the step's
workload and a few hardware rates, then the step time and prompts/s for the layouts a user chooses between:
- split: actors, reward replicas and learner ranks on their own GPUs; sync mode runs the phases one after
  another, pipelined mode overlaps (sample + score) of step t+1 with (learn + sync) of step t;
- colocated: every phase uses all GPUs in turn (vLLM sleeps while the learner steps), so nothing overlaps,
  but each phase gets the whole cluster; a sleep/wake costs the engines' weights over PCIe, and the weight
  sync is a device-local copy (CUDA IPC) instead of a network broadcast.

Every rate is an assumption you can override on the command line; the defaults are documented figures for
H100 SXM (dense bf16 989 TFLOP/s, HBM3 3.35 TB/s, NVLink 4 ~ 450 GB/s per direction, 400 Gb/s IB per GPU)
with efficiencies typical of published RL systems (training MFU 35-40 %, decode at ~60 % of HBM bandwidth).
The model ignores what it cannot know: stragglers, padding, prompt-length spread, reward models larger than
the policy, Python overheads. It is a planning tool, not a promise.

`--check stats.jsonl [pipelined-stats.jsonl]`: the overlap rule checked against measured phases. From a
sync run's per-phase seconds it predicts the pipelined step time as max(sample + score, learn + sync) and,
given a pipelined run of the same job, prints the measured step time beside it.

`--rates gpu_kit.json`: the rates a `python -m bench.gpu_kit` run measured on a GPU replace the guesses: the
learner's MFU (a 0.5 B model on one device) and the device-local copy rate (CUDA IPC) of the colocated sync.
The other rates stay the documented estimates above.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Model:
    name: str
    params: float  # parameters
    layers: int
    hidden: int
    kv_heads_dim: int  # num_kv_heads * head_dim (GQA), for the KV cache's bytes per token


@dataclass(frozen=True)
class Workload:
    prompts_per_step: int = 128  # the paper's batch
    policy_samples: int = 1  # J-BOND: 1 from the policy ...
    anchor_samples: int = 2  # ... and 2 from the anchor per prompt
    prompt_tokens: int = 256
    completion_tokens: int = 256

    @property
    def sequences(self) -> int:
        return self.prompts_per_step * (self.policy_samples + self.anchor_samples)


@dataclass(frozen=True)
class Hardware:
    peak_flops: float = 989e12  # dense bf16 per GPU
    hbm_bytes_per_s: float = 3.35e12
    nvlink_bytes_per_s: float = 450e9  # within a node (NCCL bus bandwidth is somewhat lower)
    network_bytes_per_s: float = 50e9  # between nodes, per GPU (400 Gb/s)
    pcie_bytes_per_s: float = 25e9  # host <-> device, for vLLM sleep/wake
    gpus_per_node: int = 8
    train_mfu: float = 0.35
    prefill_mfu: float = 0.5
    decode_bandwidth_efficiency: float = 0.6
    copy_bytes_per_s: float | None = None  # device-local weight copy (colocated sync); None: the HBM rate


@dataclass(frozen=True)
class Layout:
    name: str
    gpus: int
    colocated: bool
    actor_gpus: int = 0  # split layouts only
    reward_gpus: int = 0
    learner_gpus: int = 0
    tensor_parallel: int = 1  # GPUs per vLLM engine
    bytes_per_param: int = 2  # bf16 weights


MODELS = {
    "0.5B": Model("Qwen2.5-0.5B", 0.49e9, 24, 896, 2 * 64),
    "7B": Model("Qwen2.5-7B", 7.6e9, 28, 3584, 4 * 128),
}


def phase_seconds(model: Model, work: Workload, hw: Hardware, lay: Layout) -> dict[str, float]:
    """Seconds of sample, score, learn and sync for one step (see the module docstring)."""
    actor_gpus = lay.gpus if lay.colocated else lay.actor_gpus
    # reward_gpus == 0 in a split layout: the reward replicas share the actors' GPUs (scoring follows sampling)
    reward_gpus = lay.gpus if lay.colocated else (lay.reward_gpus or lay.actor_gpus)
    learner_gpus = lay.gpus if lay.colocated else lay.learner_gpus
    weight_bytes = model.params * lay.bytes_per_param
    engines = max(1, actor_gpus // lay.tensor_parallel)

    # Sample: prefill is compute-bound; each decode step reads the weights once per engine (shared by the
    # engine's batch) plus the batch's KV cache, or is compute-bound when the batch is large.
    seqs_per_engine = math.ceil(work.sequences / engines)
    prefill = (
        2 * model.params * seqs_per_engine * work.prompt_tokens / (lay.tensor_parallel * hw.peak_flops * hw.prefill_mfu)
    )
    kv_bytes_per_token = 2 * model.layers * model.kv_heads_dim * lay.bytes_per_param
    mean_context = work.prompt_tokens + work.completion_tokens / 2
    step_bytes = weight_bytes + seqs_per_engine * mean_context * kv_bytes_per_token
    step_memory = step_bytes / (lay.tensor_parallel * hw.hbm_bytes_per_s * hw.decode_bandwidth_efficiency)
    step_compute = 2 * model.params * seqs_per_engine / (lay.tensor_parallel * hw.peak_flops * hw.prefill_mfu)
    sample = prefill + work.completion_tokens * max(step_memory, step_compute)

    # Score: one forward of a policy-sized reward model over every sequence (prompt + completion).
    tokens = work.sequences * (work.prompt_tokens + work.completion_tokens)
    score = 2 * model.params * tokens / (reward_gpus * hw.peak_flops * hw.prefill_mfu)

    # Learn: forward+backward (6 P per token) on the policy samples and the best anchor sample of each prompt,
    # no-grad forwards (2 P per token) of the anchor and the reference on the policy samples, plus ZeRO-3's
    # parameter all-gathers (forward, backward) and gradient reduce-scatter when there is more than one rank.
    train_tokens = work.prompts_per_step * 2 * (work.prompt_tokens + work.completion_tokens)
    ref_tokens = work.prompts_per_step * 2 * (work.prompt_tokens + work.completion_tokens)
    flops = 6 * model.params * train_tokens + 2 * model.params * ref_tokens
    learn = flops / (learner_gpus * hw.peak_flops * hw.train_mfu)
    if learner_gpus > 1:
        link = hw.nvlink_bytes_per_s if learner_gpus <= hw.gpus_per_node else hw.network_bytes_per_s
        learn += 3 * weight_bytes * (learner_gpus - 1) / learner_gpus / link

    # Sync: policy and anchor weights to the engines. Split: a broadcast over NVLink within a node, the
    # network between nodes. Colocated: a device-local copy (CUDA IPC), plus putting the engines to sleep and
    # waking them (weights out to the host and back over PCIe; the KV cache is dropped, not copied).
    if lay.colocated:
        sync = 2 * weight_bytes / (hw.copy_bytes_per_s or hw.hbm_bytes_per_s) + 2 * weight_bytes / (
            lay.tensor_parallel * hw.pcie_bytes_per_s
        )
    else:
        crosses_nodes = lay.gpus > hw.gpus_per_node
        link = hw.network_bytes_per_s if crosses_nodes else hw.nvlink_bytes_per_s
        sync = 2 * weight_bytes / link
    return {"sample": sample, "score": score, "learn": learn, "sync": sync}


def step_seconds(phases: dict[str, float], pipelined: bool) -> float:
    """Sync mode: the phases in turn. Pipelined: sampling+scoring of the next step overlaps learning+sync."""
    if pipelined:
        return max(phases["sample"] + phases["score"], phases["learn"] + phases["sync"])
    return sum(phases.values())


def default_layouts(gpus: int, tensor_parallel: int) -> list[Layout]:
    """Colocated on all GPUs, and one split: half the GPUs sample, 1/8 score (or share the actors' GPUs on
    small clusters), the rest learn."""
    actor = max(tensor_parallel, gpus // 2)
    reward = gpus // 8 if gpus - actor - gpus // 8 >= 1 else 0
    learner = gpus - actor - reward
    if learner < 1:
        raise ValueError(f"{gpus} GPUs leave no learner GPU beside {actor} actor GPUs")
    return [
        Layout(f"colocated x{gpus}", gpus, colocated=True, tensor_parallel=tensor_parallel),
        Layout(
            f"split a{actor}/r{reward or 'a'}/l{learner}",
            gpus,
            colocated=False,
            actor_gpus=actor,
            reward_gpus=reward,
            learner_gpus=learner,
            tensor_parallel=tensor_parallel,
        ),
    ]


def table(work: Workload, hw: Hardware) -> str:
    lines = [
        f"J-BOND step: {work.prompts_per_step} prompts x ({work.policy_samples} policy + {work.anchor_samples} "
        f"anchor) samples, {work.prompt_tokens} prompt + {work.completion_tokens} completion tokens",
        f"{'model':<6} {'layout':<22} {'sample':>8} {'score':>8} {'learn':>8} {'sync':>8}   "
        f"{'sync-mode':>10} {'pipelined':>10}   prompts/s (sync / pipelined)",
    ]
    for key, model, plans in (("0.5B", MODELS["0.5B"], ((2, 1), (8, 1))), ("7B", MODELS["7B"], ((8, 2), (16, 4)))):
        for gpus, tp in plans:
            for lay in default_layouts(gpus, tp):
                ph = phase_seconds(model, work, hw, lay)
                t_sync = step_seconds(ph, pipelined=False)
                t_pipe = t_sync if lay.colocated else step_seconds(ph, pipelined=True)
                lines.append(
                    f"{key:<6} {lay.name:<22} "
                    + " ".join(f"{ph[k]:8.2f}" for k in ph)
                    + f"   {t_sync:10.2f} {t_pipe:10.2f}   "
                    f"{work.prompts_per_step / t_sync:7.1f} / {work.prompts_per_step / t_pipe:7.1f}"
                )
    lines.append(
        "seconds per step; split aA/rR/lL = A actor, R reward ('a': on the actor GPUs), L learner GPUs; "
        "colocated layouts cannot pipeline (the engines sleep while the learner steps)"
    )
    return "\n".join(lines)


def _phase_means(path: Path, skip: int) -> tuple[dict[str, float], float]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][skip:]
    if not rows:
        raise SystemExit(f"{path}: no rows after skipping {skip} warm-up steps")
    phases = {k: statistics.mean(r["phase_seconds"][k] for r in rows) for k in rows[0]["phase_seconds"]}
    return phases, statistics.mean(sum(r["phase_seconds"].values()) for r in rows)


def check(sync_stats: Path, pipelined_stats: Path | None, skip: int) -> str:
    phases, measured_sync = _phase_means(sync_stats, skip)
    predicted = step_seconds(phases, pipelined=True)
    out = [
        f"sync run {sync_stats}: "
        + ", ".join(f"{k} {v:.3f}s" for k, v in phases.items())
        + f"; step {measured_sync:.3f}s",
        f"predicted pipelined step (max(sample+score, learn+sync)): {predicted:.3f}s "
        f"({measured_sync / predicted:.2f}x the sync step's throughput)",
    ]
    if pipelined_stats is not None:
        _, measured = _phase_means(pipelined_stats, skip)
        out.append(
            f"measured pipelined step {pipelined_stats}: {measured:.3f}s "
            f"(prediction / measurement = {predicted / measured:.2f})"
        )
    return "\n".join(out)


def kit_rates(path: Path, hw: Hardware) -> tuple[Hardware, str]:
    """hw with the learner MFU and device-local copy rate a bench/gpu_kit.py run measured on a GPU."""
    try:
        kit = json.loads(path.read_text())
        device, mfu, transfer = kit["device"], float(kit["learner"]["mfu"]), kit["transfer"]
        copy = float(transfer["ipc_copy_gbps"] or transfer["device_copy_gbps"]) * 1e9
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--rates {path}: not a JSON written by bench/gpu_kit.py ({type(e).__name__}: {e})") from None
    if device == "cpu":
        raise SystemExit(
            f"--rates {path}: measured on CPU (the kit's tiny run); the cost model needs a GPU run's rates"
        )
    note = f"rates measured on {device} ({path}): train MFU {mfu:.3f}, device-local copy {copy / 1e9:.0f} GB/s"
    return replace(hw, train_mfu=mfu, copy_bytes_per_s=copy), note


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cost_model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--completion-tokens", type=int, default=256)
    parser.add_argument("--gpu", choices=("h100", "h200"), default="h100")
    parser.add_argument("--train-mfu", type=float, default=Hardware.train_mfu)
    parser.add_argument(
        "--check",
        type=Path,
        nargs="+",
        metavar="STATS_JSONL",
        help="a sync run's stats.jsonl [and a pipelined run's]: check the overlap rule",
    )
    parser.add_argument(
        "--rates", type=Path, metavar="GPU_KIT_JSON", help="bench/gpu_kit.py's JSON from a GPU (overrides --train-mfu)"
    )
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps to ignore with --check")
    args = parser.parse_args(argv)
    if args.check:
        print(check(args.check[0], args.check[1] if len(args.check) > 1 else None, args.skip))
        return
    hw = Hardware(train_mfu=args.train_mfu)
    if args.gpu == "h200":
        hw = replace(hw, hbm_bytes_per_s=4.8e12)
    if args.rates:
        hw, note = kit_rates(args.rates, hw)
        print(note)
    print(table(Workload(args.prompts, prompt_tokens=args.prompt_tokens, completion_tokens=args.completion_tokens), hw))


if __name__ == "__main__":
    main()
