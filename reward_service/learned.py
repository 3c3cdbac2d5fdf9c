"""A learned reward model: r(x, y) = the scalar logit of a sequence classifier on the text x + y.

Input format, built with the REWARD model's own tokenizer (never the policy's rendering of the prompt):
- its tokenizer has a chat template (chat reward models such as Skywork-Reward or a Qwen2.5-based RM):
  the prompt's messages (a plain prompt as one user message) plus the completion as the assistant turn,
  rendered by that template and encoded without adding special tokens again (the template writes them);
- otherwise ONE text, the prompt's plain text and the completion joined as a reader would see them
  (`join_text`), not a tokenizer pair. That is how reward models trained on whole responses (and the
  tiny reward model, trained on whole review sentences whose first words are the prompt) see their inputs.
Too-long inputs are cut from the left, keeping the end of the completion, since these classifiers read
the last token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reward_service.reward_model import PromptLike, chat, check_pairs, checked_rewards, plain_text
from reward_service.sequence_classifier import SequenceClassifier


def join_text(prompt: str, completion: str) -> str:
    """prompt + " " + completion, without doubling whitespace already at the seam.

    A word-level tokenizer turns a double space into an unknown token, and a completion that starts
    with its own space or newline already says how it attaches to the prompt.
    """
    if not prompt or not completion or prompt[-1].isspace() or completion[0].isspace():
        return prompt + completion
    return f"{prompt} {completion}"


def check_one_logit(path_or_hub_id: str, config) -> None:
    """A reward model has one output logit (also a start-up check, on the model's config)."""
    if config.num_labels != 1:
        raise ValueError(
            f"LearnedRewardModel({path_or_hub_id!r}): a reward model has 1 output logit, this classifier has "
            f"{config.num_labels} (labels {config.id2label}); for an NLI classifier use the entailment reward"
        )


class LearnedRewardModel:
    """Any Hugging Face AutoModelForSequenceClassification with one output logit, as a RewardModel."""

    def __init__(self, path_or_hub_id: str, **classifier: Any) -> None:
        """classifier: the SequenceClassifier's device, max_length and batch_size."""
        self._classifier = SequenceClassifier(path_or_hub_id, truncation_side="left", **classifier)
        check_one_logit(path_or_hub_id, self._classifier.config)
        self.model_id = f"learned:{path_or_hub_id}@{self._classifier.fingerprint}"

    @property
    def templated(self) -> bool:
        return bool(getattr(self._classifier.tokenizer, "chat_template", None))

    def inputs(self, prompts: Sequence[PromptLike], completions: Sequence[str]) -> list[str]:
        """The texts the classifier reads (see the module docstring)."""
        if self.templated:
            return [
                self._classifier.tokenizer.apply_chat_template(chat(p, c), tokenize=False)
                for p, c in zip(prompts, completions, strict=True)
            ]
        return [join_text(plain_text(p), c) for p, c in zip(prompts, completions, strict=True)]

    def score(self, prompts: Sequence[PromptLike], completions: Sequence[str]) -> list[float]:
        check_pairs(prompts, completions)
        texts = self.inputs(prompts, completions)
        logits = self._classifier.logits(texts, add_special_tokens=not self.templated)
        return checked_rewards(logits[:, 0].tolist(), len(texts), self.model_id)

    def __repr__(self) -> str:
        return f"LearnedRewardModel({self.model_id!r})"
