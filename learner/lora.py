"""LoRA policies through peft: which parameters train, what they are called on the wire and on disk.

The learner wraps its Hugging Face model with peft (`wrap`) before the engine is built, so DeepSpeed sees a
frozen base and trainable adapter tensors (lora_A [r, in], lora_B [out, r] per target layer) and the
optimizer holds state for the adapters only. `LoraLayout` indexes the wrapped module once:
- the adapters, under the names of peft's saved format (`base_model.model.<layer>.lora_A.weight`, the
  adapter name dropped): what is trained, EMA'd, pushed to the actors and written by `save_pretrained`;
- the base weights, under the base checkpoint's names (`model.layers.0.self_attn.q_proj.weight`), each with
  the adapter pair that modifies it: what a merged export is made of (bond.lora.merged_weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bond.config import require
from learner.config import LoraConfig

ADAPTER = "default"  # peft's adapter name; dropped from the saved names, as peft's save_pretrained does
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's file name: what PeftModel.from_pretrained and vLLM read


def wrap(module: torch.nn.Module, cfg: LoraConfig, base_model: str) -> torch.nn.Module:
    """`module` with LoRA adapters on cfg.target_modules (B = 0: the wrapped model computes exactly the base)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    found = {name.rpartition(".")[2] for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = sorted(set(cfg.target_modules) - found)
    require(
        not missing,
        "learner.lora.target_modules",
        f"{missing} are not linear layers of {type(module).__name__} (its linear layers: {sorted(found)})",
    )
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        target_modules=list(cfg.target_modules),
        lora_dropout=cfg.dropout,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    )
    wrapped = get_peft_model(module, peft_cfg, adapter_name=ADAPTER)
    wrapped.eval()  # get_peft_model leaves the mode alone today; the learner relies on eval (no dropout)
    return wrapped


def saved_name(peft_name: str) -> str:
    """peft parameter name -> its name in the saved adapter (as peft's get_peft_model_state_dict renames it)."""
    return peft_name.replace(f".{ADAPTER}.", ".")


def base_name(peft_name: str) -> str:
    """peft name of a base parameter -> the base checkpoint's name."""
    name = peft_name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


@dataclass(frozen=True)
class LoraLayout:
    """The wrapped module's parameters split into adapters and base, with the names each goes by."""

    adapter_names: list[str]  # saved-format names, in module order
    adapter_params: list[torch.nn.Parameter]
    base_names: list[str]  # base checkpoint names, in module order
    base_params: list[torch.nn.Parameter]
    pairs: dict[int, tuple[int, int]]  # base index -> (lora_A index, lora_B index) into the adapter lists
    scaling: float

    @classmethod
    def of(cls, module: torch.nn.Module, cfg: LoraConfig) -> LoraLayout:
        adapter_names, adapter_params, base_names, base_params = [], [], [], []
        for name, p in module.named_parameters():
            if p.requires_grad:
                adapter_names.append(saved_name(name))
                adapter_params.append(p)
            else:
                base_names.append(base_name(name))
                base_params.append(p)
        if not adapter_params:
            raise ValueError("learner.lora: peft added no trainable adapter")
        index = {n: i for i, n in enumerate(adapter_names)}
        pairs = {}
        for i, name in enumerate(base_names):
            layer = name.removesuffix(".weight")
            a, b = f"base_model.model.{layer}.lora_A.weight", f"base_model.model.{layer}.lora_B.weight"
            if a in index and b in index:
                pairs[i] = (index[a], index[b])
        if len(pairs) * 2 != len(adapter_params):
            raise ValueError(
                f"learner.lora: {len(adapter_params)} adapter tensors but {len(pairs)} adapted base "
                f"weights were found; unexpected peft layout"
            )
        return cls(adapter_names, adapter_params, base_names, base_params, pairs, cfg.scaling)


def write_adapter_config(module: torch.nn.Module, directory: Path) -> None:
    """adapter_config.json of peft's save_pretrained (the weights file is written beside it by the caller)."""
    module.peft_config[ADAPTER].save_pretrained(str(directory))
