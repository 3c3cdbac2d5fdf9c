"""LearnerConfig: how the learner runs (engine, precision, batching, export), apart from the maths in BondConfig."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from bond.config import check_bounds, check_types, require


class Dtype(enum.StrEnum):
    FP32 = "fp32"  # CPU and reference runs: no loss scaling, bit-comparable across engines
    BF16 = "bf16"  # GPU: DeepSpeed bf16 mixed precision (fp32 master weights in the optimizer)


class Device(enum.StrEnum):
    CPU = "cpu"  # gloo process group
    CUDA = "cuda"  # NCCL process group, one GPU per rank


@dataclass(frozen=True)
class LoraConfig:
    """Train LoRA adapters (peft) instead of every weight: the base stays frozen, the optimizer, the EMA anchor,
    checkpoints and weight pushes are adapter-sized, and the actors serve the base plus the pushed adapter."""

    r: int = 8
    """Adapter rank (the inner dimension of B @ A); at most 512 (vLLM's largest LoRA rank)."""
    alpha: float = 16.0
    """Scaling numerator: the layer adds (alpha / r) * B @ A to its frozen weight."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Names (last path component) of the linear layers that get adapters, as in peft's LoraConfig; the
    default is every attention and MLP projection of Llama/Qwen/Mistral-style models."""
    dropout: float = 0.0
    """Dropout on the adapter input while training. Must be 0 here: log pi(y) must be a deterministic function
    of the weights (the learner runs in eval mode, docs/learner.md), so a non-zero value is refused."""

    def __post_init__(self) -> None:
        check_types(self)
        require(1 <= self.r <= 512, "r", f"must be in [1, 512], got {self.r}")
        require(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        require(
            isinstance(self.target_modules, tuple)
            and len(self.target_modules) > 0
            and all(isinstance(m, str) and m for m in self.target_modules),
            "target_modules",
            f"expected a non-empty list of module names, got {self.target_modules!r}",
        )
        require(
            self.dropout == 0.0,
            "dropout",
            f"must be 0 (log pi must be deterministic in the weights; the learner never trains with dropout), "
            f"got {self.dropout}",
        )

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    @property
    def layout(self) -> str:
        """What a checkpoint's adapter and optimizer state are tied to (recorded in its manifest)."""
        return f"r={self.r} alpha={self.alpha:g} target_modules={','.join(self.target_modules)}"


@dataclass(frozen=True)
class LearnerConfig:
    """Per-replica knobs of the learner. The global batch (prompts_per_step) lives in BondConfig."""

    zero_stage: int = 3
    """0 = plain torch (data parallel by all-reduce, the reference); 1/2/3 = DeepSpeed ZeRO stage."""
    micro_batch_prompts: int = 8
    """Prompts per forward/backward on one rank; the rank's share is split into micro-batches (gradient
    accumulation), so the update is the same for any value that divides the share."""
    dtype: Dtype = Dtype.FP32
    """Precision of the model weights and of exported weights (bf16 needs device cuda)."""
    device: Device = Device.CPU
    """Where the learner computes."""
    bucket_bytes: int = 1 << 30
    """Largest weight-export bucket (bytes, in the export dtype). Under ZeRO-3 this is also the most that is
    ever gathered at once; it must hold the largest single parameter (checked at start-up)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them (HF
    gradient_checkpointing_enable, non-reentrant): activation memory of one layer instead of all, for about
    one more forward of compute. The update is the same (tested)."""
    reference_dtype: Dtype = Dtype.FP32
    """Precision of the no-grad forward that gives log pi_ref(y) (J-BOND: the kl_ref statistic; REINFORCE: the KL
    penalty). bf16: a separate bf16 copy of pi_ref (+2 bytes/parameter) computes it in bf16, faster on a CPU with
    native bf16 and within 0.06 nats per token of fp32 (tested; the figures: docs/learner.md). ZeRO stages 0-2
    only (under ZeRO-3 no rank holds pi_ref whole). The anchor's log-probs, which enter the J-BOND return, stay in
    the model dtype."""
    seed: ClassVar[int] = 0
    """torch seed of every rank, fixed (not a setting): nothing in a step is random; it draws LoRA's first adapters."""
    timeout_s: int = 1800
    """Process-group timeout: how long a rank waits for the others in a collective before failing."""
    lora: LoraConfig | None = None
    """null: full fine-tuning. A section ({r, alpha, target_modules}): train LoRA adapters only, and
    push only adapter weights to the actors (README, LoRA)."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        check_bounds(self, {">= 1": "micro_batch_prompts bucket_bytes timeout_s"})
        require(
            self.reference_dtype is Dtype.FP32 or self.zero_stage != 3,
            "reference_dtype",
            "bf16 needs zero_stage 0, 1 or 2 (under ZeRO-3 no rank holds the reference whole)",
        )
        require(
            not (self.dtype is Dtype.BF16 and self.device is Device.CPU),
            "dtype",
            "bf16 is for device cuda; use fp32 on cpu (DeepSpeed's CPU bf16 path is untested here)",
        )


def check_split(prompts_per_step: int, ranks: int, micro_batch_prompts: int) -> None:
    """The global batch splits evenly over the learner ranks, and each rank's share into micro-batches (checked at
    start-up by cluster/config/job.py, and by each Learner)."""
    require(
        prompts_per_step % ranks == 0,
        "algorithm.prompts_per_step",
        f"{prompts_per_step} prompts do not split evenly over {ranks} learner ranks",
    )
    require(
        prompts_per_step // ranks % micro_batch_prompts == 0,
        "learner.micro_batch_prompts",
        f"{micro_batch_prompts} does not divide each learner rank's share of {prompts_per_step // ranks} prompts "
        "(algorithm.prompts_per_step / resources.learner_ranks)",
    )
