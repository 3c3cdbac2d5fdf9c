"""Methods grafted onto every vLLM worker (`LLM(worker_extension_cls=...)`) to load weights in place.

vLLM mixes this class into its worker, so `self` is the worker and `self.model_runner` its model runner;
`LLM.collective_rpc("load_checkpoint_weights", ...)` runs the method on every worker.

Why `reload_weights(..., is_checkpoint_format=True)` and not `model.load_weights`: the CPU backend
repacks linear layers after loading (their parameters are left with shape [0]), so a plain
`load_weights` fails there. The layer-wise reload restores each layer's checkpoint-format parameters
on the meta device, loads the Hugging Face tensors through the model's own weight loaders (which fuse
q/k/v and gate/up), re-runs the backend's processing (repacking) and copies the result into the
original storage. It is the same machinery vLLM's native weight-transfer engines use (nccl, ipc).

Two ways in: the tensors in the RPC itself (`load_checkpoint_weights`, the object-store path), or a
collective push (`join_weight_group` once, then `receive_weight_push` per push) where every worker of
the engine is a member of the role's weight group (actors/weight_broadcast.py) and receives the full
tensors; with tensor parallelism each worker's weight loaders cut out its own shard, so a TP engine
needs nothing else (not testable on CPU, where vLLM runs one worker).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors

from actors.lora_adapter import AdapterSpec
from actors.weight_broadcast import GroupAddress, WeightGroup
from actors.weight_staging import WeightStaging


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
        self._refresh_tied_head()
        return len(items)

    def _refresh_tied_head(self) -> None:
        """Re-process a tied lm_head after its embedding was reloaded.

        With tie_word_embeddings the lm_head shares the embedding's weight, but the model's load_weights
        skips `lm_head.weight`, so the layerwise reload never re-processes the head; on CPU its processing
        is a repacked GEMM copy of the weight (`cpu_linear`), which would keep serving the OLD embedding
        (measured: logprobs off by 0.1-0.2 nats after one step of a tied Qwen2). Elsewhere it is a no-op.
        """
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        head = getattr(model, "lm_head", None)
        weight = getattr(head, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.is_meta or not hasattr(head, "quant_method"):
            return
        tied = any(m is not head and isinstance(getattr(m, "weight", None), torch.Tensor)
                   and m.weight.data_ptr() == weight.data_ptr() for m in model.modules())
        if tied:
            head.quant_method.process_weights_after_loading(head)

    def join_weight_group(self, address: GroupAddress, rank_offset: int) -> None:
        """Become rank `rank_offset + this worker's rank` of a role's weight group (blocks until all joined)."""
        device = self.model_runner.device  # type: ignore[attr-defined]
        self._weight_group = WeightGroup(address, rank_offset + self.rank, device)  # type: ignore[attr-defined]

    def receive_weight_push(self, staging: WeightStaging,
                            adapter: tuple[AdapterSpec, str, str] | None = None) -> int:
        """Receive one push the learner broadcasts now; validated by `staging`, loaded after its last bucket.

        In process, `staging` is the sampler's own (its version and host copy advance here); a worker in
        another process gets a copy without the host weights. Returns the version now received.
        adapter = (spec, directory, base model): a LoRA push; worker 0 writes it as a peft adapter directory,
        which the sampler then serves as a LoRA request (the base weights are not touched).
        """
        group = getattr(self, "_weight_group", None)
        if group is None:
            raise RuntimeError("receive_weight_push before join_weight_group")
        if adapter is None:
            apply = self.load_checkpoint_weights
        else:
            spec, directory, base_model = adapter

            def apply(tensors: Mapping[str, torch.Tensor]) -> None:
                if self.rank == 0:  # type: ignore[attr-defined]
                    spec.write(Path(directory), tensors, base_model)
        version, _ = group.receive_push(staging, apply)
        return version

    def packed_modules(self) -> dict[str, list[str]]:
        """The model's fused layers, e.g. {"qkv_proj": ["q_proj", "k_proj", "v_proj"]} (see weight_staging)."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return {k: list(v) for k, v in getattr(model, "packed_modules_mapping", {}).items()}
