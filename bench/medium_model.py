"""The benchmark's medium policy: a ~27 M-parameter Llama (hidden 512, 8 layers, intermediate 1536) over the
tiny tokenizer, built offline and cached: `python -m bench.medium_model [OUT] [--force]` (default artifacts/medium).

Pre-trained briefly on the review grammar (like the tiny policy) so that its completions end with EOS at
realistic lengths instead of always running to the token budget. The reward model stays the tiny one: the
benchmark measures the policy's sampling and learning at a size where compute, not overhead, dominates.
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
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny.build(ROOT / "artifacts" / "tiny") / "tokenizer")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny.llama_config(len(tokenizer), **SHAPE))
    params = sum(p.numel() for p in model.parameters())
    print(f"building the medium policy ({params / 1e6:.1f} M parameters) under {out}", flush=True)
    t0 = time.time()
    texts = tiny.grammar_texts(rng, 5_000, 32)
    tiny.fit(
        model,
        lambda: tiny.lm_loss(model, tokenizer, texts()),
        steps,
        "medium policy",
        lr=5e-4,
        metric="nll/token",
        log_every=50,
    )
    model.generation_config.pad_token_id = tiny.PAD
    model.generation_config.eos_token_id = tiny.EOS
    tiny.save(out / "policy", model, tokenizer)
    (out / "COMPLETE").write_text(f"seed={seed} steps={steps} params={params}\n")
    print(f"medium policy ready in {time.time() - t0:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    tiny.build_main(build_medium, __doc__, ROOT / "artifacts" / "medium")
