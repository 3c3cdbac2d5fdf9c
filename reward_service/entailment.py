"""Textual-entailment reward (RLEF): r(x, y) = log P(entailment | premise = document in x, hypothesis = y).

The NLI classifier reads the tokenizer pair (premise, hypothesis), the standard NLI input (and how the
tiny NLI model was trained). The premise is the whole prompt (its plain text) by default, or the part of it a regular
expression picks out (e.g. the article inside a "Summarise: ... TL;DR:" prompt). A too-long premise
is cut, never the hypothesis, so the completion is always judged whole.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from reward_service.errors import BadRequestError
from reward_service.reward_model import PromptLike, check_pairs, checked_rewards, plain_text
from reward_service.sequence_classifier import SequenceClassifier


def entailment_index(id2label: Mapping[int, str], wanted: str = "entailment") -> int:
    """The class index whose label is `wanted` (case-insensitive; "entail..." prefixes also match)."""
    labels = {int(i): str(name) for i, name in id2label.items()}
    exact = [i for i, name in labels.items() if name.lower() == wanted.lower()]
    prefix = [i for i, name in labels.items() if name.lower().startswith(wanted.lower()[:6])]
    found = exact or prefix
    if len(found) != 1:
        raise ValueError(
            f"cannot find a unique {wanted!r} label among the classifier's labels "
            f"{sorted(labels.items())}; pass entailment_label= with the right name"
        )
    return found[0]


class PremiseExtractor:
    """Picks the source document out of a prompt: all of it, or the match of a regular expression.

    The pattern is searched with re.DOTALL; its group named "premise" is used if it has one, else group 1,
    else the whole match. A prompt it does not match is an error, not a silent fall back to the prompt.
    """

    def __init__(self, pattern: str | None = None) -> None:
        self.pattern = None if pattern is None else re.compile(pattern, re.DOTALL)

    def __call__(self, prompt: str, index: int) -> str:
        if self.pattern is None:
            return prompt
        match = self.pattern.search(prompt)
        if match is None:
            raise BadRequestError(
                f"prompt {index} does not match the premise pattern {self.pattern.pattern!r}", "bad_prompt"
            )
        if "premise" in self.pattern.groupindex:
            return match.group("premise")
        return match.group(1) if self.pattern.groups else match.group(0)


class EntailmentReward:
    """An NLI sequence classifier as a RewardModel; rewards are log-probabilities, so always <= 0."""

    def __init__(
        self, path: str, *, premise_pattern: str | None = None, entailment_label: str = "entailment", **classifier: Any
    ) -> None:
        """classifier: the SequenceClassifier's device, max_length and batch_size."""
        self._classifier = SequenceClassifier(path, **classifier)
        try:
            self.label_index = entailment_index(self._classifier.config.id2label, entailment_label)
        except ValueError as exc:
            raise ValueError(f"EntailmentReward({path!r}): {exc}") from None
        self._premise = PremiseExtractor(premise_pattern)
        self.model_id = f"entailment:{path}@{self._classifier.fingerprint}"

    def score(self, prompts: Sequence[PromptLike], completions: Sequence[str]) -> list[float]:
        check_pairs(prompts, completions)
        premises = [self._premise(plain_text(p), i) for i, p in enumerate(prompts)]
        logits = self._classifier.logits(premises, list(completions), truncation="only_first")
        logp = torch.log_softmax(logits, dim=-1)[:, self.label_index]
        return checked_rewards(logp.tolist(), len(premises), self.model_id)

    def __repr__(self) -> str:
        return f"EntailmentReward({self.model_id!r})"
