"""The job's one typed, frozen, validated configuration: YAML/JSON and CLI overrides map onto it.

Global knobs (steps, prompts_per_step, algorithm) are kept apart from per-replica ones (resources: how
many actors/ranks/replicas and the CPUs/GPUs of each). A bad value fails at start-up naming the field.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from actors.sampling import SamplingSettings
from bond.config import Algorithm, BondConfig, check_types, require
from cluster.prompts import PromptSource
from learner.config import Dtype, LearnerConfig
from reward_service.spec import RewardSpec


class Mode(enum.StrEnum):
    SYNC = "sync"  # on-policy, exactly Algorithm 2: sample, score, learn, push weights, repeat
    PIPELINED = "pipelined"  # actors sample step t+1 while the learner trains on step t (staleness <= max)


class SamplerBackend(enum.StrEnum):
    VLLM = "vllm"
    HF = "hf"  # transformers.generate: slow, for machines where vLLM cannot run


@dataclass(frozen=True)
class ModelsConfig:
    policy: str = "artifacts/tiny/policy"
    """Starting policy pi_ref: a local HF directory or a hub id. The anchor starts equal to it. Its tokenizer
    (and chat template) renders the prompts."""
    sampler_backend: SamplerBackend = SamplerBackend.VLLM
    build_tiny: bool = True
    """If the policy/reward paths lie under artifacts/tiny and are missing, build the tiny models first."""

    def __post_init__(self) -> None:
        check_types(self)
        require(bool(self.policy), "policy", "is empty")


# The learner pushes weights in its own precision; the engines must serve exactly that dtype.
_LEARNER_TO_ENGINE_DTYPE = {Dtype.FP32: "float32", Dtype.BF16: "bfloat16"}


@dataclass(frozen=True)
class EngineConfig:
    """The actors' inference engine: vllm.LLM arguments of the same names (the hf backend reads dtype and
    max_model_len only). Per actor; the resources section says how many actors and GPUs."""

    dtype: str = "float32"
    """Weights dtype of every engine: float32 | bfloat16 | float16. Must be what the learner pushes
    (learner.dtype fp32 -> float32, bf16 -> bfloat16); a mismatch is refused at start-up."""
    gpu_memory_utilization: float = 0.5
    """Fraction of each GPU vLLM may take for weights + KV cache (GPU only; the CPU KV cache is 1 GiB)."""
    tensor_parallel_size: int = 1
    """GPUs one engine is sharded over; each actor then reserves tensor_parallel_size GPUs (GPU only)."""
    max_model_len: int | None = None
    """Context length (prompt + completion tokens) the engine serves; default: the model's own."""
    max_num_seqs: int = 256
    """Most sequences an engine runs in one batch."""
    enforce_eager: bool = True
    """No CUDA graphs / torch.compile: fast start-up. Set false on GPU for faster decoding."""
    enable_prefix_caching: bool = True
    """Reuse the K/V of shared prompt prefixes (reset after every weight push)."""
    enable_sleep_mode: bool = False
    """GPU, sync mode: the engines free their GPU memory (weights offloaded, KV cache dropped) while the
    learner trains, and take it back before the weight push: for actors sharing GPUs with the learner."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self.dtype in ("float32", "bfloat16", "float16"), "dtype",
                f"must be float32, bfloat16 or float16, got {self.dtype!r}")
        require(0.0 < self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization",
                f"must be in (0, 1], got {self.gpu_memory_utilization}")
        require(self.tensor_parallel_size >= 1, "tensor_parallel_size",
                f"must be >= 1, got {self.tensor_parallel_size}")
        require(self.max_model_len is None or (isinstance(self.max_model_len, int)
                                               and not isinstance(self.max_model_len, bool)
                                               and self.max_model_len >= 2), "max_model_len",
                f"must be unset or an integer >= 2, got {self.max_model_len!r}")
        require(self.max_num_seqs >= 1, "max_num_seqs", f"must be >= 1, got {self.max_num_seqs}")

    def vllm_kwargs(self) -> dict:
        """Keyword arguments of actors.vllm_sampler.VllmSampler (and vllm.LLM)."""
        return {"dtype": self.dtype, "gpu_memory_utilization": self.gpu_memory_utilization,
                "tensor_parallel_size": self.tensor_parallel_size, "max_model_len": self.max_model_len,
                "max_num_seqs": self.max_num_seqs, "enforce_eager": self.enforce_eager,
                "enable_prefix_caching": self.enable_prefix_caching, "enable_sleep_mode": self.enable_sleep_mode}

    def hf_kwargs(self) -> dict:
        """Keyword arguments of actors.hf_sampler.HfSampler: the knobs transformers.generate has."""
        return {"dtype": self.dtype, "max_model_len": self.max_model_len}


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-replica resources; the counts say how many of each role the placement groups hold."""

    policy_actors: int = 1
    anchor_actors: int = 1
    learner_ranks: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    cpus_per_learner: float = 1.0
    gpus_per_learner: float = 0.0

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("policy_actors", "anchor_actors", "learner_ranks"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("cpus_per_actor", "gpus_per_actor", "cpus_per_learner", "gpus_per_learner"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class RunConfig:
    steps: int = 100
    """Learner steps (optimizer updates) to run in total, counting steps done before a resume."""
    run_dir: Path = Path("runs/local")
    """Checkpoints, episodes (Parquet), plots, the config and the summary go here."""
    checkpoint_every: int = 50
    """Steps between checkpoints (0: only at the end)."""
    resume: bool = False
    """Continue from the newest checkpoint in run_dir."""
    mode: Mode = Mode.SYNC
    max_staleness: int = 1
    """Pipelined mode: samples from weights more than this many versions old are dropped and redrawn."""
    seed: int = 0
    show_samples: int = 6
    """Completions printed before and after training (fixed prompts, greedy) so a reader sees what changed."""
    ray_address: str = ""
    """'' starts a local Ray (or joins RAY_ADDRESS / a `ray job submit` cluster); else an address to join."""
    metrics_export_port: int = 0
    """Local Ray only: Prometheus metrics port of the node (0: Ray's default choice)."""
    progress: bool = True
    """Show a progress bar with reward and KL."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        require(self.checkpoint_every >= 0, "checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        require(self.max_staleness >= 0, "max_staleness", f"must be >= 0, got {self.max_staleness}")
        require(self.mode is Mode.SYNC or self.max_staleness >= 1, "max_staleness",
                "pipelined mode samples one version behind the learner: needs max_staleness >= 1")
        require(self.show_samples >= 0, "show_samples", f"must be >= 0, got {self.show_samples}")


@dataclass(frozen=True)
class JobConfig:
    models: ModelsConfig = field(default_factory=ModelsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    prompts: PromptSource = field(default_factory=PromptSource)
    algorithm: BondConfig = field(default_factory=BondConfig)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    reward: RewardSpec = field(default_factory=lambda: RewardSpec(kind="learned", path_or_name="artifacts/tiny/reward"))
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        require(self.algorithm.algorithm is not Algorithm.BOND, "algorithm.algorithm",
                "bond (against Best-of-n of the frozen reference) needs k reference samples per prompt, which "
                "the job does not draw yet; use jbond or reinforce (the loss is bond.objective.bond_jeffreys_loss)")
        require(self.algorithm.prompts_per_step % self.resources.learner_ranks == 0, "algorithm.prompts_per_step",
                f"{self.algorithm.prompts_per_step} prompts do not split evenly over "
                f"{self.resources.learner_ranks} learner ranks")
        self._check_engine()

    def _check_engine(self) -> None:
        engine, res = self.engine, self.resources
        pushed = _LEARNER_TO_ENGINE_DTYPE[self.learner.dtype]
        require(engine.dtype == pushed, "engine.dtype",
                f"the actors would serve {engine.dtype} but the learner trains and pushes {pushed} weights "
                f"(learner.dtype: {self.learner.dtype.value}); set engine.dtype: {pushed}, or change learner.dtype "
                f"({', '.join(f'{k.value} -> {v}' for k, v in _LEARNER_TO_ENGINE_DTYPE.items())})")
        on_gpu = res.gpus_per_actor > 0
        if engine.tensor_parallel_size > 1:
            require(on_gpu, "engine.tensor_parallel_size",
                    f"{engine.tensor_parallel_size} needs GPUs, but resources.gpus_per_actor is 0: a CPU engine "
                    "runs in one process; use tensor_parallel_size: 1 on CPU")
            require(res.gpus_per_actor == 1, "resources.gpus_per_actor",
                    f"with engine.tensor_parallel_size {engine.tensor_parallel_size} each actor reserves "
                    f"{engine.tensor_parallel_size} whole GPUs, one per shard: set gpus_per_actor: 1 "
                    f"(got {res.gpus_per_actor})")
            require(self.models.sampler_backend is SamplerBackend.VLLM, "engine.tensor_parallel_size",
                    "tensor parallelism needs the vllm sampler backend")
        if engine.enable_sleep_mode:
            require(on_gpu and self.models.sampler_backend is SamplerBackend.VLLM, "engine.enable_sleep_mode",
                    "frees GPU memory of vLLM engines: needs resources.gpus_per_actor > 0 and the vllm backend")
            require(self.run.mode is Mode.SYNC, "engine.enable_sleep_mode",
                    "in pipelined mode the actors sample while the learner trains, so they cannot sleep; use sync")
        if engine.max_model_len is not None and self.prompts.max_prompt_length is not None:
            require(self.prompts.max_prompt_length < engine.max_model_len, "prompts.max_prompt_length",
                    f"{self.prompts.max_prompt_length} leaves no room for a completion in engine.max_model_len "
                    f"{engine.max_model_len}")

    @property
    def actor_gpus(self) -> float:
        """GPUs one actor reserves: tensor_parallel_size whole GPUs for a sharded engine."""
        return self.resources.gpus_per_actor * self.engine.tensor_parallel_size
