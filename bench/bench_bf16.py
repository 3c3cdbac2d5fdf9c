"""bf16 against fp32 on this CPU: learner step time, vLLM sampling tokens/s, and the log-prob error bf16 brings.

On the random ~27 M Llama of bench_actors (and, for the vLLM parts, the trained medium policy if
artifacts/medium/policy exists), side by side in one run: fp32 and bf16 learners are stepped in turn on the
same batches, and float32 and bfloat16 vLLM engines sample the same prompts with the same seed in turn, so load
hits both alike. Accuracy: completions sampled by the fp32 engine are scored by the learner's log-prob code in
fp32 and on a bf16 copy of the model, and by the bf16 engine; the learner's first step from the same start gives
the loss difference (later steps: each learner trains its own weights).
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench import bench_actors  # also sets vLLM's CPU environment before vLLM is imported

ROOT = Path(__file__).resolve().parents[1]
PROMPTS, N, MAX_NEW_TOKENS, STEPS, WARMUP = 32, 3, 32, 3, 1


def _learners(model: Path) -> dict:
    """fp32 and bf16 learners as configs/local.yaml builds them (ZeRO-2, one rank, 16 prompts per micro-batch)."""
    from bond.config import BondConfig
    from cluster.runtime.ports import free_port
    from learner.config import Dtype, LearnerConfig
    from learner.learner import Learner

    bond = BondConfig(prompts_per_step=PROMPTS, lr=1e-4, warmup_steps=0)
    fp32 = LearnerConfig(zero_stage=2, micro_batch_prompts=16, bucket_bytes=64 << 20)
    bf16 = dataclasses.replace(fp32)
    # LearnerConfig refuses bf16 on the CPU; this bench measures exactly that case, so it sets the field past the check.
    object.__setattr__(bf16, "dtype", Dtype.BF16)
    return {name: Learner(model, bond, cfg, master_port=free_port()) for name, cfg in (("fp32", fp32), ("bf16", bf16))}


def _stamped(group: tuple, version: int) -> tuple:
    return tuple(
        dataclasses.replace(x, completion=dataclasses.replace(x.completion, weights_version=version)) for x in group
    )


def _fresh(batch, learner):
    """bench_learner's batch as if sampled by the learner's current policy and anchor (sync mode): a stale batch
    would be importance-weighted toward zero loss after the first step, and cost an extra forward."""
    return dataclasses.replace(
        batch,
        policy=tuple(_stamped(g, learner.policy_version) for g in batch.policy),
        target=tuple(_stamped(g, learner.anchor_version) for g in batch.target),
    )


def _learner_steps(learners: dict) -> None:
    """Median step seconds of each learner, stepped in turn on the same batches; the losses side by side."""
    from bench.bench_learner import _batch

    stats: dict[str, list] = {name: [] for name in learners}
    for s in range(WARMUP + STEPS):
        for name, learner in learners.items():
            stats[name].append(learner.step(_fresh(_batch(s), learner)))
    med = {name: statistics.median(x.seconds for x in st[WARMUP:]) for name, st in stats.items()}
    print(
        f"  learner step: fp32 {med['fp32']:.2f} s  bf16 {med['bf16']:.2f} s  "
        f"bf16/fp32 {med['bf16'] / med['fp32']:.2f}x"
        f"  (median of {STEPS} after {WARMUP} warm-up; {torch.get_num_threads()} torch threads)",
        flush=True,
    )
    a, b = stats["fp32"][0], stats["bf16"][0]
    print(
        f"  first step from the same start: loss fp32 {a.loss:.5f} bf16 {b.loss:.5f} |diff| {abs(a.loss - b.loss):.5f}"
        f" ({abs(a.loss - b.loss) / abs(a.loss):.2%});  kl_ref {a.kl_ref:.5f} vs {b.kl_ref:.5f};"
        f"  grad_norm {a.grad_norm:.4f} vs {b.grad_norm:.4f}",
        flush=True,
    )
    pairs = zip(stats["fp32"], stats["bf16"], strict=True)
    print("  steps 1..n (each trains its own weights), fp32 / bf16:", flush=True)
    for k, (x, y) in enumerate(pairs, 1):
        print(
            f"    {k}: loss {x.loss:.4f} / {y.loss:.4f}  kl_ref {x.kl_ref:+.5f} / {y.kl_ref:+.5f}  "
            f"kl_anchor {x.kl_anchor:+.5f} / {y.kl_anchor:+.5f}",
            flush=True,
        )


def _samplers(model: Path) -> dict:
    from actors.vllm_sampler import VllmSampler
    from bond.records import Role

    return {d: VllmSampler(str(model), Role.POLICY, dtype=d, max_model_len=64) for d in ("float32", "bfloat16")}


def _tokens(sampler, prompts: list[str], settings) -> int:
    return sum(len(c.token_ids) for c in sampler.generate(prompts, N, settings))


def _sampling_rates(samplers: dict, prompts: list[str]) -> list:
    """Best tokens/s of each engine over interleaved seeded rounds; returns the fp32 engine's completions."""
    from actors.sampling import SamplingSettings

    settings = SamplingSettings(max_new_tokens=MAX_NEW_TOKENS, seed=0)
    runs = {d: functools.partial(_tokens, sampler, prompts, settings) for d, sampler in samplers.items()}
    rates = bench_actors._best_rates(runs, repeats=3)
    f, b = rates["float32"], rates["bfloat16"]
    print(
        f"  vLLM sampling ({PROMPTS} prompts x {N} x <= {MAX_NEW_TOKENS} tokens, seed 0): float32 {f:,.0f} tok/s"
        f"  bfloat16 {b:,.0f} tok/s  bf16/fp32 {b / f:.2f}x",
        flush=True,
    )
    return samplers["float32"].generate(prompts, N, settings)


