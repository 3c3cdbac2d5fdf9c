"""The training-engine interface the Learner drives: plain torch (torch_engine.py) or DeepSpeed (deepspeed_engine.py).

"Local" storage is what this rank holds of a parameter: the whole tensor under ZeRO 0/1/2, the flat
ZeRO-3 partition (p.ds_tensor, zero-padded at the end of the last rank) under ZeRO-3. The anchor and the
reference copies are laid out the same way, so EMA updates and swaps are elementwise and local.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import torch


class Engine(Protocol):
    module: torch.nn.Module  # the Hugging Face model (its named_parameters carry the checkpoint names)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits [S, K, V] at the K sequence positions `keep` (HF logits_to_keep); a collective under ZeRO-3."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate d loss / d theta for one micro-batch (no scaling by the number of micro-batches)."""
        ...

    def step(self, lr: float) -> float:
        """Average gradients over ranks, clip, one optimizer step at lr, zero grads; returns the pre-clip norm."""
        ...

    def local(self, param: torch.nn.Parameter) -> torch.Tensor:
        """This rank's storage of param (see module docstring); writing to it changes the next forward."""
        ...

    def full_shape(self, param: torch.nn.Parameter) -> torch.Size: ...

    def gathered(self, params: list[torch.nn.Parameter]) -> AbstractContextManager[None]:
        """Inside, param.data is the full tensor on every rank (a collective under ZeRO-3)."""
        ...

    def gather_local(self, param: torch.nn.Parameter, local: torch.Tensor) -> torch.Tensor:
        """Full tensor (full_shape) from every rank's `local`-layout piece; a collective under ZeRO-3."""
        ...

    def scatter_full(self, param: torch.nn.Parameter, full: torch.Tensor) -> torch.Tensor:
        """This rank's `local`-layout piece of a full tensor."""
        ...

    def save_state(self, path: Path) -> None:
        """Everything needed to resume the policy and optimizer exactly (collective)."""
        ...

    def load_state(self, path: Path) -> None: ...
