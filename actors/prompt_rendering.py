"""A prompt record -> the text and token ids the policy engine reads (one rule for every sampler and the driver).

- Chat messages go through the POLICY tokenizer's chat template with add_generation_prompt=True, and the
  rendered text is encoded with add_special_tokens=False: the template writes BOS itself when the model
  wants one (Hugging Face's own rule in apply_chat_template(tokenize=True)), so BOS is never doubled.
- A plain text is encoded as written, with the tokenizer's special tokens, unless it already begins with
  the BOS token (a pre-templated prompt): then nothing is added.
"""

from __future__ import annotations

from dataclasses import dataclass

from bond.records import Prompt


@dataclass(frozen=True)
class RenderedPrompt:
    text: str  # the prompt as the engine reads it
    token_ids: tuple[int, ...]  # [P]


def as_prompt(value: Prompt | str) -> Prompt:
    return value if isinstance(value, Prompt) else Prompt(text=value)


def render(tokenizer, prompt: Prompt | str) -> RenderedPrompt:
    """Raises ValueError for chat messages when the tokenizer has no chat template."""
    prompt = as_prompt(prompt)
    if prompt.is_chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"a prompt is a list of chat messages, but the policy tokenizer "
                f"({getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}) has no chat "
                "template; give plain-text prompts or a model whose tokenizer has one"
            )
        text = tokenizer.apply_chat_template(prompt.as_dicts(), tokenize=False, add_generation_prompt=True)
        return RenderedPrompt(text, tuple(tokenizer.encode(text, add_special_tokens=False)))
    bos = getattr(tokenizer, "bos_token", None)
    pre_templated = bool(bos) and prompt.text.startswith(bos)
    return RenderedPrompt(prompt.text, tuple(tokenizer.encode(prompt.text, add_special_tokens=not pre_templated)))
