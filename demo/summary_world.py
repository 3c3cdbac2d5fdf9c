"""A small offline "summarise this review" world for the textual-entailment reward (RLEF, docs/algorithm.md section 5).

A source is a multi-clause review ("the plot was very dull but the acting seemed great and the music was
boring ."); the prompt is "review : <source> summary :" and a summary is its lead clause ("the plot was very
dull .", the lead baseline of news summarisation) or something that goes wrong with it. Each clause of a
summary is a (subject, adjective) claim about the source:

    entailed       the source says that adjective of that subject
    contradiction  the source gives that subject an adjective of the opposite polarity
    neutral        the subject is absent, or its adjective differs but has the same polarity

A summary is `entailment` iff every clause is entailed, `contradiction` iff some clause contradicts, else
`neutral` (and `malformed` when it is not a summary of this grammar at all). These labels train the NLI
classifier and give the literal faithfulness every evaluation reports beside the learned reward.

The SFT data the policy imitates mixes faithful lead clauses, lead clauses with a flipped adjective
(contradictions), with a subject the source never mentions (hallucinations) and, now and then, a verbatim
copy of the whole source: faithful but not a summary. An entailment reward can be maximised by copying, so
the trade-off to watch is faithfulness against length and copy rate.

Why lead clauses: a tiny classifier trained from scratch in a minute learns to compare a hypothesis with the
premise position by position, but did not learn (in the 1000 steps tried) to find the clause of a premise that
a summary clause is about. So the generated summaries are lead clauses, whose words line up with the
premise's start; the literal labels stay semantic, and a summary the classifier was never shown (another
clause of the source, say) is judged by them correctly even where the classifier is not.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from demo import review_grammar as grammar

POLARITY = {**dict.fromkeys(grammar.POSITIVE, 1), **dict.fromkeys(grammar.NEGATIVE, -1)}
ADJECTIVES = grammar.POSITIVE + grammar.NEGATIVE
CLAUSES = (2, 3)  # clauses per source
PREFIX, MARKER = "review :", "summary :"
PREMISE_PATTERN = r"review : (?P<premise>.*) summary :"  # reward.premise_pattern: the source inside a prompt
LABELS = ("entailment", "neutral", "contradiction")  # the NLI classifier's id2label order
VOCABULARY = tuple(sorted(set(grammar.VOCABULARY) | {"review", "summary", ":"}))
# What the SFT summaries are, with these frequencies (faithful extracts most often)
SUMMARY_KINDS = (("faithful", 0.45), ("contradiction", 0.2), ("hallucination", 0.2), ("copy", 0.15))


@dataclass(frozen=True)
class Claim:
    subject: str
    adjective: str


def source(rng: random.Random) -> tuple[str, tuple[Claim, ...]]:
    """A review of 2-3 clauses about distinct subjects, and the claims it makes."""
    subjects = rng.sample(grammar.SUBJECTS, rng.choice(CLAUSES))
    claims = tuple(Claim(s, rng.choice(ADJECTIVES)) for s in subjects)
    parts = [f"{claims[0].subject} was {claims[0].adjective}"]  # the lead clause in plain words (see above)
    for c in claims[1:]:
        adverb = [rng.choice(grammar.ADVERBS)] if rng.random() < 0.3 else []
        clause = " ".join([c.subject, rng.choice(grammar.LINKS), *adverb, c.adjective])
        parts += [rng.choice(grammar.CONJUNCTIONS), clause]
    return " ".join(parts) + f" {grammar.END}", claims


def prompt(src: str) -> str:
    return f"{PREFIX} {src} {MARKER}"


def _opposite(rng: random.Random, adjective: str) -> str:
    return rng.choice(grammar.NEGATIVE if POLARITY[adjective] > 0 else grammar.POSITIVE)


def lead(src: str) -> str:
    """The source's first clause, verbatim, as a sentence."""
    words = src.split()[:-1]
    cut = next((i for i, w in enumerate(words) if w in grammar.CONJUNCTIONS), len(words))
    return " ".join(words[:cut]) + f" {grammar.END}"


def summary(rng: random.Random, src: str, claims: Sequence[Claim], kind: str) -> str:
    """An SFT summary of the given kind: faithful | contradiction | hallucination | swap | copy."""
    if kind == "copy":
        return src
    words, first = lead(src).split(), claims[0]
    if kind == "contradiction":
        words[-2] = _opposite(rng, first.adjective)
    elif kind == "swap":  # another adjective of the same polarity: not said, not contradicted (neutral)
        words[-2] = rng.choice(
            [a for a in ADJECTIVES if POLARITY[a] == POLARITY[first.adjective] and a != first.adjective]
        )
    elif kind == "hallucination":
        absent = [s for s in grammar.SUBJECTS if s not in {c.subject for c in claims}]
        words[:2] = rng.choice(absent).split()
    elif kind != "faithful":
        raise ValueError(f"unknown summary kind {kind!r}")
    return " ".join(words)


