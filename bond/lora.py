"""LoRA maths: the adapted weight W = W0 + (alpha / r) * B @ A, and what the EMA anchor of an adapter means.

A LoRA adapter on a linear layer with weight W0 [out, in] holds A [r, in] and B [out, r]; the layer computes
x @ (W0 + s * B @ A)^T with s = alpha / r (Hu et al. 2021; peft's `scaling`). B starts at zero, so an untrained
adapter is exactly the base model.

The anchor of a LoRA policy is the frozen base plus an EMA of the adapter tensors: A_anchor and B_anchor each
move by bond.anchor.ema_update_. Its weight delta is s * EMA(B) @ EMA(A), which is not EMA(s * B @ A) (the
product of averages is not the average of products); that is the price of an adapter-sized anchor (memory and
sync), the same choice as an EMA of any parameterisation. At eta = 1 both are the policy; at eta = 0 the anchor
keeps its start, the reference.
"""

from __future__ import annotations

import torch


def scaling(r: int, alpha: float) -> float:
    """s = alpha / r, the factor on B @ A (peft's default, non-rsLoRA scaling)."""
    if r < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {r}")
    return alpha / r


@torch.no_grad()
def merged_weight(base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """W0 + scale * B @ A as a new tensor in base's dtype, computed in at least fp32 from the given (unmodified) base.

    Callers keep the base: merging again from it after every adapter update never accumulates rounding.
    """
    if lora_a.dim() != 2 or lora_b.dim() != 2 or lora_b.shape[1] != lora_a.shape[0]:
        raise ValueError(f"LoRA shapes do not chain: B {tuple(lora_b.shape)} @ A {tuple(lora_a.shape)}")
    if tuple(base.shape) != (lora_b.shape[0], lora_a.shape[1]):
        raise ValueError(
            f"LoRA delta B @ A is {lora_b.shape[0]}x{lora_a.shape[1]}, the base weight is {tuple(base.shape)}"
        )
    wide = torch.promote_types(base.dtype, torch.float32)  # bf16 bases are merged in fp32, fp64 stays fp64
    delta = lora_b.to(wide) @ lora_a.to(wide)
    return (base.to(wide) + scale * delta).to(base.dtype)
