"""GKD's teacher: a frozen Hugging Face model (no gradient, optimizer state, checkpoint or EMA), a whole copy per
rank even under ZeRO-3, with the policy's vocabulary index for index (the same tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bond.config import require
from learner.sequences import Packed, hf_forward


def check_vocab(model_dir: Path, teacher_vocab: int, vocab_size: int) -> None:
    """GKD compares the two next-token distributions index by index (also a start-up check)."""
    require(
        teacher_vocab == vocab_size,
        "algorithm.gkd_teacher",
        f"{model_dir} predicts {teacher_vocab} tokens, the policy {vocab_size}; the teacher needs the policy's "
        "tokenizer and vocabulary",
    )


class Teacher:
    def __init__(self, model_dir: Path, dtype: torch.dtype, device: torch.device, vocab_size: int) -> None:
        self.module = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
        self.module.eval().requires_grad_(False)
        check_vocab(model_dir, self.module.get_output_embeddings().weight.shape[0], vocab_size)

    @torch.no_grad()
    def logits(self, packed: Packed, keep: torch.Tensor) -> torch.Tensor:
        """[S, K, V] logits at positions `keep` of the packed sequences (no graph is built)."""
        return hf_forward(self.module, packed.input_ids, packed.attention_mask, keep)
