"""Build tiny, real Hugging Face models offline and deterministically (no hub): `python -m demo.tiny OUT`.

OUT/tokenizer  a word-level tokenizer over the review grammar (PreTrainedTokenizerFast, tokenizer.json)
OUT/policy     a ~0.5 M-parameter LlamaForCausalLM pre-trained for a few hundred steps on grammar sentences
OUT/reward     a LlamaForSequenceClassification (1 logit) trained to predict review_score (positive, well formed)
OUT/nli        a 3-way NLI-style classifier (entailment/neutral/contradiction) trained on synthetic pairs
OUT/qwen_policy  a chat model: Qwen2ForCausalLM with TIED embeddings and a tokenizer carrying a chat template,
               trained on conversations "user: <start of a review>" -> "assistant: <rest of the sentence>",
               the shape of the Qwen2.5 chat models users bring (tests of the chat data contract and tied weights)

Everything is written with save_pretrained (safetensors) and read back with from_pretrained by the
actors, the reward service and the learner, exactly as a user's own checkpoint would be.
The training pieces here (llama_config, encode, lm_loss, fit, save, build_main) also build the other offline
models: demo/summary_models.py and bench/medium_model.py.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from demo import review_grammar as grammar

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<sep>")
PAD, BOS, EOS, UNK, SEP = range(len(SPECIALS))
MAX_POSITIONS = 64
# Every offline model's size: ~0.5 M parameters besides the embeddings.
SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=2, torch_dtype="float32")


def build_tokenizer(vocabulary: tuple[str, ...] = grammar.VOCABULARY) -> PreTrainedTokenizerFast:
    words = [f"\u2581{w}" for w in vocabulary]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + tuple(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <sep> $B:1", special_tokens=[("<s>", BOS), ("<sep>", SEP)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        sep_token="<sep>",
        model_max_length=MAX_POSITIONS,
        padding_side="left",
    )


# The chat model's tokenizer has the shape of Qwen2.5's: byte-level BPE (AutoTokenizer always builds a
# Qwen2Tokenizer for a qwen2 model), no BOS, ChatML turns, <|im_end|> ends the assistant's turn.
CHAT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_MAX_POSITIONS = 128


def build_chat_tokenizer(rng: random.Random):
    """A byte-level BPE learned on the grammar (every word ends up one token) wrapped as a Qwen2Tokenizer."""
    from tokenizers import trainers
    from transformers import Qwen2Tokenizer

    shell = Qwen2Tokenizer()  # Qwen2's pre-tokenizer and decoder, so the learned merges fit it exactly
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = shell.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=list(CHAT_SPECIALS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    pairs = [chat_example(rng) for _ in range(2000)]
    turns = [f"{role}\n{text}" for pair in pairs for role, text in zip(("user", "assistant"), pair, strict=True)]
    bpe.train_from_iterator(turns + [" ".join(grammar.VOCABULARY), "system\n"], trainer)
    state = json.loads(bpe.to_str())["model"]
    return Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=CHAT_MAX_POSITIONS,
        chat_template=CHAT_TEMPLATE,
    )


def chat_example(rng: random.Random) -> tuple[str, str]:
    """A review sentence cut after its first words: (user message, assistant reply completing it)."""
    words = grammar.sentence(rng).split()
    cut = rng.randint(1, min(4, len(words) - 2))
    return " ".join(words[:cut]), " ".join(words[cut:])


def pretrain_chat_policy(tokenizer, rng: random.Random, steps: int) -> Qwen2ForCausalLM:
    torch.manual_seed(rng.randrange(2**31))
    im_end, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model = Qwen2ForCausalLM(
        Qwen2Config(
            **SHAPE,
            vocab_size=len(tokenizer),
            num_key_value_heads=1,
            max_position_embeddings=CHAT_MAX_POSITIONS,
            bos_token_id=None,
            eos_token_id=im_end,
            pad_token_id=pad,
            tie_word_embeddings=True,
        )
    )

    def texts() -> list[str]:
        out = []
        for _ in range(32):
            user, reply = chat_example(rng)
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
            out.append(f"{prompt}{reply}<|im_end|>")
        return out

    fit(model, lambda: lm_loss(model, tokenizer, texts()), steps, "qwen_policy", lr=3e-3, metric="nll/token")
    model.generation_config.eos_token_id = im_end
    model.generation_config.pad_token_id = pad
    return model


def llama_config(vocab_size: int, **overrides) -> LlamaConfig:
    return LlamaConfig(
        **{
            **SHAPE,
            **dict(
                vocab_size=vocab_size,
                num_key_value_heads=2,
                max_position_embeddings=MAX_POSITIONS,
                bos_token_id=BOS,
                eos_token_id=EOS,
                pad_token_id=PAD,
                tie_word_embeddings=False,
            ),
            **overrides,
        }
    )


def classifier_config(vocab_size: int, labels: tuple[str, ...]) -> LlamaConfig:
    """A classifier of `labels` (their order: the logits' order)."""
    return llama_config(
        vocab_size,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )


def encode(tokenizer, texts: list[str], pairs: list[str] | None = None) -> dict:
    """A right-padded batch (the builders' training batches; the samplers pad left at inference)."""
    return tokenizer(texts, pairs, padding=True, return_tensors="pt", padding_side="right")


def lm_loss(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Next-token loss of a causal LM on `texts`, padding left out of the loss."""
    enc = encode(tokenizer, texts)
    return model(**enc, labels=enc.input_ids.masked_fill(enc.attention_mask == 0, -100)).loss


def fit(
    model,
    loss: Callable[[], torch.Tensor],
    steps: int,
    name: str,
    lr: float,
    metric: str = "loss",
    log_every: int = 100,
) -> None:
    """AdamW on `loss()` (each call draws a fresh batch) for `steps` steps: every offline model is trained so."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"  {name} step {step:4d}  {metric} {value.item():.3f}", flush=True)


def pair_batch(tokenizer, triples: list[tuple[str, str, int]]) -> tuple[dict, torch.Tensor]:
    """(premise, hypothesis, label) triples as a classifier's batch: the encoded pairs and the labels."""
    enc = encode(tokenizer, [p for p, _, _ in triples], [h for _, h, _ in triples])
    return enc, torch.tensor([y for _, _, y in triples])


def classifier_loss(model, batch: Callable[[], tuple[dict, torch.Tensor]], loss_fn) -> Callable[[], torch.Tensor]:
    """`loss_fn(logits, target)` on a fresh `batch()` of (encoding, target) per call, for `fit`."""

    def loss() -> torch.Tensor:
        enc, target = batch()
        return loss_fn(model(**enc).logits, target)

    return loss


def pretrain_policy(tokenizer: PreTrainedTokenizerFast, rng: random.Random, steps: int) -> LlamaForCausalLM:
    torch.manual_seed(rng.randrange(2**31))
    model = LlamaForCausalLM(llama_config(len(tokenizer)))
    texts = grammar_texts(rng, 20_000, 64)
    fit(model, lambda: lm_loss(model, tokenizer, texts()), steps, "policy", lr=3e-3, metric="nll/token")
    return model


def grammar_texts(rng: random.Random, corpus_size: int, batch_size: int) -> Callable[[], list[str]]:
    """Batches of EOS-terminated sentences drawn from one fixed corpus of review-grammar sentences."""
    corpus = [grammar.sentence(rng) for _ in range(corpus_size)]
    return lambda: [t + "</s>" for t in rng.sample(corpus, batch_size)]  # no space: "▁" alone is <unk>


def train_reward(tokenizer: PreTrainedTokenizerFast, rng: random.Random, steps: int):
    torch.manual_seed(rng.randrange(2**31))
    model = LlamaForSequenceClassification(llama_config(len(tokenizer), num_labels=1))

    def batch():
        texts = []
        for _ in range(64):
            s = grammar.sentence(rng, p_positive=rng.random())
            texts.append(grammar.corrupt(rng, s) if rng.random() < 0.3 else s)
        target = torch.tensor([grammar.review_score(t) for t in texts])
        return encode(tokenizer, texts), target

    fit(
        model,
        classifier_loss(model, batch, lambda out, y: torch.nn.functional.mse_loss(out.squeeze(-1), y)),
        steps,
        "reward",
        lr=2e-3,
    )
    return model


NLI_LABELS = ("entailment", "neutral", "contradiction")


def nli_pair(rng: random.Random) -> tuple[str, str, int]:
    """A premise/hypothesis pair: a clause of the premise (entailment), its subject with an opposite
    adjective (contradiction), or a clause about another subject (neutral)."""
    subject = rng.choice(grammar.SUBJECTS)
    adj = rng.choice(grammar.POSITIVE + grammar.NEGATIVE)
    premise = f"{subject} was {adj} {grammar.END}"
    label = rng.randrange(3)
    if label == 0:
        hyp = premise
    elif label == 2:
        opposite = grammar.NEGATIVE if adj in grammar.POSITIVE else grammar.POSITIVE
        hyp = f"{subject} was {rng.choice(opposite)} {grammar.END}"
    else:
        other = rng.choice([s for s in grammar.SUBJECTS if s != subject])
        hyp = f"{other} was {rng.choice(grammar.POSITIVE + grammar.NEGATIVE)} {grammar.END}"
    return premise, hyp, label


def train_nli(tokenizer: PreTrainedTokenizerFast, rng: random.Random, steps: int):
    torch.manual_seed(rng.randrange(2**31))
    model = LlamaForSequenceClassification(
        classifier_config(len(tokenizer), ("entailment", "neutral", "contradiction"))
    )

    def batch():
        return pair_batch(tokenizer, [nli_pair(rng) for _ in range(64)])

    # comparing two sentences is harder than scoring one: at 2e-3 it collapses to the label prior (loss ln 3)
    fit(model, classifier_loss(model, batch, torch.nn.functional.cross_entropy), steps, "nli", lr=3e-4)
    return model


def build(
    out: Path,
    seed: int = 0,
    policy_steps: int = 400,
    reward_steps: int = 300,
    nli_steps: int = 500,
    chat_steps: int = 200,
    force: bool = False,
) -> Path:
    """Write tokenizer, policy, reward, nli and qwen_policy under `out` (skipped where already complete)."""
    out = Path(out)
    done = out / "COMPLETE"
    if force or not (out / "qwen_policy" / "COMPLETE").exists():
        # its own random stream, so a checkout built before the chat model existed gains it unchanged otherwise
        build_chat_policy(out / "qwen_policy", random.Random(f"{seed}-qwen"), chat_steps)
    if done.exists() and not force:
        return out
    t0 = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = random.Random(seed)
    tokenizer = build_tokenizer()
    print(f"building tiny models under {out} (vocab {len(tokenizer)})", flush=True)
    for name, model in (
        ("policy", pretrain_policy(tokenizer, rng, policy_steps)),
        ("reward", train_reward(tokenizer, rng, reward_steps)),
        ("nli", train_nli(tokenizer, rng, nli_steps)),
    ):
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = PAD
        save(out / name, model, tokenizer)
    tokenizer.save_pretrained(out / "tokenizer")
    done.write_text(f"seed={seed}\n")
    print(f"tiny models ready in {time.time() - t0:.0f} s", flush=True)
    return out


def build_chat_policy(out: Path, rng: random.Random, steps: int) -> None:
    t0 = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokenizer = build_chat_tokenizer(rng)
    print(f"building the tiny chat model (Qwen2, tied embeddings, vocab {len(tokenizer)}) under {out}", flush=True)
    model = pretrain_chat_policy(tokenizer, rng, steps)
    save(out, model, tokenizer)
    (out / "COMPLETE").write_text("ok\n")
    print(f"tiny chat model ready in {time.time() - t0:.0f} s", flush=True)


def save(directory: Path, model, tokenizer) -> None:
    """A model and its tokenizer in one from_pretrained directory (safetensors), as a user's checkpoint is."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def build_main(build_fn: Callable[..., Path], doc: str, default_out: Path) -> None:
    """The command line of a model builder: `python -m MODULE [OUT] [--seed N] [--force]`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", default=default_out)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT is complete")
    args = parser.parse_args()
    build_fn(args.out, seed=args.seed, force=args.force)


if __name__ == "__main__":
    build_main(build, __doc__, Path("artifacts/tiny"))
