"""zero_stage 1/2/3: DeepSpeed. The ONE module that imports deepspeed.

Adam is torch AdamW (weight decay from BondConfig) admitted with zero_allow_untested_optimizer; the
learning rate is set on it before every optimizer step from BondConfig.lr_at (a pure function of the
step count, so the step count is the whole scheduler state). bf16 mixed precision on GPU, fp32 on CPU.
Gradient accumulation is DeepSpeed's own: one `backward` per micro-batch, and the optimizer steps on the
last one. ZeRO-3 partitions every parameter (stage3_param_persistence_threshold = 0): the anchor and
reference copies mirror the partitions, which would not hold for persistent (unpartitioned) ones.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from bond.config import BondConfig
from learner.config import Dtype, LearnerConfig
from learner.sequences import hf_forward
from learner.torch_engine import adamw

_TAG = "zero"  # DeepSpeed checkpoint tag: one subfolder per checkpoint directory


def _safe_globals() -> list:
    """The only non-tensor classes DeepSpeed's optimizer and model state files hold (found by loading real
    ZeRO 1/2/3 checkpoints with weights_only=True)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _load_weights_only(path: str, map_location=None):
    """DeepSpeed's checkpoint engine unpickles (torch.load weights_only=False): a checkpoint directory from
    elsewhere could run code on --resume. Same files, read with the weights-only unpickler."""
    with torch.serialization.safe_globals(_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


_DEEPSPEED_REDUCE_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size, in elements


def deepspeed_config(
    bond: BondConfig, cfg: LearnerConfig, world_size: int, micro_batches: int, trainable_elements: int | None = None
) -> dict:
    """`trainable_elements` (the optimizer's parameter count) caps the gradient reduce bucket: DeepSpeed
    allocates that bucket whole up front (5e8 elements by default: 1.9 GiB in fp32, per engine, whatever the
    model's size), and a bucket that holds every gradient already reduces in one go."""
    zero: dict = {"stage": cfg.zero_stage}
    if trainable_elements is not None:
        zero["reduce_bucket_size"] = max(1, min(_DEEPSPEED_REDUCE_BUCKET, trainable_elements))
    if cfg.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = 0
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_prompts,  # in prompts; bookkeeping only
        "gradient_accumulation_steps": micro_batches,
        "train_batch_size": cfg.micro_batch_prompts * micro_batches * world_size,
        "gradient_clipping": bond.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.dtype is Dtype.BF16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def build_partitioned(model_dir: Path, dtype: torch.dtype, config: dict) -> torch.nn.Module:
    """ZeRO-3 model construction where no rank ever holds the whole model.

    The module is built from its config under `deepspeed.zero.Init` (every parameter is allocated as this
    rank's partition only), then each rank fills its partitions from the safetensors checkpoint one tensor at
    a time (peak: the model's partitions + its largest single tensor). No gather, no broadcast: every rank reads
    the (shared) files itself. transformers' own zero.Init path (HfDeepSpeedConfig) is the same construction
    through process-global state; this one is explicit. A LoRA policy (learner/lora.py) is wrapped by peft
    afterwards: its small adapter layers are created whole and partitioned by deepspeed.initialize.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from learner import safetensors_shards

    deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False, verbose=False)
    hf_config = AutoConfig.from_pretrained(model_dir)
    # No random init (every value is overwritten below, and HF's init cannot index empty partitions); the
    # skipped init_weights is also what ties lm_head to the embedding, hence tie_weights().
    # The parameters' dtype comes from the config's bf16 flag, not Init's dtype argument: DeepSpeed 0.19.8 drops that
    # argument on a CPU without fp16 kernels (AMD EPYC here) and builds bf16 partitions, so an fp32 learner's ZeRO-3
    # policy would differ from its checkpoint by bf16 rounding.
    with deepspeed.zero.Init(config_dict_or_path=config), no_init_weights():
        module = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    module.tie_weights()
    params = dict(module.named_parameters())  # tied weights appear once (lm_head IS embed_tokens)
    rank = dist.get_rank()
    with torch.no_grad():
        for name, full in safetensors_shards.read(model_dir, params):
            p = params[name]
            if tuple(full.shape) != tuple(p.ds_shape):
                raise ValueError(
                    f"{model_dir}: {name} has shape {tuple(full.shape)}, the model's config says {tuple(p.ds_shape)}"
                )
            p.ds_tensor.data.copy_(_partition(p, full.to(dtype), rank))
    return module


def _partition(param: torch.nn.Parameter, full: torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's flat ZeRO-3 piece of `full`: ceil(numel / world) elements, the last rank's zero-padded."""
    size = param.ds_tensor.ds_numel
    piece = full.reshape(-1)[rank * size : (rank + 1) * size]
    return torch.cat([piece, piece.new_zeros(size - piece.numel())]) if piece.numel() < size else piece


def _forget_destroyed_groups() -> None:
    """DeepSpeed caches its world/data-parallel groups at module level. If the default process group was torn
    down since (an in-process vLLM engine's shutdown destroys it; learner.rendezvous then builds a new one), the
    cached groups are no longer registered and ZeRO-3 fails with "Group ... is not registered": drop them, as
    DeepSpeed itself does when it destroys the world."""
    from deepspeed.utils import groups

    cached = groups._WORLD_GROUP
    if cached is not None and cached not in dist.distributed_c10d._world.pg_map:
        groups._release_process_group_references(None)


class DeepSpeedEngine:
    def __init__(
        self, module: torch.nn.Module, bond: BondConfig, cfg: LearnerConfig, world_size: int, micro_batches: int
    ) -> None:
        _forget_destroyed_groups()
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False, verbose=False)
        self.zero_stage, self.micro_batches, self.world_size = cfg.zero_stage, micro_batches, world_size
        self.rank = dist.get_rank()
        # A LoRA module's base is frozen: the optimizer (and its ZeRO partitions) hold the adapters only,
        # and checkpoints leave the frozen base out (it is the model the learner was built from).
        self._frozen = any(not p.requires_grad for p in module.parameters())
        self.torch_optimizer = adamw(module, bond)
        trainable = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad)
        config = deepspeed_config(bond, cfg, world_size, micro_batches, trainable_elements=trainable)
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=self.torch_optimizer, config=config, dist_init_required=False
        )
        self.module = self.engine.module
        self.engine.checkpoint_engine.load = _load_weights_only
        self._pending = 0  # backward calls since the last optimizer step

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return hf_forward(self.engine, input_ids, attention_mask, keep)

    def backward(self, loss: torch.Tensor) -> None:
        if self._pending == self.micro_batches:
            raise RuntimeError(f"backward called more than {self.micro_batches} times before step()")
        # The caller's loss is already the micro-batch's share of the rank's loss: no division by GAS.
        self.engine.backward(loss, scale_wrt_gas=False)
        self._pending += 1
        if self._pending < self.micro_batches:
            self.engine.step()  # not a boundary: DeepSpeed only counts the micro-step

    def step(self, lr: float) -> float:
        if self._pending != self.micro_batches:
            raise RuntimeError(f"step() after {self._pending} of {self.micro_batches} micro-batch backward calls")
        for group in self.torch_optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()
        self._pending = 0
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def local(self, param: torch.nn.Parameter) -> torch.Tensor:
        return param.ds_tensor.data if self.zero_stage == 3 else param.data

    def full_shape(self, param: torch.nn.Parameter) -> torch.Size:
        return param.ds_shape if self.zero_stage == 3 else param.shape

    def gathered(self, params: list[torch.nn.Parameter]) -> contextlib.AbstractContextManager[None]:
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def gather_local(self, param: torch.nn.Parameter, local: torch.Tensor) -> torch.Tensor:
        if self.zero_stage != 3:
            return local
        if self.world_size == 1:
            flat = local
        else:
            pieces = [torch.empty_like(local) for _ in range(self.world_size)]
            dist.all_gather(pieces, local.contiguous())
            flat = torch.cat(pieces)
        return flat[: param.ds_numel].view(param.ds_shape)

    def scatter_full(self, param: torch.nn.Parameter, full: torch.Tensor) -> torch.Tensor:
        if self.zero_stage != 3:
            return full
        return _partition(param, full, self.rank)

    def save_state(self, path: Path) -> None:
        self.engine.save_checkpoint(str(path), tag=_TAG, save_latest=False, exclude_frozen_parameters=self._frozen)

    def load_state(self, path: Path) -> None:
        load_path, _ = self.engine.load_checkpoint(
            str(path),
            tag=_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
            load_module_strict=not self._frozen,
        )  # without the frozen base, the saved module state is partial
        if load_path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {path}/{_TAG}")
