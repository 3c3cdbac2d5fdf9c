"""Actors: vLLM vs HF-transformers generate (tokens/s, same model and batch), weight-push time vs a memcpy, and
the 30 M engine's rate on the kernels it serves against F.linear on the same weights.

Both ratios are measured side by side in one run on this machine, so they compare like with like.
The tiny policy is what tests and the local job use; a ~30 M-parameter random Llama shows how the push
cost scales once fixed per-call overheads stop dominating.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

# Engines in this process (tensors reach the worker uncopied), a 1 GiB KV cache instead of vLLM-CPU's much larger
# default, and no core binding on a machine shared with other jobs; set before vLLM is imported.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS_PER_BATCH, N, MAX_NEW_TOKENS = 64, 4, 32


def _best_rates(runs: dict, repeats: int) -> dict[str, float]:
    """Run each callable (it returns the work it did) once per round, round after round, and keep each
    one's best rate: on a shared machine noise only ever slows a run down, and interleaving exposes
    every contender to the same noise."""
    for fn in runs.values():
        fn()  # warm-up
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            work = fn()
            best[name] = max(best[name], work / (time.perf_counter() - t0))
    return best


def _tokens_per_s(samplers: dict, prompts, repeats: int = 3) -> dict[str, float]:
    runs = {
        name: (lambda s=sampler, st=settings: sum(len(c.token_ids) for c in s.generate(prompts, N, st)))
        for name, (sampler, settings) in samplers.items()
    }
    return _best_rates(runs, repeats)


def _push_vs_memcpy(sampler, tensors: dict[str, torch.Tensor], label: str) -> None:
    from bond.records import WeightUpdate

    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    dst = {k: torch.empty_like(v) for k, v in tensors.items()}

    def push() -> int:
        sampler.load_weights(WeightUpdate(sampler.role, sampler.weights_version + 1, tensors))
        return nbytes

    def memcpy() -> int:
        for k, v in tensors.items():
            dst[k].copy_(v)
        return nbytes

    rates = _best_rates({"push": push, "memcpy": memcpy}, repeats=7)
    t_push, t_copy = nbytes / rates["push"], nbytes / rates["memcpy"]
    print(
        f"  {label}: {nbytes / 1e6:.1f} MB  push {t_push * 1e3:.1f} ms ({nbytes / t_push / 1e9:.2f} GB/s)  "
        f"memcpy {t_copy * 1e3:.2f} ms ({nbytes / t_copy / 1e9:.2f} GB/s)  push/memcpy {t_push / t_copy:.1f}x",
        flush=True,
    )


def _kernel_rates(sampler, prompts, settings, repeats: int = 3) -> None:
    """The engine's sampling rate with its linear layers on the kernels it serves (plain weights re-packed for
    vLLM's CPU GEMM after every push, actors/vllm_worker_extension.py) and on F.linear over the same plain weights
    (what the engine served before), rounds interleaved, best of `repeats`, at a J-BOND step's batches (32 prompts:
    the policy's one sample each, the anchor's two) and at this bench's 64 x 4; the served kernels are restored."""

    def f_linear(worker) -> None:
        for m in worker.model_runner.get_model().modules():
            if hasattr(m, "cpu_linear"):
                m.cpu_linear = torch.nn.functional.linear

    kernels = {"packed": lambda w: w.repack_plain_weights(), "F.linear": f_linear}
    batches = ((prompts[:32], 1), (prompts[:32], 2), (prompts, N))
    best = {(name, b): 0.0 for name in kernels for b in range(len(batches))}
    for round_ in range(repeats + 1):
        for b, (batch, n) in enumerate(batches):
            for name, use in kernels.items():
                sampler.llm.collective_rpc(use)
                t0 = time.perf_counter()
                tokens = sum(len(c.token_ids) for c in sampler.generate(batch, n, settings))
                if round_:  # the first round warms up
                    best[name, b] = max(best[name, b], tokens / (time.perf_counter() - t0))
    sampler.llm.collective_rpc(kernels["packed"])
    rows = ", ".join(
        f"{len(batch)} x {n}: {best['packed', b]:,.0f} against {best['F.linear', b]:,.0f} tok/s "
        f"({best['packed', b] / best['F.linear', b]:.2f}x)"
        for b, (batch, n) in enumerate(batches)
    )
    print(
        f"  random 30M Llama, {torch.get_num_threads()} thread(s), the served (packed) kernels against F.linear on "
        f"the plain weights: {rows}",
        flush=True,
    )


def _big_model(directory: Path) -> Path:
    """A random ~30 M-parameter Llama with the tiny vocabulary (no training: only the push cost is measured)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from demo.tiny import build_tokenizer, llama_config

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        **{
            **llama_config(len(tokenizer)).to_dict(),
            "hidden_size": 512,
            "intermediate_size": 1536,
            "num_hidden_layers": 8,
            "num_attention_heads": 8,
            "num_key_value_heads": 8,
            "head_dim": 64,
        }
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    from safetensors.torch import load_file

    from actors.hf_sampler import HfSampler
    from actors.sampling import SamplingSettings
    from actors.vllm_sampler import VllmSampler
    from bond.records import Role
    from demo.review_grammar import PROMPTS
    from demo.tiny import build

    tiny = build(ROOT / "artifacts" / "tiny") / "policy"
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(PROMPTS_PER_BATCH)]
    settings = SamplingSettings(max_new_tokens=MAX_NEW_TOKENS)
    seeded = SamplingSettings(max_new_tokens=MAX_NEW_TOKENS, seed=0)
    print(
        f"generate: tiny policy, {PROMPTS_PER_BATCH} prompts x n={N}, <= {MAX_NEW_TOKENS} new tokens, fp32, "
        f"temperature 1",
        flush=True,
    )
    vllm_sampler = VllmSampler(str(tiny), Role.POLICY, max_model_len=64)
    hf_sampler = HfSampler(str(tiny), Role.POLICY)
    # A seeded call is one vLLM request per sample, each with its own generator (see VllmSampler.generate).
    rates = _tokens_per_s(
        {"vllm": (vllm_sampler, settings), "hf": (hf_sampler, settings), "vllm_seeded": (vllm_sampler, seeded)}, prompts
    )
    v_rate, h_rate, v_seeded = rates["vllm"], rates["hf"], rates["vllm_seeded"]
    print(
        f"  vLLM {v_rate:,.0f} tok/s   HF generate {h_rate:,.0f} tok/s   vLLM/HF {v_rate / h_rate:.2f}x   "
        f"(vLLM seeded: {v_seeded:,.0f} tok/s, {v_seeded / v_rate:.2f}x unseeded)",
        flush=True,
    )
    del hf_sampler

    print(
        "weight push (full state dict, validated, reloaded in place, prefix cache reset) vs torch copy_ "
        "of the same bytes:",
        flush=True,
    )
    _push_vs_memcpy(vllm_sampler, load_file(str(tiny / "model.safetensors")), "tiny policy")
    vllm_sampler.close()
    with tempfile.TemporaryDirectory() as tmp:
        big = _big_model(Path(tmp))
        big_sampler = VllmSampler(str(big), Role.POLICY, max_model_len=64)
        params = load_file(str(big / "model.safetensors"))
        print(f"  ({sum(t.numel() for t in params.values()) / 1e6:.1f} M params)", flush=True)
        _push_vs_memcpy(big_sampler, params, "random 30M Llama")
        _kernel_rates(big_sampler, prompts, seeded)
        big_sampler.close()


if __name__ == "__main__":
    main()
