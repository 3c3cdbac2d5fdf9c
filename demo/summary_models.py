"""Build the summary world's models and prompts offline: `python -m demo.summary_models OUT`.

OUT/policy       a LlamaForCausalLM pre-trained on "review : <source> summary : <SFT summary>" (summary_world.py)
OUT/nli          a 3-way LlamaForSequenceClassification (entailment / neutral / contradiction) trained on generated
                 (premise = source, hypothesis = summary) pairs; read by reward_service.entailment as an
                 ordinary from_pretrained checkpoint (safetensors), exactly as a user's NLI model would be.
                 Its tokenizer lays a pair out hypothesis first ("<s> summary <sep> source"): the summary's
                 words then sit at a fixed distance from the words of the source's lead clause they restate,
                 which a 2-layer causal model learns to compare in minutes (premise first, it did not)
OUT/prompts.jsonl, OUT/prompts_eval.jsonl   training and held-out prompts (distinct sources)
OUT/nli_heldout.json   the classifier's accuracy on fresh generated pairs, measured at build time

Deterministic for a seed; a complete OUT (its COMPLETE file) is not rebuilt.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from tokenizers import processors
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from demo import summary_world as world
from demo import tiny


def nli_tokenizer():
    """The world's word-level tokenizer, pair template reversed: (premise, hypothesis) -> <s> hyp <sep> premise."""
    tokenizer = tiny.build_tokenizer(world.VOCABULARY)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $B <sep> $A:1", special_tokens=[("<s>", tiny.BOS), ("<sep>", tiny.SEP)]
    )
    return tokenizer


def pretrain_policy(tokenizer, rng: random.Random, steps: int) -> LlamaForCausalLM:
    torch.manual_seed(rng.randrange(2**31))
    model = LlamaForCausalLM(tiny.llama_config(len(tokenizer)))

    def texts() -> list[str]:
        return [f"{p} {s}</s>" for p, s in (world.sft_example(rng) for _ in range(48))]

    tiny.fit(
        model, lambda: tiny.lm_loss(model, tokenizer, texts()), steps, "summary policy", lr=3e-3, metric="nll/token"
    )
    model.generation_config.pad_token_id = tiny.PAD
    return model


def train_nli(tokenizer, rng: random.Random, steps: int) -> LlamaForSequenceClassification:
    torch.manual_seed(rng.randrange(2**31))
    model = LlamaForSequenceClassification(tiny.classifier_config(len(tokenizer), world.LABELS))

    def batch():
        return tiny.pair_batch(tokenizer, [world.nli_example(rng) for _ in range(32)])

    loss = tiny.classifier_loss(model, batch, torch.nn.functional.cross_entropy)
    tiny.fit(model, loss, steps, "summary nli", lr=3e-4)
    return model


@torch.no_grad()
def nli_accuracy(model, tokenizer, rng: random.Random, pairs: int = 1000) -> float:
    """Accuracy on `pairs` fresh generated (premise, hypothesis, label) triples."""
    model.eval()
    enc, labels = tiny.pair_batch(tokenizer, [world.nli_example(rng) for _ in range(pairs)])
    return (model(**enc).logits.argmax(-1) == labels).float().mean().item()


def write_prompts(path: Path, rng: random.Random, count: int, exclude: set[str]) -> set[str]:
    sources: list[str] = []
    while len(sources) < count:
        src, _ = world.source(rng)
        if src not in exclude and src not in sources:
            sources.append(src)
    path.write_text("".join(json.dumps({"prompt": world.prompt(s)}) + "\n" for s in sources))
    return set(sources)


def build(out: Path, seed: int = 0, policy_steps: int = 400, nli_steps: int = 1500, force: bool = False) -> Path:
    out = Path(out)
    if (out / "COMPLETE").exists() and not force:
        return out
    t0 = time.time()
    torch.set_num_threads(1)  # tiny matrices: a second thread buys little and costs a lot on a busy machine
    rng = random.Random(f"summary-{seed}")
    tokenizer, pair_tokenizer = tiny.build_tokenizer(world.VOCABULARY), nli_tokenizer()
    print(f"building the summary world under {out} (vocab {len(tokenizer)})", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    train = write_prompts(out / "prompts.jsonl", rng, 256, set())
    write_prompts(out / "prompts_eval.jsonl", rng, 48, train)
    nli = train_nli(pair_tokenizer, rng, nli_steps)
    accuracy = nli_accuracy(nli, pair_tokenizer, random.Random(f"summary-heldout-{seed}"))
    print(f"  summary nli held-out accuracy {accuracy:.3f}", flush=True)
    (out / "nli_heldout.json").write_text(json.dumps({"accuracy": accuracy, "pairs": 1000}) + "\n")
    for name, model, tok in (
        ("policy", pretrain_policy(tokenizer, rng, policy_steps), tokenizer),
        ("nli", nli, pair_tokenizer),
    ):
        tiny.save(out / name, model, tok)
    (out / "COMPLETE").write_text(f"seed={seed}\n")
    print(f"summary world ready in {time.time() - t0:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    tiny.build_main(build, __doc__, Path("artifacts/summary"))
