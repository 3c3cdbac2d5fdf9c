"""The job's one typed, frozen, validated configuration: YAML/JSON and CLI overrides map onto it.

Global knobs (steps, prompts_per_step, algorithm) are kept apart from per-replica ones (resources: how
many actors/ranks/replicas and the CPUs/GPUs of each). A bad value fails at start-up naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

from actors.sampling import SamplingSettings
from bond.config import Algorithm, BondConfig, check_types, require
from bond.records import Role
from bond.sampling_plan import sampling_plan
from cluster.config.prompts import PromptSource
from learner.config import Dtype, LearnerConfig, check_split
from reward_service.spec import RewardSpec


class Mode(enum.StrEnum):
    SYNC = "sync"  # on-policy, exactly Algorithm 2: sample, score, learn, push weights, repeat
    PIPELINED = "pipelined"  # actors sample step t+1 while the learner trains on step t (staleness <= max)
    AUTO = "auto"  # sync or pipelined, whichever is faster here (cluster/runtime/mode.py)


class SamplerBackend(enum.StrEnum):
    VLLM = "vllm"
    HF = "hf"  # transformers.generate: slow, for machines where vLLM cannot run


class WeightSyncMethod(enum.StrEnum):
    """How weights reach the actors (cluster/runtime/weight_sync.py)."""

    AUTO = "auto"  # cluster.runtime.weight_sync.choose_method: the measured rule
    OBJECT_STORE = "object_store"  # one Ray object per bucket, read by every actor of the role
    COLLECTIVE = "collective"  # learner rank 0 broadcasts over a gloo (CPU) / NCCL (GPU) group with the engine workers


class ThreadPolicy(enum.StrEnum):
    PHASE = "phase"  # sync mode: the active phase's processes share the node's cores; pipelined: as reserved
    RESERVED = "reserved"  # ceil(cpus reserved), at least 1: what each process owns, whatever the others do


@dataclass(frozen=True)
class ModelsConfig:
    policy: str = "artifacts/tiny/policy"
    """Starting policy pi_ref: a local HF directory or a hub id. The anchor starts equal to it. Its tokenizer
    (and chat template) renders the prompts. The default is where `make tiny` writes the demo policy."""
    sampler_backend: SamplerBackend = SamplerBackend.VLLM
    """Which engine the actors sample with (engine.dtype is their precision)."""

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
        require(
            self.dtype in ("float32", "bfloat16", "float16"),
            "dtype",
            f"must be float32, bfloat16 or float16, got {self.dtype!r}",
        )
        require(
            0.0 < self.gpu_memory_utilization <= 1.0,
            "gpu_memory_utilization",
            f"must be in (0, 1], got {self.gpu_memory_utilization}",
        )
        require(
            self.tensor_parallel_size >= 1, "tensor_parallel_size", f"must be >= 1, got {self.tensor_parallel_size}"
        )
        require(
            self.max_model_len is None or self.max_model_len >= 2,
            "max_model_len",
            f"must be unset or an integer >= 2, got {self.max_model_len!r}",
        )
        require(self.max_num_seqs >= 1, "max_num_seqs", f"must be >= 1, got {self.max_num_seqs}")

    def vllm_kwargs(self) -> dict:
        """Keyword arguments of actors.vllm_sampler.VllmSampler (and vllm.LLM): every field, by name."""
        return dataclasses.asdict(self)

    def hf_kwargs(self) -> dict:
        """Keyword arguments of actors.hf_sampler.HfSampler: the knobs transformers.generate has."""
        return {"dtype": self.dtype, "max_model_len": self.max_model_len}


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-replica resources; the counts say how many of each role the placement groups hold."""

    policy_actors: int = 1
    """Sampling workers (vLLM engines) holding the policy; each prompt batch is split over them."""
    anchor_actors: int = 1
    """Sampling workers holding the EMA anchor (J-BOND, iterated BOND: they draw the anchor samples)."""
    reference_actors: int = 1
    """Sampling workers holding the frozen reference pi_ref, never pushed to (BOND: its k_quantile samples)."""
    learner_ranks: int = 1
    """Data-parallel learner processes (the DeepSpeed world size); prompts_per_step must split evenly over them."""
    cpus_per_actor: float = 1.0
    """CPU cores reserved for each sampling worker."""
    gpus_per_actor: float = 0.0
    """GPUs reserved for each sampling worker (1 on a GPU cluster; fractions share a device)."""
    cpus_per_learner: float = 1.0
    """CPU cores reserved for each learner rank."""
    gpus_per_learner: float = 0.0
    """GPUs reserved for each learner rank (1 with learner.device=cuda)."""
    threads: ThreadPolicy = ThreadPolicy.PHASE
    """torch/OpenMP threads of each process (cluster/runtime/threads.py). phase: in sync mode the phase that is working
    uses the cores the idle phases reserve (learner ranks, actors or reward replicas share the node's cores
    in turn); in pipelined mode, as reserved. reserved: ceil(cpus reserved), at least 1 (Ray alone gives a
    fractional reservation a single thread)."""
    max_actor_restarts: int = 3
    """Per sampler actor: a dead actor (crash, OOM, lost node) is restarted, re-synced to the current weights
    and its share of the step redrawn, at most this many times; one more death ends the job."""
    actor_node_labels: dict[str, str] = field(default_factory=dict)
    """Run every sampling worker on nodes carrying all these Ray node labels (given by `ray start --labels
    pool=actors`), e.g. {pool: actors}; {} = any node. Exact values; Ray's label selectors place the
    placement group's bundles."""
    learner_node_labels: dict[str, str] = field(default_factory=dict)
    """The same for the learner ranks (and, with colocate, the actors that share their bundles), e.g.
    {pool: trainers}."""
    colocate: bool = False
    """Actors share the learner ranks' resources instead of reserving their own: one placement bundle per rank
    (cpus_per_learner, gpus_per_learner) holds the rank and, round-robin, the actors; each process takes an
    equal share of the bundle (fractional GPUs on the same device). cpus_per_actor is then not reserved, and
    gpus_per_actor > 0 only says the actors run on GPU. The engines sleep while the learner steps and wake
    before the weight push (sync mode only): on GPU vLLM's sleep mode (engine.enable_sleep_mode, level 1); on
    CPU, where vLLM ignores sleep, each engine hands its KV cache's memory back to the OS (README)."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self.max_actor_restarts >= 0, "max_actor_restarts", f"must be >= 0, got {self.max_actor_restarts}")
        for name in ("policy_actors", "anchor_actors", "reference_actors", "learner_ranks"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("cpus_per_actor", "gpus_per_actor", "cpus_per_learner", "gpus_per_learner"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("actor_node_labels", "learner_node_labels"):
            _check_node_labels(name, getattr(self, name))
        if self.colocate:
            require(
                not self.actor_node_labels,
                "actor_node_labels",
                "colocated actors run in the learner ranks' bundles: place them with learner_node_labels",
            )
            require(
                (self.gpus_per_actor > 0) == (self.gpus_per_learner > 0),
                "gpus_per_actor",
                f"colocated actors share the learner's devices: actors and learner both on GPU or both on CPU "
                f"(gpus_per_actor {self.gpus_per_actor}, gpus_per_learner {self.gpus_per_learner})",
            )

    def actors(self, role: Role) -> int:
        """How many sampling workers hold `role`'s weights (when the job samples that role at all)."""
        return {
            Role.POLICY: self.policy_actors,
            Role.ANCHOR: self.anchor_actors,
            Role.REFERENCE: self.reference_actors,
        }[role]


