"""The benchmark's medium policy: a ~27 M-parameter Llama (hidden 512, 8 layers, intermediate 1536) over the
tiny tokenizer, built offline and cached: `python -m bench.medium_model [OUT]` (default artifacts/medium).

Pre-trained briefly on the review grammar (like the tiny policy) so that its completions end with EOS at
realistic lengths instead of always running to the token budget. The reward model stays the tiny one: the
benchmark measures the policy's sampling and learning at a size where compute, not overhead, dominates.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from cluster import review_grammar as grammar
from cluster.tiny import EOS, PAD, build, llama_config

ROOT = Path(__file__).resolve().parents[1]
SHAPE = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 8,
         "num_key_value_heads": 8, "head_dim": 64}


def build_medium(out: Path = ROOT / "artifacts" / "medium", steps: int = 150, seed: int = 0) -> Path:
    """Write OUT/policy (model + tokenizer) unless OUT/COMPLETE exists; returns OUT."""
    out = Path(out)
    if (out / "COMPLETE").exists():
        return out
    tiny = build(ROOT / "artifacts" / "tiny")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny / "tokenizer")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig.from_dict({**llama_config(len(tokenizer)).to_dict(), **SHAPE}))
    params = sum(p.numel() for p in model.parameters())
    print(f"building the medium policy ({params / 1e6:.1f} M parameters) under {out}", flush=True)
    t0 = time.time()
    corpus = [grammar.sentence(rng) for _ in range(5_000)]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    for step in range(steps):
        enc = tokenizer([t + "</s>" for t in rng.sample(corpus, 32)], padding=True, return_tensors="pt",
                        padding_side="right")
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  medium policy step {step:4d}  nll/token {loss.item():.3f}", flush=True)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    model.save_pretrained(out / "policy", safe_serialization=True)
    tokenizer.save_pretrained(out / "policy")
    (out / "COMPLETE").write_text(f"seed={seed} steps={steps} params={params}\n")
    print(f"medium policy ready in {time.time() - t0:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    build_medium(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "artifacts" / "medium")
