"""A Hugging Face sequence classifier loaded for scoring: the engine under the learned and entailment rewards.

Loads any AutoModelForSequenceClassification from a local directory or a hub id, safetensors only and
without trust_remote_code (a reward checkpoint must not be able to run code in the service).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

# Some tokenizers report a sentinel like 1e30 when they have no limit of their own.
_NO_LIMIT = 1_000_000


class SequenceClassifier:
    """logits(texts[, pairs]) in chunks of `batch_size`, right-padded, truncated to `max_length` tokens."""

    def __init__(
        self,
        path_or_hub_id: str,
        device: str = "cpu",
        max_length: int | None = None,
        batch_size: int = 64,
        truncation_side: str = "right",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = str(path_or_hub_id)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=False)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                self.path, dtype="auto", use_safetensors=True, trust_remote_code=False
            )
            .to(self.device)
            .eval()
        )
        self.config = self.model.config
        # Right padding: Llama-style models number positions 0.. regardless of padding, so a left-padded
        # sample would be scored at shifted positions and its reward would depend on its batch-mates.
        # With right padding (and causal attention) a sample's logits do not depend on the batch it is in,
        # which is what lets Serve's dynamic batching return the same rewards as a single in-process call.
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = truncation_side
        if self.tokenizer.pad_token is None:
            # GPT-2-style tokenizers have no pad token; the attention mask makes the choice irrelevant,
            # but the model must know it to find each sample's last real token.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.config.pad_token_id is None:
            self.config.pad_token_id = self.tokenizer.pad_token_id
        limits = [
            n
            for n in (self.tokenizer.model_max_length, getattr(self.config, "max_position_embeddings", None))
            if n is not None and n < _NO_LIMIT
        ]
        self.max_length = max_length or (min(limits) if limits else 512)
        self.fingerprint = weights_fingerprint(self.model)

    @property
    def num_labels(self) -> int:
        return int(self.config.num_labels)

    @torch.inference_mode()
    def logits(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        truncation: str | bool = True,
        add_special_tokens: bool = True,
    ) -> torch.Tensor:
        """[N, num_labels] float32 logits; `pairs` makes each input a (text, pair) tokenizer pair.
        add_special_tokens=False for texts a chat template rendered (it wrote BOS etc. itself)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            chunk_pairs = None if pairs is None else list(pairs[start : start + self.batch_size])
            enc = self.tokenizer(
                chunk,
                chunk_pairs,
                padding=True,
                truncation=truncation,
                max_length=self.max_length,
                return_tensors="pt",
                add_special_tokens=add_special_tokens,
            ).to(self.device)
            out.append(self.model(**enc).logits.float().cpu())
        if not out:
            return torch.empty(0, self.num_labels)
        return torch.cat(out)


def weights_fingerprint(model: torch.nn.Module, digits: int = 12) -> str:
    """A short hash of every parameter and buffer (names, dtypes, shapes, bytes): the weights' identity.

    Hashes what was loaded rather than file names or dates, so a retrained checkpoint at the same path
    gets a new id and a copy of the same checkpoint elsewhere gets the same one.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    return digest.hexdigest()[:digits]
