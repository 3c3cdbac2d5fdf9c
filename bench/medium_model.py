"""The benchmark's medium policies: a ~27 M-parameter Llama (hidden 512, 8 layers, intermediate 1536) over the
tiny tokenizer, built offline and cached: `python -m bench.medium_model [OUT] [--force]` (default artifacts/medium).

build_medium pre-trains it briefly on the review grammar (like the tiny policy) so that its completions end with
EOS at realistic lengths. build_medium_random (artifacts/medium_random) is the same shape untrained, made never
to sample EOS, so that every completion runs to the token budget: the heaviest step at that size. The reward
model stays the tiny one: the benchmark measures the policy's sampling and learning at a size where compute, not
overhead, dominates.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from demo import tiny

ROOT = Path(__file__).resolve().parents[1]
SHAPE = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "head_dim": 64,
}


def build_medium(
    out: Path = ROOT / "artifacts" / "medium", steps: int = 150, seed: int = 0, force: bool = False
) -> Path:
    """Write OUT/policy (model + tokenizer) unless OUT/COMPLETE exists (or force); returns OUT."""
    out = Path(out)
    if (out / "COMPLETE").exists() and not force:
        return out
    tokenizer, model = _untrained(seed)
    print(f"building the medium policy ({_params(model) / 1e6:.1f} M parameters) under {out}", flush=True)
    t0 = time.time()
    texts = tiny.grammar_texts(random.Random(seed), 5_000, 32)
    tiny.fit(
        model,
        lambda: tiny.lm_loss(model, tokenizer, texts()),
        steps,
        "medium policy",
        lr=5e-4,
        metric="nll/token",
        log_every=50,
    )
    _save(out, model, tokenizer, f"seed={seed} steps={steps}")
    print(f"medium policy ready in {time.time() - t0:.0f} s", flush=True)
    return out


def build_medium_random(out: Path = ROOT / "artifacts" / "medium_random", seed: int = 0, force: bool = False) -> Path:
    """Write OUT/policy, the medium shape untrained and never sampling EOS, unless OUT/COMPLETE exists (or force).

    Untrained, EOS would be about 1 token in 58 (the vocabulary): over half of 32-token completions would stop
    early. One residual channel is set large in every token's embedding and EOS's output row reads it with a
    negative weight, so that log p(EOS) stays below -40 at every position.
    """
    out = Path(out)
    if (out / "COMPLETE").exists() and not force:
        return out
    tokenizer, model = _untrained(seed)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.lm_head.weight[tiny.EOS] = 0.0
        model.lm_head.weight[tiny.EOS, 0] = -3.0
    _save(out, model, tokenizer, f"seed={seed} untrained, never EOS")
    return out


def _untrained(seed: int) -> tuple[PreTrainedTokenizerFast, LlamaForCausalLM]:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny.build(ROOT / "artifacts" / "tiny") / "tokenizer")
    torch.manual_seed(seed)
    return tokenizer, LlamaForCausalLM(tiny.llama_config(len(tokenizer), **SHAPE))


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _save(out: Path, model, tokenizer, note: str) -> None:
    model.generation_config.pad_token_id = tiny.PAD
    model.generation_config.eos_token_id = tiny.EOS
    tiny.save(out / "policy", model, tokenizer)
    (out / "COMPLETE").write_text(f"{note} params={_params(model)}\n")


if __name__ == "__main__":
    tiny.build_main(build_medium, __doc__, ROOT / "artifacts" / "medium")
