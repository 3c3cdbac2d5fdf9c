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
from learner.config import LearnerConfig
from reward_service.spec import RewardSpec


class Mode(enum.StrEnum):
    SYNC = "sync"  # on-policy, exactly Algorithm 2: sample, score, learn, push weights, repeat
    PIPELINED = "pipelined"  # actors sample step t+1 while the learner trains on step t (staleness <= max)


class SamplerBackend(enum.StrEnum):
    VLLM = "vllm"
    HF = "hf"  # transformers.generate: slow, for machines where vLLM cannot run


class WeightSyncMethod(enum.StrEnum):
    """How weights reach the actors (cluster/weight_sync.py)."""

    AUTO = "auto"  # cluster.weight_sync.choose_method: the measured rule
    OBJECT_STORE = "object_store"  # one Ray object per bucket, read by every actor of the role
    COLLECTIVE = "collective"  # learner rank 0 broadcasts over a gloo (CPU) / NCCL (GPU) group with the engine workers


@dataclass(frozen=True)
class ModelsConfig:
    policy: str = "artifacts/tiny/policy"
    """Starting policy pi_ref: a local HF directory or a hub id. The anchor starts equal to it."""
    sampler_backend: SamplerBackend = SamplerBackend.VLLM
    sampler_dtype: str = "float32"
    """dtype of the actors' engines (bfloat16 on GPU)."""
    build_tiny: bool = True
    """If the policy/reward paths lie under artifacts/tiny and are missing, build the tiny models first."""

    def __post_init__(self) -> None:
        check_types(self)
        require(bool(self.policy), "policy", "is empty")
        require(self.sampler_dtype in ("float32", "bfloat16", "float16"), "sampler_dtype",
                f"must be float32, bfloat16 or float16, got {self.sampler_dtype!r}")


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
    weight_sync: WeightSyncMethod = WeightSyncMethod.AUTO
    """Transport of weight pushes: auto, object_store or collective (see cluster/weight_sync.py)."""
    weight_sync_timeout_s: float = 300.0
    """A weight push (or forming a collective group) not done within this many seconds fails the job with the
    peer it waited for named, instead of hanging on a dead actor."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        require(self.checkpoint_every >= 0, "checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        require(self.max_staleness >= 0, "max_staleness", f"must be >= 0, got {self.max_staleness}")
        require(self.mode is Mode.SYNC or self.max_staleness >= 1, "max_staleness",
                "pipelined mode samples one version behind the learner: needs max_staleness >= 1")
        require(self.show_samples >= 0, "show_samples", f"must be >= 0, got {self.show_samples}")
        require(self.weight_sync_timeout_s > 0, "weight_sync_timeout_s",
                f"must be > 0, got {self.weight_sync_timeout_s}")


@dataclass(frozen=True)
class JobConfig:
    models: ModelsConfig = field(default_factory=ModelsConfig)
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
