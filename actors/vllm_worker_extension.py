"""Methods grafted onto every vLLM worker (`LLM(worker_extension_cls=...)`) to load weights in place.

vLLM mixes this class into its worker, so `self` is the worker and `self.model_runner` its model runner;
`LLM.collective_rpc("load_checkpoint_weights", ...)` runs the method on every worker.

Why `reload_weights(..., is_checkpoint_format=True)` and not `model.load_weights`: the CPU backend
repacks linear layers after loading (their parameters are left with shape [0]), so a plain
`load_weights` fails there. The layer-wise reload restores each layer's checkpoint-format parameters
on the meta device, loads the Hugging Face tensors through the model's own weight loaders (which fuse
q/k/v and gate/up), re-runs the backend's processing (repacking) and copies the result into the
original storage. It is the same machinery vLLM's native weight-transfer engines use (nccl, ipc);
none of those engines runs on CPU, so on CPU the tensors come in the RPC itself.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import torch
from safetensors.torch import load as load_safetensors


class WeightReceiver:
    """Worker-side half of a weight push. Runs in the worker process (the caller's process on CPU)."""

    def load_checkpoint_weights(self, tensors: Mapping[str, torch.Tensor] | bytes) -> int:
        """Load Hugging Face-named tensors into the running model in place; returns how many were given.

        `tensors` is a dict when the engine runs in the caller's process (no copy on the way), or
        safetensors bytes when the worker is another process (collective_rpc turns tensors into lists).
        """
        if isinstance(tensors, bytes | bytearray | memoryview | io.BytesIO):
            tensors = load_safetensors(bytes(tensors))
        device = self.model_runner.device  # type: ignore[attr-defined]
        items = [(name, t.to(device, non_blocking=True)) for name, t in tensors.items()]
        # the worker's reload_weights sets the current vLLM config around the model runner's
        self.reload_weights(weights_iterator=iter(items), is_checkpoint_format=True)  # type: ignore[attr-defined]
        return len(items)

    def packed_modules(self) -> dict[str, list[str]]:
        """The model's fused layers, e.g. {"qkv_proj": ["q_proj", "k_proj", "v_proj"]} (see weight_staging)."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return {k: list(v) for k, v in getattr(model, "packed_modules_mapping", {}).items()}
