"""How a push reaches a vLLM engine, checked first by WeightStaging: full weights written into its workers in
place (actors/vllm_worker_extension.py), or, for a LoRA policy, an adapter served on top of the base weights.

Both kinds take a push two ways: `load` (tensors handed over, the object-store path) and `receive` (every engine
worker takes the learner's broadcast from the role's weight group, actors/weight_broadcast.py).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save as save_safetensors

from actors.checkpoint_files import checkpoint_tensors
from actors.lora_adapter import AdapterSpec, adapter_root
from actors.vllm_engine import engine_on_cpu
from actors.weight_ema import AnchorEma
from actors.weight_staging import ParamSpec, WeightStaging
from bond.records import Role, WeightUpdate

if TYPE_CHECKING:
    from vllm import LLM


class FullWeights:
    """Every weight of the model, loaded into the engine's workers in place (the engine is never rebuilt).

    keep_host_copy, anchor_ema and plain_weights are VllmSampler's (it documents them); in_process: the engine's
    worker lives in this process, so tensors are handed over as they are, not as safetensors bytes."""

    lora_request = None  # the base model is served, never an adapter

    def __init__(
        self,
        llm: LLM,
        directory: Path,
        specs: Mapping[str, ParamSpec],
        role: Role,
        version: int,
        *,
        dtype: torch.dtype,
        keep_host_copy: bool,
        anchor_ema: float | None,
        plain_weights: bool,
        in_process: bool,
    ) -> None:
        self.llm, self.dtype, self.in_process = llm, dtype, in_process
        plain = plain_weights and engine_on_cpu() and dtype == torch.float32
        loaded = checkpoint_tensors(directory, dtype) if keep_host_copy or anchor_ema is not None or plain else None
        if plain:
            llm.collective_rpc("serve_plain_weights", args=(self.payload(loaded),))
        host = loaded if keep_host_copy or anchor_ema is not None else None
        self.ema = self.follow = None
        # in process, plain fp32 weights: the EMA moves the engine's parameters themselves (no copy of the model
        # kept beside them, none applied after each step)
        served = llm.collective_rpc("parameter_views")[0] if anchor_ema is not None and plain and in_process else None
        self.ema_in_engine = served is not None
        if anchor_ema is not None:
            initial = served if self.ema_in_engine else host
            self.ema = AnchorEma(initial, anchor_ema, version, in_place=self.ema_in_engine)
            self.follow = WeightStaging(specs, Role.POLICY, version)  # checks the policy pushes it follows
            # fp32 engine: the EMA's tensors are the served ones, so they double as the host copy (no extra RAM)
            host = self.ema.tensors if dtype == torch.float32 else host if keep_host_copy else None
        # Plain weights take any subset in place (each tensor copied into its rows of a fused layer): nothing to
        # complete from a host copy, so none is kept or updated. Packed layers are re-processed whole.
        fused = {} if plain else llm.collective_rpc("packed_modules")[0]
        self.staging = WeightStaging(specs, role, version, fused=fused, host_weights=None if plain else host)

    def load(self, update: WeightUpdate) -> None:
        if self.ema is not None and update.role is Role.POLICY:
            self._follow_policy(update)
            return
        tensors = self.staging.stage(update)
        if tensors is None:
            return
        if self.ema is not None and tensors.keys() != self.ema.tensors.keys():
            raise ValueError("an anchor push to an anchor actor that runs the EMA must carry every tensor")
        self.apply(tensors, update.version)
        if self.ema is not None:
            self.ema.reset(tensors, update.version)
            self.follow.applied({}, update.version)

    def _follow_policy(self, update: WeightUpdate) -> None:
        """A bucket of a policy push: once the push is whole, the anchor moves toward it and is served."""
        policy = self.follow.stage(update)
        if policy is None:
            return
        anchor = self.ema.follow(policy, update.version)
        self.follow.applied({}, update.version)
        if anchor is not None and self.ema_in_engine:  # the EMA step moved the served weights: nothing to load
            self.llm.collective_rpc("repack_plain_weights")
            self.llm.reset_prefix_cache()
            self.staging.applied({}, update.version)
        elif anchor is not None:  # None: the version already followed (a retried push)
            # fp32 engine: these ARE the EMA tensors (no copy); the policy push was validated, and an EMA of
            # finite tensors is finite
            self.apply({n: t.to(self.dtype) for n, t in anchor.items()}, update.version)

    def payload(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | bytes:
        """Tensors as the worker takes them: the tensors themselves in process, safetensors bytes across processes."""
        payload = {k: v.contiguous() for k, v in tensors.items()}
        return payload if self.in_process else save_safetensors({k: v.cpu() for k, v in payload.items()})

    def apply(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        payload = self.payload(tensors)
        with _quiet_partial_reload():
            self.llm.collective_rpc("load_checkpoint_weights", args=(payload,))
        # Cached prefixes hold K/V computed with the old weights; reusing them silently corrupts samples.
        self.llm.reset_prefix_cache()
        self.staging.applied(tensors, version)

    def receive(self, staging: WeightStaging) -> int:
        if self.ema is not None:  # a broadcast anchor would leave the EMA copy behind, silently
            raise ValueError(
                "this anchor actor runs the anchor EMA itself: push to it with load_weights "
                "(the object store), not the collective group"
            )
        with _quiet_partial_reload():
            return self.llm.collective_rpc("receive_weight_push", args=(staging,))[0]

    def close(self) -> None:
        pass


class AdapterWeights:
    """A LoRA policy: the engine keeps the base weights and serves base + the latest pushed adapter as a vLLM LoRA
    request; a push carries only the adapter, written as a peft directory in RAM (actors/lora_adapter.py)."""

    def __init__(
        self, llm: LLM, spec: AdapterSpec, model: str, specs: Mapping[str, ParamSpec], role: Role, version: int
    ) -> None:
        self.llm, self.spec, self.model, self.role = llm, spec, model, role
        # adapter tensors only, never fused, so no host copy of the base is needed
        self.staging = WeightStaging(spec.param_specs(specs), role, version)
        self.lora_request = None  # None: the base model, which is what an untrained adapter (B = 0) computes
        self._root = adapter_root(role.value)
        self._pushes = 0

    def load(self, update: WeightUpdate) -> None:
        tensors = self.staging.stage(update)
        if tensors is None:
            return
        directory = self._next_dir()
        self.spec.write(directory, tensors, self.model)
        self._serve(directory, update.version)
        self.staging.applied(tensors, update.version)

    def receive(self, staging: WeightStaging) -> int:
        """The workers write the received adapter; the engine then serves it."""
        directory = self._next_dir()
        adapter = (self.spec, str(directory), self.model)
        version = self.llm.collective_rpc("receive_weight_push", args=(staging, adapter))[0]
        self._serve(directory, version)
        return version

    def _next_dir(self) -> Path:
        self._pushes += 1
        return self._root / f"push-{self._pushes}"

    def _serve(self, directory: Path, version: int) -> None:
        """Serve base + the adapter in `directory` from now on: loaded now (a failure surfaces in the push, not in
        the next generate) under a new id, so no cached state of the previous adapter can be reused."""
        from vllm.lora.request import LoRARequest

        request = LoRARequest(f"{self.role.value}-v{version}", self._pushes, str(directory))
        old = self.lora_request
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM did not load the pushed adapter (version {version}) from {directory}")
        self.lora_request = request
        self.llm.reset_prefix_cache()  # vLLM keys cached blocks by adapter too; reset as after every push anyway
        if old is not None:
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)


class _quiet_partial_reload:
    """vLLM warns for every layer a partial update leaves alone ("Failed to load weights"); that is intended here."""

    _names = ("vllm.model_executor.model_loader.reload.layerwise", "vllm.model_executor.model_loader.reload.inplace")

    def __enter__(self) -> None:
        self._levels = [(lg, lg.level) for lg in map(logging.getLogger, self._names)]
        for lg, _ in self._levels:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc) -> None:
        for lg, level in self._levels:
            lg.setLevel(level)
