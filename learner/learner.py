"""The Learner: one process per data-parallel rank; what a step computes and where the models live: docs/learner.md."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from bond.anchor import ema_update_
from bond.config import Algorithm, BondConfig
from bond.divergence import KlEstimates
from bond.records import Batch, Completion, Role, StepStats, WeightUpdate
from bond.sampling_plan import sampling_plan
from learner import build, rendezvous
from learner.checkpoints import Checkpoints
from learner.config import Dtype, LearnerConfig, check_split
from learner.objectives import Outcome, Scored, best_target, check_batch, objective_for
from learner.scoring import Scorer
from learner.shadow_weights import ShadowWeights
from learner.teacher import Teacher
from learner.weight_export import WeightExport


class Learner:
    """One optimizer step per Batch (J-BOND, BOND, REINFORCE/RLOO, ReST's SFT, GKD: learner/objectives.py) on this
    rank's share, then the anchor update; no-grad log-probs (scoring.py), weight export (weight_export.py) and
    checkpoints (checkpoints.py) are helpers it holds. docs/learner.md: where the models live, what a step computes."""

    def __init__(
        self,
        model: str | Path,
        bond: BondConfig,
        config: LearnerConfig | None = None,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "127.0.0.1",
        master_port: int = 29500,
    ) -> None:
        config = config or LearnerConfig()
        self._plan = sampling_plan(bond)  # the shape every Batch must have
        check_split(bond.prompts_per_step, world_size, config.micro_batch_prompts)
        self._share = bond.prompts_per_step // world_size
        self.bond, self.config, self.rank, self.world_size = bond, config, rank, world_size
        rendezvous.join(rank, world_size, master_addr, master_port, config.device.value, config.timeout_s)
        torch.manual_seed(config.seed)
        on_gpu = config.device.value == "cuda"
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        self._dtype = torch.bfloat16 if config.dtype is Dtype.BF16 else torch.float32
        self._model_dir, self.reference_id = build.local_model_dir(model), str(model)
        self.engine, pad_id = build.policy_engine(self._model_dir, self.reference_id, bond, config, rank, world_size)
        self._lora, self._names, self._params = build.trained(self.engine, config, self._model_dir)
        self._anchor = ShadowWeights(self.engine, self._params, torch.float32)  # starts equal to pi_ref
        self._reference = ShadowWeights(self.engine, self._params, self._dtype)
        shadows = {Role.ANCHOR: self._anchor, Role.REFERENCE: self._reference}
        self._export = WeightExport(
            self.engine, self._names, self._params, shadows, self._lora, self._dtype, config.bucket_bytes, rank
        )
        self._checkpoints = Checkpoints(self._export, self.engine, self._anchor, self.reference_id, rank)
        reference_bf16 = build.reference_bf16(self._model_dir, config, self._dtype, self.device)
        chunk, cap = 2 * config.micro_batch_prompts, bond.max_importance_weight
        self._scorer = Scorer(self.engine, shadows, reference_bf16, pad_id, self.device, chunk, cap)
        teacher = None
        if bond.algorithm is Algorithm.GKD:
            vocab = self.engine.full_shape(self.engine.module.get_output_embeddings().weight)[0]
            teacher = Teacher(build.local_model_dir(bond.gkd_teacher), self._dtype, self.device, vocab)
        self._objective = objective_for(bond, teacher, world_size)
        self._step = 0

    @property
    def model_bytes(self) -> int:
        """Bytes of one copy of the pushed weights in the export dtype (what a weight push moves): the whole
        model, or with LoRA the adapters only."""
        return self._export.model_bytes

    # ---- versions ------------------------------------------------------------------------------------------
    @property
    def policy_version(self) -> int:
        """Optimizer steps taken: the version of the policy weights."""
        return self._step

    @property
    def anchor_version(self) -> int:
        """The version of the anchor weights: the optimizer step that last changed them (the EMA: every step;
        with anchor_copy_every = M, the last multiple of M)."""
        every = self.bond.anchor_copy_every
        return self._step - self._step % every if every else self._step

    def version(self, role: Role) -> int:
        """The version of `role`'s weights: policy_version, anchor_version, 0 for the reference."""
        return {Role.POLICY: self.policy_version, Role.ANCHOR: self.anchor_version, Role.REFERENCE: 0}[role]

    def _anchor_rate(self, step: int) -> float:
        """How far the anchor moves toward the policy after optimizer step `step` (0-based): eta every step, or
        (anchor_copy_every = M) a whole copy after every M-th step and nothing in between."""
        every = self.bond.anchor_copy_every
        return self.bond.eta if not every else float((step + 1) % every == 0)

    @property
    def layout(self) -> dict:
        """What a checkpoint's optimizer state is tied to (see checkpoint_dir.check_layout)."""
        return {
            "world_size": self.world_size,
            "zero_stage": self.config.zero_stage,
            "dtype": self.config.dtype.value,
            "lora": self.config.lora.layout if self.config.lora is not None else None,
        }

    # ---- the update ----------------------------------------------------------------------------------------
    def step(self, batch: Batch) -> StepStats:
        """One optimizer step on the global batch (every rank passes the same Batch), then the anchor update."""
        t0 = time.perf_counter()
        check_batch(batch, self._plan, self.bond)
        share = batch.slice(self.rank * self._share, (self.rank + 1) * self._share)
        objective, mb, pack = self._objective, self.config.micro_batch_prompts, self._scorer.pack
        micro = [share.slice(i, i + mb) for i in range(0, self._share, mb)]
        packs = [pack([s.completion for s in m.policy_samples]) for m in micro]
        # One forward with grad holds the policy samples and (J-BOND, BOND) each prompt's best target sample.
        grad_packs = packs
        if objective.best_target:
            grad_packs = [pack([s.completion for s in m.policy_samples] + best_target(m, self.bond.n)) for m in micro]
        anchor_version = self.anchor_version if self._plan.target_role is Role.ANCHOR else None
        scored = self._scorer.score(share, packs, mb, anchor_version, objective.prepass)
        update = objective.start(scored, self.policy_version)
        parts = []
        for i, p in enumerate(grad_packs):
            keep = p.logit_positions
            parts.append(update.part(i, p, keep, self.engine.forward(p.input_ids, p.attention_mask, keep)))
            self.engine.backward(parts[-1].backward)
        outcome = update.finish(parts)

        lr = self.bond.lr_at(self._step)
        grad_norm = self.engine.step(lr)
        ema_update_(self._anchor.tensors, [self.engine.local(p) for p in self._params], self._anchor_rate(self._step))
        self._step += 1
        return self._stats(batch, scored, outcome, lr, grad_norm, t0)

    def _stats(
        self, batch: Batch, scored: Scored, outcome: Outcome, lr: float, grad_norm: float, t0: float
    ) -> StepStats:
        logp, w_policy, w_target = outcome.logp, outcome.w_policy, scored.w_target
        means = rendezvous.rank_means(
            self.device,
            **dataclasses.asdict(outcome.terms),  # loss, loss_fw, loss_bw, loss_reg, frac_penalised
            kl_ref=(logp - scored.logp_ref).mean().item(),
            kl_anchor=(logp - scored.logp_anchor).mean().item(),
            importance_weight_policy=1.0 if w_policy is None else w_policy.mean().item(),
            importance_weight_anchor=1.0 if w_target is None else w_target.mean().item(),
        )
        policy, target = batch.policy_samples, batch.target_samples
        tokens = sum(len(s.completion.token_ids) for s in policy)
        if self._objective.best_target:
            tokens += sum(len(c.token_ids) for c in best_target(batch, self.bond.n))
        anchor_versions = [a.completion.weights_version for a in target if a.completion.role is Role.ANCHOR]
        return StepStats(
            step=self._step,
            **means,
            reward_policy=sum(s.reward for s in policy) / len(policy),
            reward_anchor=sum(a.reward for a in target) / len(target) if target else math.nan,
            grad_norm=grad_norm,
            lr=lr,
            policy_version=self.policy_version,
            anchor_version=self.anchor_version,
            sample_policy_version=sum(s.completion.weights_version for s in policy) / len(policy),
            sample_anchor_version=sum(anchor_versions) / len(anchor_versions) if anchor_versions else math.nan,
            tokens=tokens,
            seconds=time.perf_counter() - t0,
        )

    def logprobs(self, completions: Sequence[Completion], role: Role = Role.POLICY) -> torch.Tensor:
        """[len] log pi_role(y | x) of each completion, fp32 on CPU (for verifying weight sync). A collective under
        ZeRO-3: every rank calls it with the same number of completions."""
        return self._scorer.role_logprobs(completions, role)

    def kl_to_reference(self, completions: Sequence[Completion], role: Role = Role.POLICY) -> KlEstimates:
        """Per-completion estimates of KL(pi_role || pi_ref) (bond.divergence) from both models' full logits, fp32
        CPU. A collective under ZeRO-3, like `logprobs`."""
        return self._scorer.kl_to_reference(completions, role)

    # ---- weights out ---------------------------------------------------------------------------------------
    def weights(self, role: Role, reuse: bool = False) -> Iterator[WeightUpdate]:
        """The role's weights in buckets of at most bucket_bytes, with the checkpoint's parameter names.

        Every rank must drain the iterator (each bucket is a collective under ZeRO-3); every rank gets the
        full tensors, on the learner's device, in the model dtype. version = the role's version (`version`); the
        last bucket has last_bucket=True. reuse: the buckets' memory is refilled by the next push (for a caller
        that is done with each bucket by then; learner/weight_export.py).
        """
        return self._export.updates(role, self.version(role), reuse)

    # ---- files ---------------------------------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict | None = None, sha256: bool = True) -> None:
        """Checkpoint (collective; learner/checkpoints.py): policy, anchor, optimizer, step, RNG, reference id and
        the caller's `extra` (JSON-serialisable, e.g. the data cursor). Atomic: see checkpoint_dir.py. The
        manifest records the layout (world_size, zero_stage, dtype) that restore requires, and sha256 digests
        unless turned off."""
        versions = {"policy_version": self.policy_version, "anchor_version": self.anchor_version}
        self._checkpoints.save(directory, {"step": self._step, **versions, **self.layout}, extra, sha256)

    def restore(self, directory: str | Path) -> dict:
        """Load a checkpoint written by save (collective); returns its `extra`. Refuses partial or corrupt ones."""
        meta, extra = self._checkpoints.restore(directory, self.layout)
        self._step = meta["step"]
        return extra

    def export_hf(self, directory: str | Path) -> None:
        """The policy as a Hugging Face model directory (safetensors, config, tokenizer); collective.

        With LoRA the directory holds the merged model (W0 + (alpha/r) B A: loadable without peft) and
        `adapter/`, the adapter alone in peft's save_pretrained format (PeftModel.from_pretrained, vLLM LoRA)."""
        self._export.export_hf(Path(directory), self._model_dir)
