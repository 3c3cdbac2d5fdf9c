"""zero_stage 0: plain torch data parallelism (all-reduce of gradients); the reference for the DeepSpeed engine."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, load_model, save_file, save_model

from bond.config import BondConfig
from learner.sequences import hf_forward


def adamw(module: torch.nn.Module, bond: BondConfig) -> torch.optim.AdamW:
    """The optimizer of both engines: AdamW over the parameters that train (with LoRA: the adapters)."""
    return torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad],
        lr=bond.lr,
        betas=(bond.adam_beta1, bond.adam_beta2),
        eps=bond.adam_eps,
        weight_decay=bond.weight_decay,
    )


class TorchEngine:
    """Every rank holds the whole model and optimizer; gradients are averaged by all_reduce before the step."""

    def __init__(self, module: torch.nn.Module, bond: BondConfig, rank: int, world_size: int) -> None:
        self.module, self.rank, self.world_size = module, rank, world_size
        trained = {n: p for n, p in module.named_parameters() if p.requires_grad}
        # LoRA: only the adapters train; None when every parameter does (the checkpoint then holds the whole model)
        self._trained = trained if len(trained) < len(list(module.parameters())) else None
        self.max_grad_norm = bond.max_grad_norm
        self.optimizer = adamw(module, bond)
        if world_size > 1:  # start identical on every rank, whatever each rank loaded
            for p in module.parameters():
                dist.broadcast(p.data, src=0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return hf_forward(self.module, input_ids, attention_mask, keep)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, lr: float) -> float:
        params = [p for p in self.module.parameters() if p.grad is not None]
        if self.world_size > 1:
            for p in params:
                dist.all_reduce(p.grad)
                p.grad.div_(self.world_size)
        # max_norm=inf measures the norm without clipping (clip_grad_norm_ returns the pre-clip norm).
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm if self.max_grad_norm > 0 else math.inf)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def local(self, param: torch.nn.Parameter) -> torch.Tensor:
        return param.data

    def full_shape(self, param: torch.nn.Parameter) -> torch.Size:
        return param.shape

    def gathered(self, params: list[torch.nn.Parameter]) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def gather_local(self, param: torch.nn.Parameter, local: torch.Tensor) -> torch.Tensor:
        return local

    def scatter_full(self, param: torch.nn.Parameter, full: torch.Tensor) -> torch.Tensor:
        return full

    def save_state(self, path: Path) -> None:
        if self.rank == 0:  # every rank holds the same state
            path.mkdir(parents=True, exist_ok=True)
            if self._trained is None:
                save_model(self.module, str(path / "model.safetensors"))  # handles tied weights
            else:  # a frozen base (LoRA) is the model the learner was built from: not saved again
                save_file({n: p.detach().contiguous() for n, p in self._trained.items()}, path / "model.safetensors")
            torch.save(self.optimizer.state_dict(), path / "optimizer.pt")

    def load_state(self, path: Path) -> None:
        if self._trained is None:
            load_model(self.module, str(path / "model.safetensors"), device=str(_device(self.module)))
        else:
            saved = load_file(path / "model.safetensors", device=str(_device(self.module)))
            if saved.keys() != self._trained.keys():
                raise ValueError(
                    f"{path}: trained parameters differ from this model's (a checkpoint of another "
                    f"learner.lora setting?)"
                )
            with torch.no_grad():
                for name, p in self._trained.items():
                    p.copy_(saved[name])
        self.optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", weights_only=True, map_location=_device(self.module))
        )


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