def sft_example(rng: random.Random) -> tuple[str, str]:
    """(prompt, summary) for the policy's pre-training."""
    src, claims = source(rng)
    kind = rng.choices([k for k, _ in SUMMARY_KINDS], [w for _, w in SUMMARY_KINDS])[0]
    return prompt(src), summary(rng, src, claims, kind)


def parse(text: str) -> tuple[Claim, ...] | None:
    """The claims of a text of this grammar (a summary or a source), or None when it is malformed."""
    words = text.split()
    if not words or words[-1] != grammar.END or words.count(grammar.END) != 1:
        return None
    clauses, current = [], []
    for w in words[:-1]:
        if w in grammar.CONJUNCTIONS:
            clauses.append(current)
            current = []
        else:
            current.append(w)
    clauses.append(current)
    claims = []
    for c in clauses:
        adjective = grammar.clause_adjective(c)
        if adjective not in POLARITY:  # not a clause, or a neutral adjective: no claim
            return None
        claims.append(Claim(" ".join(c[:2]), adjective))
    return tuple(claims)


def label(src_claims: Sequence[Claim], text: str) -> str:
    """entailment | neutral | contradiction | malformed, of a summary `text` against the source's claims."""
    claims = parse(text)
    if claims is None:
        return "malformed"
    said = {c.subject: c.adjective for c in src_claims}
    verdicts = []
    for c in claims:
        if said.get(c.subject) == c.adjective:
            verdicts.append("entailment")
        elif c.subject in said and POLARITY[said[c.subject]] != POLARITY[c.adjective]:
            verdicts.append("contradiction")
        else:
            verdicts.append("neutral")
    if "contradiction" in verdicts:
        return "contradiction"
    return "entailment" if all(v == "entailment" for v in verdicts) else "neutral"


def nli_example(rng: random.Random) -> tuple[str, str, int]:
    """(premise, hypothesis, label index into LABELS): SFT-like summaries plus same-polarity swaps (neutral)."""
    src, claims = source(rng)
    kind = rng.choice(("faithful", "faithful", "contradiction", "hallucination", "copy", "swap"))
    hyp = summary(rng, src, claims, kind)
    return src, hyp, LABELS.index(label(claims, hyp))


def source_of(prompt_text: str) -> str:
    """The source inside a prompt of this world."""
    if not (prompt_text.startswith(PREFIX) and prompt_text.endswith(MARKER)):
        raise ValueError(f"not a prompt of the summary world: {prompt_text!r}")
    return prompt_text[len(PREFIX) : -len(MARKER)].strip()


@dataclass(frozen=True)
class SummaryStats:
    """What an evaluation of summaries reports (fractions of summaries; length in words)."""

    faithful: float  # literal label == entailment
    contradiction: float
    neutral: float
    malformed: float
    copy_rate: float  # the summary restates every claim of the source (a copy, not a summary)
    words: float  # mean length


def summary_stats(prompts: Sequence[str], summaries: Sequence[str]) -> SummaryStats:
    if len(prompts) != len(summaries) or not prompts:
        raise ValueError(f"summary_stats: {len(prompts)} prompts and {len(summaries)} summaries")
    labels, copies = [], 0
    for p, s in zip(prompts, summaries, strict=True):
        src_claims = parse(source_of(p))
        if src_claims is None:
            raise ValueError(f"summary_stats: malformed source in prompt {p!r}")
        labels.append(label(src_claims, s))
        claims = parse(s)
        copies += claims is not None and set(claims) >= set(src_claims)
    n = len(prompts)
    return SummaryStats(
        faithful=labels.count("entailment") / n,
        contradiction=labels.count("contradiction") / n,
        neutral=labels.count("neutral") / n,
        malformed=labels.count("malformed") / n,
        copy_rate=copies / n,
        words=sum(len(s.split()) for s in summaries) / n,
    )


def faithfulness(prompt: str, completion: str) -> float:
    """A function reward (eval.gold_reward "demo.summary_world:faithfulness"): 1 for a summary the source entails
    literally, else 0; the truth the learned NLI reward stands in for."""
    return float(label(parse(source_of(prompt)) or (), completion) == "entailment")
