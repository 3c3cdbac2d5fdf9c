"""What an actor needs to serve a LoRA policy: the adapter's tensor names and shapes, and its on-disk form.

With learner.lora the learner pushes only adapter tensors (lora_A [r, in], lora_B [out, r] per target layer,
named as peft saves them: `base_model.model.<layer>.lora_A.weight`). A vLLM actor keeps its base weights and
serves each push as a LoRA request: the tensors are written as a peft adapter directory (adapter_config.json +
adapter_model.safetensors) on a RAM-backed file system and loaded by vLLM's LoRA manager under a new adapter
id (vLLM 0.32 loads adapters from a path; its CPU backend runs LoRA through PunicaWrapperCPU).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from actors.weight_staging import ParamSpec

# vLLM's LoRAConfig.max_lora_rank accepts only these; an adapter of rank r needs the smallest one >= r.
_VLLM_MAX_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class AdapterSpec:
    """The learner's LoRA setting as the actors see it (cluster/ builds it from learner.lora)."""

    r: int
    alpha: float
    target_modules: tuple[str, ...]

    @property
    def vllm_max_rank(self) -> int:
        return next(m for m in _VLLM_MAX_RANKS if m >= self.r)

    def param_specs(self, base: Mapping[str, ParamSpec]) -> dict[str, ParamSpec]:
        """Name -> shape/dtype of every adapter tensor, from the base checkpoint's weight specs."""
        out: dict[str, ParamSpec] = {}
        for name, spec in base.items():
            layer, _, leaf = name.rpartition(".")
            if leaf != "weight" or layer.rpartition(".")[2] not in self.target_modules or len(spec.shape) != 2:
                continue
            rows, cols = spec.shape
            out[f"base_model.model.{layer}.lora_A.weight"] = ParamSpec((self.r, cols), spec.dtype)
            out[f"base_model.model.{layer}.lora_B.weight"] = ParamSpec((rows, self.r), spec.dtype)
        if not out:
            raise ValueError(
                f"LoRA target_modules {list(self.target_modules)} match no 2-D weight of the base "
                f"checkpoint (its weights look like {sorted(base)[:3]})"
            )
        return out

    def write(self, directory: Path, tensors: Mapping[str, torch.Tensor], base_model: str) -> None:
        """A peft adapter directory vLLM (and PeftModel.from_pretrained) can load."""
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            directory / "adapter_model.safetensors",
            metadata={"format": "pt"},
        )
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.r,
            "lora_alpha": self.alpha,
            "target_modules": list(self.target_modules),
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "use_rslora": False,
            "use_dora": False,
            "modules_to_save": None,
            "base_model_name_or_path": base_model,
        }
        (directory / "adapter_config.json").write_text(json.dumps(config, indent=1))


def adapter_root(role: str) -> Path:
    """A private directory for one sampler's pushed adapters: in RAM (/dev/shm) where there is one."""
    shm = Path("/dev/shm")
    parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=f"jbond-lora-{role}-", dir=parent))