def _token_logprobs(model, completions) -> list[torch.Tensor]:
    """Per-token log pi(y_t) with the learner's packing and forward (learner/sequences.py), in fp32 after the model."""
    from learner.sequences import hf_forward, pack

    packed = pack(completions, pad_id=0, device=torch.device("cpu"))
    keep = packed.logit_positions
    with torch.no_grad():
        logits = hf_forward(model, packed.input_ids, packed.attention_mask, keep).float()
    lp = torch.log_softmax(logits, -1).gather(-1, packed.targets[:, keep].unsqueeze(-1)).squeeze(-1)
    mask = packed.target_mask[:, keep].bool()
    return [row[m] for row, m in zip(lp, mask, strict=True)]


def _errors(label: str, ref: list, got: list) -> None:
    """Max and mean |error| in nats per token and per sequence (sum over its tokens), and the signed mean."""
    tok = torch.cat([(g - r).abs() for r, g in zip(ref, got, strict=True)])
    seq = torch.stack([(g - r).sum() for r, g in zip(ref, got, strict=True)])
    print(
        f"  {label}: per token max {tok.max():.4f} mean {tok.mean():.4f};  per sequence max {seq.abs().max():.4f}"
        f" mean {seq.abs().mean():.4f} signed {seq.mean():+.4f}  ({len(seq)} seqs, {len(tok)} tokens)",
        flush=True,
    )


def _accuracy(model: Path, samplers: dict, completions: list) -> None:
    """The fp32 engine's completions scored by the learner's code in fp32 (the reference) and bf16, and by both
    engines: the fp32 engine's own sampler log-probs and the bf16 engine's log-probs of the same tokens."""
    from transformers import AutoModelForCausalLM

    ref = _token_logprobs(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), completions)
    bf16 = _token_logprobs(AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16), completions)
    prompts = [c.prompt for c in completions]
    engine_bf16 = samplers["bfloat16"].token_logprobs(prompts, [c.token_ids for c in completions])
    _errors("learner code, bf16 copy vs fp32", ref, bf16)
    _errors(
        "vLLM float32 sampler log-probs vs learner fp32 (the floor)",
        ref,
        [torch.tensor(c.logprobs) for c in completions],
    )
    _errors("vLLM bfloat16 engine vs learner fp32", ref, [torch.tensor(lp) for lp in engine_bf16])


def _vllm(model: Path, label: str) -> None:
    from demo.review_grammar import PROMPTS as TEXTS

    print(f"{label}: vLLM float32 vs bfloat16", flush=True)
    samplers = _samplers(model)
    try:
        completions = _sampling_rates(samplers, [TEXTS[i % len(TEXTS)] for i in range(PROMPTS)])
        _accuracy(model, samplers, completions)
    finally:
        for sampler in samplers.values():
            sampler.close()


def main() -> None:
    from bench.bench_actors import _big_model

    with tempfile.TemporaryDirectory() as tmp:
        model = _big_model(Path(tmp))
        print(f"random 27M Llama: learner fp32 vs bf16, {PROMPTS} prompts (1 policy + 2 anchor samples)", flush=True)
        t0 = time.perf_counter()
        _learner_steps(_learners(model))
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        _vllm(model, "random 27M Llama")
    medium = ROOT / "artifacts" / "medium" / "policy"
    if medium.is_dir():
        _vllm(medium, "trained medium policy (27M)")


if __name__ == "__main__":
    main()
