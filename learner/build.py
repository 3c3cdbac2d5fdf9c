"""Building the learner's model and engine: the policy module (partitioned from the start under ZeRO-3), the engine
that trains it, the parameters it trains (all of them, or LoRA's adapters) and the bf16 copy of the reference."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bond.config import BondConfig, require
from learner import lora, safetensors_shards
from learner.config import Dtype, LearnerConfig
from learner.engine import Engine
from learner.torch_engine import TorchEngine
from learner.weight_export import SIDE_FILES


def local_model_dir(model: str | Path) -> Path:
    """A model directory as given, or a hub id's snapshot (its config, weights and tokenizer files)."""
    if Path(model).is_dir():
        return Path(model).resolve()
    from huggingface_hub import snapshot_download  # only for hub ids

    return Path(snapshot_download(str(model), allow_patterns=["*.json", "*.safetensors", *SIDE_FILES]))


def policy_engine(
    model_dir: Path, reference_id: str, bond: BondConfig, config: LearnerConfig, rank: int, world_size: int
) -> tuple[Engine, int]:
    """The engine training the policy's module (LoRA-wrapped where configured, the adapter naming reference_id as
    its base), and the module's pad token id."""
    dtype = torch.bfloat16 if config.dtype is Dtype.BF16 else torch.float32
    micro_batches = bond.prompts_per_step // world_size // config.micro_batch_prompts
    if config.zero_stage == 3:  # built partitioned: no rank ever holds the whole model (deepspeed_engine.py)
        from learner.deepspeed_engine import build_partitioned, deepspeed_config

        module = build_partitioned(model_dir, dtype, deepspeed_config(bond, config, world_size, micro_batches))
    else:
        device = torch.device("cuda", torch.cuda.current_device()) if config.device.value == "cuda" else "cpu"
        module = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    module.eval()  # no dropout: log pi must be a deterministic function of the weights
    if config.gradient_checkpointing:
        _enable_gradient_checkpointing(module)
    pad_id = module.config.pad_token_id if module.config.pad_token_id is not None else 0
    if config.lora is not None:  # the base freezes; only the adapters train (learner/lora.py)
        module = lora.wrap(module, config.lora, reference_id)
    if config.zero_stage == 0:
        return TorchEngine(module, bond, rank, world_size), pad_id
    from learner.deepspeed_engine import DeepSpeedEngine  # zero_stage 0 never imports deepspeed

    return DeepSpeedEngine(module, bond, config, world_size, micro_batches), pad_id


def trained(
    engine: Engine, config: LearnerConfig, model_dir: Path
) -> tuple[lora.LoraLayout | None, list[str], list[torch.nn.Parameter]]:
    """The LoRA layout (None without LoRA), and the names and parameters the anchor, the reference, weight pushes
    and the optimizer state cover: with LoRA the adapters (the reference is the initial adapter, B = 0: exactly the
    base model), else every parameter under the checkpoint's names."""
    if config.lora is not None:
        layout = lora.LoraLayout.of(engine.module, config.lora)
        return layout, layout.adapter_names, layout.adapter_params
    names = [n for n, _ in engine.module.named_parameters()]
    check_names(names, model_dir)
    return None, names, [p for _, p in engine.module.named_parameters()]


def reference_bf16(model_dir: Path, config: LearnerConfig, dtype: torch.dtype, device: torch.device):
    """bf16 scoring of pi_ref gets its own bf16 module, since the policy's storage would widen swapped-in bf16
    back; None where the reference is scored in the model dtype."""
    if config.reference_dtype is not Dtype.BF16 or dtype is torch.bfloat16:
        return None
    module = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    return module.to(device).eval().requires_grad_(False)


def check_names(names: list[str], model_dir: Path) -> None:
    """Exported names must be the checkpoint's, or a vLLM worker cannot load them (also a start-up check)."""
    try:
        on_disk = set(safetensors_shards.file_of_each(model_dir))
    except FileNotFoundError:
        return  # not a safetensors checkpoint (e.g. .bin): nothing to compare against
    ours = set(names)
    require(
        ours <= on_disk,
        "models.policy",
        f"parameter names differ from the checkpoint in {model_dir}: "
        f"not on disk {sorted(ours - on_disk)[:5]}, only on disk {sorted(on_disk - ours)[:5]}",
    )


def checkpointable_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers HF gradient checkpointing recomputes (also a start-up check, on a weightless module)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    name = type(module).__name__
    require(module.supports_gradient_checkpointing, "learner.gradient_checkpointing", f"{name} does not support it")
    layers = [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]
    require(bool(layers), "learner.gradient_checkpointing", f"{name} has no checkpointable layers")
    return layers


def _enable_gradient_checkpointing(module: torch.nn.Module) -> None:
    """HF checkpointing, but only `self.training` of the decoder layers turned on: HF checkpoints a layer only
    in training mode, and the layers' submodules (attention, MLP: where dropout lives) stay in eval mode."""
    layers = checkpointable_layers(module)
    module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    module.eval()  # gradient_checkpointing_enable may have switched the module to train mode
    for layer in layers:
        layer.training = True