# Ray's node-label syntax: an optional DNS-style prefix and '/', then a name of <= 63 characters that starts and
# ends alphanumeric with '-', '_' or '.' between; values the same without the prefix (or empty).
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")


def _check_node_labels(name: str, labels: object) -> None:
    require(
        isinstance(labels, dict), name, f"expected a mapping of Ray node labels (e.g. {{pool: actors}}), got {labels!r}"
    )
    for key, value in labels.items():
        require(
            isinstance(key, str) and _LABEL_KEY.fullmatch(key) is not None,
            name,
            f"{key!r} is not a Ray node-label key ([prefix/]name: letters, digits, '-', '_', '.', <= 63)",
        )
        require(
            isinstance(value, str) and _LABEL_VALUE.fullmatch(value) is not None,
            name,
            f"label {key}: {value!r} is not a Ray node-label value (a string of letters, digits, '-', '_', '.', "
            f"<= 63; quote numbers and booleans in YAML)",
        )


@dataclass(frozen=True)
class RunConfig:
    steps: int = 100
    """Learner steps (optimizer updates) to run in total, counting steps done before a resume."""
    run_dir: Path = Path("runs/local")
    """Checkpoints, episodes (Parquet), TensorBoard events, logs, plots, the config and the summary go here.
    A relative path resolves against storage_path (or $JBOND_STORAGE_PATH) if set, else against the current
    directory; a relative run_dir in a `ray job submit` job with no storage root is refused (config/storage.py)."""
    storage_path: str = ""
    """Absolute directory that relative run_dirs resolve against, like Ray Train's storage_path: on a cluster,
    one every node can write (NFS, a mounted bucket). '' : $JBOND_STORAGE_PATH, else the current directory."""
    checkpoint_every: int = 50
    """Steps between checkpoints (0: only at the end)."""
    keep_checkpoints: int = 0
    """Keep only the newest N checkpoints (0: keep all). The newest valid one is never deleted."""
    checkpoint_sha256: bool = True
    """Hash every checkpoint file into its manifest (checked again on resume); off, the manifest records sizes
    only. Hashing costs about 3 s per GB at save and again at resume on the 2-core dev machine (README)."""
    export_every: int = 0
    """Steps between Hugging Face exports of the policy to run_dir/exports/step_N (0: only final_policy/)."""
    resume: bool = False
    """Continue from the newest valid checkpoint in run_dir (same learner_ranks, zero_stage and dtype)."""
    mode: Mode = Mode.AUTO
    """sync, pipelined (see Mode) or auto: sync where pipelining cannot add compute (every process on the same CPU
    cores) or cannot run (the algorithm, max_staleness 0, colocated or sleeping engines); otherwise the first steps
    are timed in each mode and the faster one runs the rest (one log line gives the numbers)."""
    max_staleness: int = 1
    """Pipelined mode: samples from weights more than this many versions old are dropped and redrawn."""
    pipeline_depth: int = 1
    """Pipelined mode: steps the actors sample ahead of the learner; samples are then up to this many versions
    old (importance-weighted, algorithm.max_importance_weight). At most max_staleness: deeper samples would all
    be redrawn."""
    seed: int = 0
    """Seed of the per-step sampling requests (each step's seed derives from it, so a resume repeats them)."""
    show_samples: int = 6
    """Completions printed before and after training (fixed prompts, greedy) so a reader sees what changed."""
    ray_address: str = ""
    """'' starts a local Ray (or joins RAY_ADDRESS / a `ray job submit` cluster); else an address to join."""
    metrics_export_port: int = 0
    """Local Ray only: Prometheus metrics port of the node (0: Ray's default choice)."""
    progress: bool = True
    """Show a progress bar with reward and KL."""
    verbose: bool = False
    """Also stream Ray, Serve, vLLM and DeepSpeed logs of the workers to the console (they always go to
    Ray's log files, copied to run_dir/logs/ray at the end of a local run)."""
    tensorboard: bool = True
    """Write TensorBoard event files to run_dir/tensorboard (offline; `tensorboard --logdir runs`)."""
    wandb_project: str = ""
    """Also log to this Weights & Biases project ('' = off; needs `pip install wandb` and a login or
    WANDB_MODE=offline)."""
    auto_resume: int = 0
    """Supervisor mode: after a failure the job cannot survive (a dead learner rank, an actor out of restarts),
    restart from the newest checkpoint by itself, at most this many times (0: stop with one error line)."""
    weight_sync: WeightSyncMethod = WeightSyncMethod.AUTO
    """Transport of weight pushes: auto, object_store or collective (see cluster/runtime/weight_sync.py)."""
    anchor_ema_on_actors: bool = True
    """With the object-store transport and vLLM actors: the anchor actors take the policy push too and apply the
    EMA to their own fp32 anchor copy (bit-identical to the learner's; actors/weight_ema.py), so a step moves one
    model instead of two. Off, with the collective transport, or with learner.lora (the anchor push is then the
    adapters' EMA, already small), the learner pushes its anchor as well."""
    weight_sync_timeout_s: float = 300.0
    """A weight push (or forming a collective group) not done within this many seconds fails the job with the
    peer it waited for named, instead of hanging on a dead actor."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        for name in ("checkpoint_every", "keep_checkpoints", "export_every", "max_staleness", "show_samples"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        require(
            self.mode is not Mode.PIPELINED or self.max_staleness >= 1,
            "max_staleness",
            "pipelined mode samples at least one version behind the learner: needs max_staleness >= 1",
        )
        require(self.pipeline_depth >= 1, "pipeline_depth", f"must be >= 1, got {self.pipeline_depth}")
        require(
            self.mode is not Mode.PIPELINED or self.pipeline_depth <= self.max_staleness,
            "pipeline_depth",
            f"{self.pipeline_depth} steps ahead makes every step's samples {self.pipeline_depth} versions old, "
            f"beyond max_staleness {self.max_staleness}: all would be dropped and redrawn; set pipeline_depth <= "
            "max_staleness",
        )
        require(
            not self.storage_path or Path(self.storage_path).expanduser().is_absolute(),
            "storage_path",
            f"must be an absolute path (a directory every node can write), got {self.storage_path!r}",
        )
        require(
            not self.wandb_project or importlib.util.find_spec("wandb") is not None,
            "wandb_project",
            f"is {self.wandb_project!r} but the wandb package is not installed: `pip install wandb`, "
            "or leave run.wandb_project empty (TensorBoard needs no account)",
        )
        require(self.auto_resume >= 0, "auto_resume", f"must be >= 0, got {self.auto_resume}")
        require(
            self.weight_sync_timeout_s > 0, "weight_sync_timeout_s", f"must be > 0, got {self.weight_sync_timeout_s}"
        )


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation during training on held-out prompts: reward (greedy and sampled) and KL(pi || ref)."""

    every_steps: int = 0
    """Steps between evaluations (0: none). With evaluation on, it also runs before the first step and after
    the last."""
    prompts: PromptSource | None = None
    """A held-out prompt source (path, format, field, split, ... as in the `prompts` section), evaluated in file
    order; its max_prompt_length, unset, is prompts.max_prompt_length."""
    holdout_fraction: float = 0.0
    """Without eval.prompts: hold out this fraction of the distinct training prompts (chosen with prompts.seed);
    the learner never trains on them."""
    num_prompts: int = 64
    """Held-out prompts per evaluation (the same first ones every time, so the curve compares like with like)."""
    samples_per_prompt: int = 4
    """Sampled completions per held-out prompt (drawn from pi, as in training); greedy draws one."""
    greedy: bool = True
    """Evaluate greedy completions (reward)."""
    sampled: bool = True
    """Evaluate sampled completions (reward and KL(pi || ref) = mean over completions of the summed
    log pi - log pi_ref of their tokens, computed by the learner)."""
    bon_samples: int = 32
    """Reference samples m per held-out prompt for the reference's Best-of-N curve (N = 1 .. m/2), drawn once at
    the first evaluation and kept in the run dir: each sampled evaluation is placed against it (effective N, the
    Best-of-N gap). 0: no curve."""
    gold_reward: RewardSpec | None = None
    """A second reward (kind, path_or_name as in `reward`) scored on the evaluation completions only, in the driver,
    never trained on: eval.jsonl reports gold_reward and proxy_minus_gold, and a gold that falls while the
    trained-on (proxy) reward rises is flagged as reward hacking."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self.every_steps >= 0, "every_steps", f"must be >= 0, got {self.every_steps}")
        require(
            0.0 <= self.holdout_fraction < 1.0, "holdout_fraction", f"must be in [0, 1), got {self.holdout_fraction}"
        )
        require(self.num_prompts >= 1, "num_prompts", f"must be >= 1, got {self.num_prompts}")
        require(self.samples_per_prompt >= 1, "samples_per_prompt", f"must be >= 1, got {self.samples_per_prompt}")
        require(
            self.bon_samples == 0 or self.bon_samples >= 2, "bon_samples", f"must be 0 or >= 2, got {self.bon_samples}"
        )
        require(self.greedy or self.sampled, "greedy", "greedy and sampled are both off: nothing to evaluate")
        require(
            self.prompts is None or self.holdout_fraction == 0.0,
            "holdout_fraction",
            "set either eval.prompts (a held-out file) or eval.holdout_fraction, not both",
        )
        require(
            self.every_steps == 0 or self.prompts is not None or self.holdout_fraction > 0.0,
            "every_steps",
            "evaluation needs held-out prompts: set eval.prompts.path or eval.holdout_fraction > 0",
        )


# Algorithms that cannot take pipelined mode's samples from older weights, and why.
_SYNC_ONLY = {
    Algorithm.REST: "rest alternates whole Grow and Improve phases, so nothing is pipelined",
    Algorithm.GKD: "gkd has no off-policy correction (importance weights) for samples drawn by older weights",
}

_HELD_OUT_IN_ORDER = (
    "not read: the held-out prompts are evaluated in file order, the same first eval.num_prompts each time"
)


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
    eval: EvalConfig = field(default_factory=EvalConfig)

    # Fields of the records above that a config may not set (loading.build refuses them, to_dict leaves them out,
    # --help says why): the job derives or fixes them.
    NOT_SETTINGS: ClassVar[MappingProxyType[str, str]] = MappingProxyType(
        {
            "sampling.seed": "derived from run.seed and the step (so a resumed run repeats its draws): set run.seed",
            "sampling.temperature": "fixed at 1: the learner's log-probs are pi's, untempered; samples drawn at "
            "another temperature would bias every objective",
            "sampling.top_p": "fixed at 1: the learner's log-probs are of pi's full distribution; nucleus samples "
            "would bias every objective",
            "learner.seed": "removed: nothing in a learner step is random (the ranks' torch seed is fixed)",
            "learner.lora.dropout": "removed (always 0): log pi(y) must be a deterministic function of the weights",
            "eval.prompts.shuffle": _HELD_OUT_IN_ORDER,
            "eval.prompts.seed": _HELD_OUT_IN_ORDER,
            "models.build_tiny": "removed: the job loads models, it does not build them; the demo models are "
            "built by `make tiny` (python -m demo.tiny artifacts/tiny)",
        }
    )

    def __post_init__(self) -> None:
        sync_only = _SYNC_ONLY.get(self.algorithm.algorithm)
        require(sync_only is None or self.run.mode is not Mode.PIPELINED, "run.mode", f"{sync_only}: use sync")
        check_split(self.algorithm.prompts_per_step, self.resources.learner_ranks, self.learner.micro_batch_prompts)
        self._check_engine()

    def _check_engine(self) -> None:
        engine, res = self.engine, self.resources
        pushed = _LEARNER_TO_ENGINE_DTYPE[self.learner.dtype]
        require(
            engine.dtype == pushed,
            "engine.dtype",
            f"the actors would serve {engine.dtype} but the learner trains and pushes {pushed} weights "
            f"(learner.dtype: {self.learner.dtype.value}); set engine.dtype: {pushed}, or change learner.dtype "
            f"({', '.join(f'{k.value} -> {v}' for k, v in _LEARNER_TO_ENGINE_DTYPE.items())})",
        )
        on_gpu = res.gpus_per_actor > 0
        if engine.tensor_parallel_size > 1:
            require(
                on_gpu,
                "engine.tensor_parallel_size",
                f"{engine.tensor_parallel_size} needs GPUs, but resources.gpus_per_actor is 0: a CPU engine "
                "runs in one process; use tensor_parallel_size: 1 on CPU",
            )
            require(
                res.gpus_per_actor == 1,
                "resources.gpus_per_actor",
                f"with engine.tensor_parallel_size {engine.tensor_parallel_size} each actor reserves "
                f"{engine.tensor_parallel_size} whole GPUs, one per shard: set gpus_per_actor: 1 "
                f"(got {res.gpus_per_actor})",
            )
            require(
                self.models.sampler_backend is SamplerBackend.VLLM,
                "engine.tensor_parallel_size",
                "tensor parallelism needs the vllm sampler backend",
            )
        self._check_sharing(engine, res, on_gpu)
        if self.learner.lora is not None:
            require(
                self.models.sampler_backend is SamplerBackend.VLLM,
                "learner.lora",
                "LoRA pushes carry adapters only, which the vllm actors serve as LoRA requests; the hf sampler "
                "backend cannot take them: use models.sampler_backend: vllm, or full fine-tuning (lora: null)",
            )
        for name, source in (("prompts", self.prompts), ("eval.prompts", self.eval.prompts)):
            limit = source.max_prompt_length if source is not None else None
            require(
                engine.max_model_len is None or limit is None or limit < engine.max_model_len,
                f"{name}.max_prompt_length",
                f"{limit} leaves no room for a completion in engine.max_model_len {engine.max_model_len}",
            )

    def _check_sharing(self, engine: EngineConfig, res: ResourcesConfig, on_gpu: bool) -> None:
        """Colocated actors and engines that sleep: both take turns with the learner, so sync mode only."""
        if res.colocate:
            require(
                self.run.mode is not Mode.PIPELINED,
                "resources.colocate",
                "colocated actors and learner take turns on the same resources; pipelined mode samples while "
                "the learner trains: use run.mode: sync",
            )
            require(
                engine.tensor_parallel_size == 1,
                "resources.colocate",
                "a tensor-parallel engine needs whole GPUs of its own; colocated actors take a share of the "
                "learner's devices: use engine.tensor_parallel_size: 1",
            )
            require(
                not on_gpu or engine.enable_sleep_mode or self.models.sampler_backend is not SamplerBackend.VLLM,
                "engine.enable_sleep_mode",
                "colocated vLLM engines on GPU must free the devices while the learner steps: set "
                "engine.enable_sleep_mode: true",
            )
        if engine.enable_sleep_mode:
            require(
                on_gpu and self.models.sampler_backend is SamplerBackend.VLLM,
                "engine.enable_sleep_mode",
                "frees GPU memory of vLLM engines: needs resources.gpus_per_actor > 0 and the vllm backend",
            )
            require(
                self.run.mode is not Mode.PIPELINED,
                "engine.enable_sleep_mode",
                "in pipelined mode the actors sample while the learner trains, so they cannot sleep; use sync",
            )

    @property
    def sync_only(self) -> str | None:
        """Why this job cannot run pipelined (None: it can): what the checks above refuse in pipelined mode, and
        run.mode auto resolves to sync for."""
        run = self.run
        reasons = (
            _SYNC_ONLY.get(self.algorithm.algorithm),
            run.max_staleness == 0 and "run.max_staleness 0 takes no sample from older weights",
            run.pipeline_depth > run.max_staleness
            and f"run.pipeline_depth {run.pipeline_depth} > run.max_staleness {run.max_staleness}: every sample "
            "drawn ahead would be redrawn",
            self.resources.colocate and "resources.colocate: the actors and the learner take turns on the same devices",
            self.engine.enable_sleep_mode and "engine.enable_sleep_mode: the engines sleep while the learner trains",
        )
        return next((r for r in reasons if r), None)

    @property
    def actor_roles(self) -> tuple[Role, ...]:
        """The roles whose sampling workers the job starts: those its algorithm samples (bond.sampling_plan)."""
        return sampling_plan(self.algorithm).roles

    @property
    def actor_gpus(self) -> float:
        """GPUs one actor reserves: tensor_parallel_size whole GPUs for a sharded engine."""
        return self.resources.gpus_per_actor * self.engine.tensor_parallel_size
