"""A template grammar of one-sentence movie reviews: the synthetic world of the local default job.

The tiny policy is pre-trained on these sentences (mostly negative or lukewarm), the tiny reward model
learns "positive and well formed" from labels computed here, and J-BOND should move the policy toward
sentences a reader recognises as positive reviews.
"""

from __future__ import annotations

import random

SUBJECTS = tuple(f"the {w}" for w in "movie film plot acting music ending story cast script director".split())
LINKS = ("was", "felt", "seemed")
ADVERBS = ("very", "really", "quite", "truly")
POSITIVE = ("great", "wonderful", "brilliant", "fun", "moving", "beautiful", "clever", "charming")
NEGATIVE = ("bad", "boring", "awful", "dull", "terrible", "weak", "slow", "silly")
NEUTRAL = ("long", "short", "loud", "quiet", "simple", "odd")
CONJUNCTIONS = ("and", "but")
LIKE = ("loved", "liked", "enjoyed")
DISLIKE = ("hated", "disliked", "regretted")
END = "."

PROMPTS = SUBJECTS[:8] + ("i thought the movie", "i thought the film", "honestly the script", "overall the director")
_PROMPT_PREFIXES = ("i thought", "honestly", "overall")

VOCABULARY = tuple(
    sorted(
        {w for phrase in SUBJECTS + PROMPTS for w in phrase.split()}
        | set(LINKS + ADVERBS + POSITIVE + NEGATIVE + NEUTRAL + CONJUNCTIONS + LIKE + DISLIKE)
        | {END, "i"}
    )
)


def _adjective(rng: random.Random, p_positive: float) -> str:
    u = rng.random()
    if u < p_positive:
        return rng.choice(POSITIVE)
    if u < p_positive + (1 - p_positive) * 0.7:
        return rng.choice(NEGATIVE)
    return rng.choice(NEUTRAL)


def _clause(rng: random.Random, subject: str, p_positive: float) -> str:
    words = [subject, rng.choice(LINKS)]
    if rng.random() < 0.4:
        words.append(rng.choice(ADVERBS))
    words.append(_adjective(rng, p_positive))
    return " ".join(words)


def sentence(rng: random.Random, p_positive: float = 0.25) -> str:
    """One well-formed review sentence; p_positive is the chance of each positive adjective."""
    if rng.random() < 0.2:
        verb = rng.choice(LIKE) if rng.random() < p_positive else rng.choice(DISLIKE)
        return f"i {verb} {rng.choice(SUBJECTS)} {END}"
    parts = [_clause(rng, rng.choice(SUBJECTS), p_positive)]
    if rng.random() < 0.5:
        parts += [rng.choice(CONJUNCTIONS), _clause(rng, rng.choice(SUBJECTS), p_positive)]
    text = " ".join(parts)
    if rng.random() < 0.25:
        text = f"{rng.choice(_PROMPT_PREFIXES)} {text}"
    return f"{text} {END}"


def corrupt(rng: random.Random, text: str) -> str:
    """A malformed variant: shuffled, truncated, or with a stuttered word (for the reward model's negatives)."""
    words = text.split()
    kind = rng.randrange(3)
    if kind == 0:
        rng.shuffle(words)
    elif kind == 1:
        words = words[: rng.randrange(1, max(2, len(words) - 1))]
    else:
        i = rng.randrange(len(words))
        words = words[: i + 1] + [words[i]] * rng.randrange(2, 4) + words[i + 1 :]
    return " ".join(words)


def is_well_formed(text: str) -> bool:
    """True iff text is one sentence this grammar generates (a literal recursive-descent check)."""
    words = text.split()
    if not words or words[-1] != END or words.count(END) != 1:
        return False
    words = words[:-1]
    if words[:1] == ["i"] and words[1:2] != ["thought"]:
        return len(words) == 4 and words[1] in LIKE + DISLIKE and " ".join(words[2:]) in SUBJECTS
    if words and words[0] in ("honestly", "overall"):
        words = words[1:]
    elif words[:2] == ["i", "thought"]:
        words = words[2:]
    return _clauses(words)


def _clauses(words: list[str]) -> bool:
    for i, w in enumerate(words):
        if w in CONJUNCTIONS:
            return clause_adjective(words[:i]) is not None and clause_adjective(words[i + 1 :]) is not None
    return clause_adjective(words) is not None


def clause_adjective(words: list[str]) -> str | None:
    """The adjective of a clause "subject link [adverb] adjective" of this grammar; None if `words` are not one."""
    if len(words) < 4 or " ".join(words[:2]) not in SUBJECTS or words[2] not in LINKS:
        return None
    rest = words[3:]
    if len(rest) == 2 and rest[0] in ADVERBS:
        rest = rest[1:]
    return rest[0] if len(rest) == 1 and rest[0] in POSITIVE + NEGATIVE + NEUTRAL else None


def sentiment(text: str) -> int:
    """Positive minus negative sentiment words."""
    words = text.split()
    pos = sum(w in POSITIVE or w in LIKE for w in words)
    neg = sum(w in NEGATIVE or w in DISLIKE for w in words)
    return pos - neg


def review_score(text: str) -> float:
    """The label the reward model learns: sentiment, and -2 for anything that is not a well-formed sentence."""
    return float(sentiment(text)) if is_well_formed(text) else -2.0
