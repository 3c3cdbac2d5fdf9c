"""GKD's teacher: a frozen Hugging Face model (no gradient, optimizer state, checkpoint or EMA), a whole copy per
rank even under ZeRO-3, with the policy's vocabulary index for index (the same tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from learner.sequences import Packed, hf_forward


class Teacher:
    def __init__(self, model_dir: Path, dtype: torch.dtype, device: torch.device, vocab_size: int) -> None:
        self.module = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
        self.module.eval().requires_grad_(False)
        teacher_vocab = self.module.get_output_embeddings().weight.shape[0]
        if teacher_vocab != vocab_size:
            raise ValueError(
                f"algorithm.gkd_teacher: {model_dir} predicts {teacher_vocab} tokens, the policy "
                f"{vocab_size}; the teacher needs the policy's tokenizer and vocabulary"
            )

    @torch.no_grad()
    def logits(self, packed: Packed, keep: torch.Tensor) -> torch.Tensor:
        """[S, K, V] logits at positions `keep` of the packed sequences (no graph is built)."""
        return hf_forward(self.module, packed.input_ids, packed.attention_mask, keep)
