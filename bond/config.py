"""The algorithm's configuration: frozen, typed, validated. A bad value raises ConfigError naming the field."""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


class Algorithm(enum.StrEnum):
    JBOND = "jbond"  # J-BOND, Algorithm 2 of the BOND paper: 1 policy + 2 anchor samples per prompt
    BOND = "bond"  # BOND-N, Jeffreys divergence to Best-of-n of the reference (or of the anchor: iterated BOND)
    REINFORCE = "reinforce"  # RLOO: REINFORCE with a KL penalty to the reference, k policy samples per prompt
    REST = "rest"  # ReST: Grow a dataset with the policy, Improve by SFT on it at rising reward thresholds
    GKD = "gkd"  # on-policy distillation: generalised JSD to a frozen teacher on the policy's samples


def require(ok: bool, field: str, message: str) -> None:
    """Raise ConfigError('<field>: <message>') unless ok."""
    if not ok:
        raise ConfigError(f"{field}: {message}")


def check_types(obj: object, prefix: str = "") -> None:
    """Check each dataclass field's value against its annotation (int, float, bool, str, enums; each of them
    `| None` too, where None passes)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, kind, name = getattr(obj, f.name), hints[f.name], prefix + f.name
        args = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else ()
        if len(args) == 2 and type(None) in args:
            if value is None:
                continue
            (kind,) = (a for a in args if a is not type(None))
        if kind is float:
            require(
                isinstance(value, int | float) and not isinstance(value, bool),
                name,
                f"expected a number, got {value!r}",
            )
            require(math.isfinite(value), name, f"must be finite, got {value!r}")
        elif kind is int:
            require(isinstance(value, int) and not isinstance(value, bool), name, f"expected an integer, got {value!r}")
        elif kind is bool:
            require(isinstance(value, bool), name, f"expected true/false, got {value!r}")
        elif kind is str:
            require(isinstance(value, str), name, f"expected a string, got {value!r}")
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            require(isinstance(value, kind), name, f"expected one of {[m.value for m in kind]}, got {value!r}")


# The plain range conditions a field can be held to, as an error message states them.
CONDITIONS: dict[str, Callable[[float], bool]] = {
    ">= 0": lambda v: v >= 0,
    ">= 1": lambda v: v >= 1,
    "> 0": lambda v: v > 0,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
}


def check_bounds(obj: object, bounds: dict[str, str]) -> None:
    """Hold the fields of `obj` to CONDITIONS: `bounds` maps a condition to the (space-separated) fields it is for."""
    for condition, names in bounds.items():
        for name in names.split():
            value = getattr(obj, name)
            require(CONDITIONS[condition](value), name, f"must be {condition}, got {value}")


@dataclass(frozen=True)
class BondConfig:
    """Hyper-parameters of the learning algorithm (defaults: the paper's Gemma-7B J-BOND run, docs/algorithm.md 3)."""

    algorithm: Algorithm = Algorithm.JBOND
    """Which objective the learner optimises."""
    n: int = 2
    """Anchor samples per prompt for J-BOND (exactly 2, as in the paper); the Best-of-n order N for BOND."""
    beta: float = 0.5
    """Jeffreys mix: (1 - beta) * forward KL (SFT on the best sample) + beta * backward KL (policy gradient)."""
    gamma: float = 0.0
    """Weight of the KL(pi || pi_anchor) regulariser (paper: one of 0, 0.5, 1, 2)."""
    eta: float = 0.02
    """EMA rate of the anchor: theta_anchor <- (1 - eta) theta_anchor + eta theta after each update."""
    anchor_copy_every: int = 0
    """0: the anchor is the EMA above, updated every step. M > 0: the anchor is instead replaced by a copy of the
    policy every M steps (eta unused): iterated BOND's "distil Bo-n, make it the new reference, repeat"."""
    k_quantile: int = 16
    """BOND: samples of the target model per prompt (>= n) for the Monte-Carlo quantiles p_le, p_lt; the first
    n of them also give the Best-of-n sample of the forward (SFT) half."""
    iterated: bool = False
    """BOND only: distil Best-of-n of the moving anchor (EMA, or periodic copies with anchor_copy_every) instead
    of the frozen reference, so the policy walks through Bo-n, Bo-n^2, ... (iterated BOND)."""
    rloo_k: int = 3
    """REINFORCE: policy samples per prompt, each baselined by the mean return of the prompt's other k-1
    (RLOO). 3 matches J-BOND's budget of 1 policy + 2 anchor samples."""
    beta_rl: float = 0.01
    """REINFORCE baseline: KL-penalty coefficient towards the reference."""
    lr: float = 3e-6
    """Adam learning rate (peak, after warm-up)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up, in optimizer steps."""
    adam_beta1: float = 0.9
    """Adam's first-moment decay."""
    adam_beta2: float = 0.999
    """Adam's second-moment decay."""
    adam_eps: float = 1e-8
    """Adam's denominator epsilon."""
    weight_decay: float = 0.0
    """Decoupled (AdamW) weight decay."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""
    prompts_per_step: int = 128
    """Global batch B: prompts per optimizer step, over all learner ranks and micro-batches (rest: kept samples
    per SFT step)."""
    max_importance_weight: float = 2.0
    """Stale samples (pipelined mode) are importance-weighted by pi_now(y) / pi_sampler(y), truncated at this
    (bond/off_policy.py): lower is less variance and more bias towards the sampling weights; >= 1."""
    rest_grow_prompts: int = 64
    """ReST: prompts per Grow (taken from the prompt cursor); each gets rest_samples_per_prompt policy samples."""
    rest_samples_per_prompt: int = 4
    """ReST: completions per prompt in a Grow dataset."""
    rest_quantiles: tuple[float, ...] = (0.0, 0.7, 0.8, 0.9)
    """ReST: one Improve phase per entry, rising, each in [0, 1): SFT on the Grow samples whose reward reaches
    that quantile of the round's rewards, ceil(kept / prompts_per_step) steps per phase."""
    gkd_teacher: str = ""
    """GKD: the teacher, a Hugging Face model directory (or hub id) with the policy's tokenizer, e.g. a J-BOND
    final_policy/; loaded frozen (no gradient, no optimizer state) beside the policy on every learner rank."""
    gkd_beta: float = 0.5
    """GKD: the token-level generalised JSD(beta) between teacher and student; 0 is the forward KL(teacher ||
    student), 1 the reverse KL(student || teacher)."""

    def __post_init__(self) -> None:
        check_types(self)
        check_bounds(
            self,
            {
                "in [0, 1]": "beta eta gkd_beta",
                ">= 0": "gamma anchor_copy_every beta_rl warmup_steps weight_decay max_grad_norm",
                ">= 1": "k_quantile prompts_per_step rest_grow_prompts rest_samples_per_prompt",
                "> 0": "lr adam_eps",
                "in [0, 1)": "adam_beta1 adam_beta2",
            },
        )
        require(self.n >= 2, "n", f"needs at least 2 samples per prompt, got {self.n}")
        # J-BOND's backward reward and its -log(16) penalty are derived for Best-of-2 of the anchor; with more
        # anchor samples the loss would silently distil a different, unnamed target.
        require(
            self.algorithm is not Algorithm.JBOND or self.n == 2,
            "n",
            f"J-BOND (Algorithm 2) draws exactly 2 anchor samples per prompt, got {self.n}; "
            "for Best-of-n with n > 2 use algorithm=bond",
        )
        require(
            self.gamma == 0.0 or self.algorithm is Algorithm.JBOND,
            "gamma",
            f"the KL(pi || anchor) regulariser is J-BOND's; {self.algorithm.value} has none, got {self.gamma}",
        )
        require(
            self.algorithm is not Algorithm.BOND or self.k_quantile >= self.n,
            "k_quantile",
            f"BOND picks its Best-of-n sample among the k_quantile target samples: needs k_quantile >= n "
            f"= {self.n}, got {self.k_quantile}",
        )
        require(
            not self.iterated or self.algorithm is Algorithm.BOND,
            "iterated",
            f"iterated BOND is a variant of algorithm=bond, got algorithm={self.algorithm.value}",
        )
        require(
            self.rloo_k >= 2,
            "rloo_k",
            f"the leave-one-out baseline needs at least 2 samples per prompt, got {self.rloo_k}",
        )
        require(
            self.max_importance_weight >= 1.0,
            "max_importance_weight",
            f"must be >= 1 (a cap below 1 would down-weight fresh samples too), got {self.max_importance_weight}",
        )
        self._check_rest()
        require(
            self.algorithm is not Algorithm.GKD or bool(self.gkd_teacher.strip()),
            "gkd_teacher",
            "algorithm=gkd needs a teacher: a model directory with the policy's tokenizer (e.g. a J-BOND export)",
        )

    def _check_rest(self) -> None:
        q = self.rest_quantiles
        require(isinstance(q, tuple) and len(q) >= 1, "rest_quantiles", f"expected a non-empty list, got {q!r}")
        require(
            all(isinstance(x, int | float) and not isinstance(x, bool) and 0.0 <= x < 1.0 for x in q),
            "rest_quantiles",
            f"every quantile must be a number in [0, 1), got {list(q)}",
        )
        require(list(q) == sorted(q), "rest_quantiles", f"thresholds must rise (non-decreasing), got {list(q)}")
        grown = self.rest_grow_prompts * self.rest_samples_per_prompt
        require(
            self.algorithm is not Algorithm.REST or grown >= self.prompts_per_step,
            "rest_grow_prompts",
            f"a Grow of {self.rest_grow_prompts} prompts x {self.rest_samples_per_prompt} samples = {grown} "
            f"is smaller than one SFT batch (prompts_per_step={self.prompts_per_step})",
        )

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based): linear warm-up, then constant."""
        if self.warmup_steps == 0:
            return self.lr
        return self.lr * min(1.0, (step + 1) / self.warmup_steps)
