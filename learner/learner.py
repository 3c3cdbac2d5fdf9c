"""The Learner: one optimizer step per Batch (J-BOND, BOND, REINFORCE/RLOO, ReST's SFT, GKD) and the anchor; weight
export (weight_export.py) and checkpoints (checkpoints.py) are helpers it holds.

Data parallelism: rank r of W runs in its own process and takes prompts [r*B/W, (r+1)*B/W) of every
global Batch of B prompts; it splits them into micro-batches of `micro_batch_prompts` (gradient
accumulation). Leave-one-out baselines see the whole global batch through an all_reduce, so the
update does not depend on W or on the micro-batch size.

Where the three models live (one module, one engine, two shadow copies; see shadow_weights.py):
- policy pi: the engine's model (ZeRO partitions under stage 3) with its optimizer state.
- anchor pi_anchor: fp32 tensors laid out exactly like each rank's storage of the policy (its ZeRO-3
  partition, or the whole tensor under stages 0/1/2). The EMA after every step is elementwise on the
  local piece (bond.anchor.ema_update_), with no gather. Memory: 4 bytes/parameter, divided by W under ZeRO-3.
- reference pi_ref: a frozen copy in the model dtype (2 bytes/parameter in bf16, 4 in fp32), laid out the
  same way; not checkpointed (it is the model the learner was built from, named by reference_id).
Their log-probabilities come from the policy's own forward with the copy swapped into its storage for a
no-grad pass (plus a transient model-dtype copy of the local storage while swapped). Against bf16 mixed-
precision Adam (~16 bytes/parameter) the anchor and reference add 6 bytes/parameter (/W under ZeRO-3).
Under ZeRO-3 the anchor's EMA reads the policy's bf16 partition (what the actors sample with), not the
optimizer's fp32 master copy; on CPU (fp32) the two are the same.

Per step, for each micro-batch: log pi(y) and log pi(y'_best) with grad, log pi_anchor(y) and log pi_ref(y)
without, each sequence once per model (tests/component/test_learner_work.py counts the forwards). With more
than one micro-batch the loss (bond.objective) is first evaluated on no-grad log-probabilities of the share's
policy samples to get d loss / d log pi per sequence; each micro-batch then back-propagates
sum(coefficient * log pi), which by the chain rule accumulates exactly the gradient of the loss over the share
while holding one micro-batch's activations at a time. That pre-pass is the one repeated forward (of pi on y),
the price of gradient accumulation; with one micro-batch per rank there is none.
Where the log-probs come from: the anchor actors hold the same anchor (actors/weight_ema.py) but score only
their own samples; log pi_anchor(y) of the policy's samples is computed here, beside the policy's forward,
where the sequences are already packed (on a 2-core machine the score phase has no idle core to move it to).
log pi_ref(y) may run on a bf16 copy of pi_ref (learner.reference_dtype).

LoRA (config.lora, learner/lora.py): the module is wrapped by peft and only the adapters train. Everything
above then applies to the adapter tensors alone: the optimizer state, the anchor (the frozen base plus an EMA
of the adapters, bond/lora.py), the reference (the initial adapter, B = 0: exactly the base), weight pushes
and checkpoints are adapter-sized; export_hf writes the merged model and the adapter beside it.

Dropout is off (module.eval()): log pi must be a deterministic function of the weights.
Checkpoints and exports assume every rank sees the same file system (rank 0 writes the shared files).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bond.anchor import ema_update_
from bond.config import Algorithm, BondConfig
from bond.divergence import KlEstimates, kl_estimates
from bond.gkd import masked_jsd_sum
from bond.objective import LossTerms, best_index, bond_jeffreys_loss, jbond_loss, rloo_kl_loss, sequence_logprobs
from bond.off_policy import importance_weights
from bond.records import Batch, Completion, Role, StepStats, WeightUpdate
from bond.sampling_plan import sampling_plan
from learner import lora, rendezvous, safetensors_shards
from learner.checkpoints import Checkpoints
from learner.config import Dtype, LearnerConfig
from learner.engine import Engine
from learner.sequences import Packed, completion_logprobs, pack
from learner.shadow_weights import ShadowWeights
from learner.teacher import Teacher
from learner.torch_engine import TorchEngine
from learner.weight_export import SIDE_FILES, WeightExport


def _local_model_dir(model: str | Path) -> Path:
    if Path(model).is_dir():
        return Path(model).resolve()
    from huggingface_hub import snapshot_download  # only for hub ids

    return Path(snapshot_download(str(model), allow_patterns=["*.json", "*.safetensors", *SIDE_FILES]))


class Learner:
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
        if bond.prompts_per_step % world_size:
            raise ValueError(f"prompts_per_step={bond.prompts_per_step} must be divisible by world_size={world_size}")
        self._share = bond.prompts_per_step // world_size
        if self._share % config.micro_batch_prompts:
            raise ValueError(
                f"micro_batch_prompts={config.micro_batch_prompts} must divide each rank's share of "
                f"{self._share} prompts (prompts_per_step / world_size)"
            )
        self.bond, self.config, self.rank, self.world_size = bond, config, rank, world_size
        rendezvous.join(rank, world_size, master_addr, master_port, config.device.value, config.timeout_s)
        torch.manual_seed(config.seed)
        self._device = (
            torch.device("cuda", torch.cuda.current_device()) if config.device.value == "cuda" else torch.device("cpu")
        )
        self._dtype = torch.bfloat16 if config.dtype is Dtype.BF16 else torch.float32
        self._model_dir = _local_model_dir(model)
        self.reference_id = str(model)
        micro_batches = self._share // config.micro_batch_prompts
        if config.zero_stage == 3:  # built partitioned: no rank ever holds the whole model (deepspeed_engine.py)
            from learner.deepspeed_engine import build_partitioned, deepspeed_config

            module = build_partitioned(
                self._model_dir, self._dtype, deepspeed_config(bond, config, world_size, micro_batches)
            )
        else:
            module = AutoModelForCausalLM.from_pretrained(self._model_dir, dtype=self._dtype).to(self._device)
        module.eval()  # no dropout: see module docstring
        if config.gradient_checkpointing:
            _enable_gradient_checkpointing(module)
        self._pad_id = module.config.pad_token_id if module.config.pad_token_id is not None else 0
        if config.lora is not None:  # the base freezes; only the adapters train (learner/lora.py)
            module = lora.wrap(module, config.lora, self.reference_id)
        if config.zero_stage == 0:
            self.engine: Engine = TorchEngine(module, bond, rank, world_size)
        else:
            from learner.deepspeed_engine import DeepSpeedEngine  # zero_stage 0 never imports deepspeed

            self.engine = DeepSpeedEngine(module, bond, config, world_size, micro_batches)
        # With LoRA the trained parameters, and so the anchor, the reference, weight pushes and the optimizer
        # state, are the adapters; the reference is the initial adapter (B = 0), i.e. exactly the base model.
        self._lora = lora.LoraLayout.of(self.engine.module, config.lora) if config.lora is not None else None
        if self._lora is not None:
            self._names, self._params = self._lora.adapter_names, self._lora.adapter_params
        else:
            self._names = [n for n, _ in self.engine.module.named_parameters()]
            self._params = [p for _, p in self.engine.module.named_parameters()]
            self._check_names()
        self._anchor = ShadowWeights(self.engine, self._params, torch.float32)  # starts equal to pi_ref
        self._reference = ShadowWeights(self.engine, self._params, self._dtype)
        self._export = WeightExport(
            self.engine,
            self._names,
            self._params,
            {Role.ANCHOR: self._anchor, Role.REFERENCE: self._reference},
            self._lora,
            self._dtype,
            config.bucket_bytes,
            rank,
        )
        self._checkpoints = Checkpoints(self._export, self.engine, self._anchor, self.reference_id, rank)
        # bf16 scoring of pi_ref: its own bf16 module, since the policy's storage would widen swapped-in bf16 back
        self._reference_bf16 = None
        if config.reference_dtype is Dtype.BF16 and self._dtype is not torch.bfloat16:
            self._reference_bf16 = (
                AutoModelForCausalLM.from_pretrained(self._model_dir, dtype=torch.bfloat16)
                .to(self._device)
                .eval()
                .requires_grad_(False)
            )
        self._teacher = None
        if bond.algorithm is Algorithm.GKD:
            vocab = self.engine.full_shape(self.engine.module.get_output_embeddings().weight)[0]
            self._teacher = Teacher(_local_model_dir(bond.gkd_teacher), self._dtype, self._device, vocab)
        self._step = 0

    @property
    def device(self) -> torch.device:
        return self._device

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

    def _anchor_rate(self, step: int) -> float:
        """How far the anchor moves toward the policy after optimizer step `step` (0-based): eta every step, or
        (anchor_copy_every = M) a whole copy after every M-th step and nothing in between."""
        every = self.bond.anchor_copy_every
        if not every:
            return self.bond.eta
        return 1.0 if (step + 1) % every == 0 else 0.0

    def _check_shape(self, batch: Batch) -> None:
        """The batch must be what this algorithm samples: another shape would silently change the loss."""
        plan = self._plan
        k, n = len(batch.policy[0]), len(batch.target[0])
        if (k, n, batch.target_role) != (plan.policy, plan.target, plan.target_role):

            def shape(k: int, n: int, role: Role | None) -> str:
                return f"{k} policy and {n} {role} samples" if role else f"{k} policy samples and no target"

            raise ValueError(
                f"Batch has {shape(k, n, batch.target_role)} per prompt; {self.bond.algorithm.value} "
                f"trains on {shape(plan.policy, plan.target, plan.target_role)}"
            )

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
        if batch.size != self.bond.prompts_per_step:
            raise ValueError(f"Batch has {batch.size} prompts, prompts_per_step is {self.bond.prompts_per_step}")
        self._check_shape(batch)
        if self.bond.algorithm in (Algorithm.REST, Algorithm.GKD):
            return self._distill_step(batch)
        algorithm, k = self.bond.algorithm, self._plan.policy
        sft = self._plan.target_role is not None  # a forward (SFT) half on the best of n target samples
        share = batch.slice(self.rank * self._share, (self.rank + 1) * self._share)
        mb = self.config.micro_batch_prompts
        micro = [share.slice(i, i + mb) for i in range(0, self._share, mb)]
        policy_packs = [self._pack([s.completion for s in m.policy_samples]) for m in micro]
        # One forward with grad holds the policy samples and (J-BOND, BOND) each prompt's best target sample.
        grad_packs = (
            [self._pack([s.completion for s in m.policy_samples] + _best_target(m, self.bond.n)) for m in micro]
            if sft
            else policy_packs
        )
        r_policy = torch.tensor(
            [[s.reward for s in g] for g in share.policy], dtype=torch.float32, device=self._device
        )  # [b, k]
        r_target = torch.tensor(
            [[a.reward for a in g] for g in share.target], dtype=torch.float32, device=self._device
        ).view(len(share.target), -1)  # [b, N]

        with torch.no_grad():  # once per step each, on the policy samples only
            with self._anchor.swapped_in():
                logp_anchor = torch.cat([self._logprobs(p) for p in policy_packs])
                # the target group's weight where the target moves (the anchor); a frozen reference is never stale
                w_target = self._target_weights(share) if self._plan.target_role is Role.ANCHOR else None
            logp_ref = self._reference_logprobs(policy_packs)
        stale_policy = torch.tensor(
            [s.completion.weights_version != self.policy_version for s in share.policy_samples], device=self._device
        )  # [b * k], the order of logp
        sampler_policy = torch.tensor(
            [s.completion.sum_logprob for s in share.policy_samples], dtype=torch.float64, device=self._device
        )
        w_policy: list[torch.Tensor] = []  # the objective's last evaluation's weights, for the statistics

        def objective(logp: torch.Tensor, logp_best: torch.Tensor | None) -> tuple[torch.Tensor, LossTerms]:
            # pi_now(y) / pi_sampler(y) for samples drawn by an older policy (pipelined mode); exactly 1 otherwise
            w_policy[:] = [
                importance_weights(logp, sampler_policy.to(logp.dtype), stale_policy, self.bond.max_importance_weight)
            ]
            if algorithm is Algorithm.JBOND:
                return jbond_loss(
                    logp,
                    logp_anchor,
                    logp_best,
                    r_policy[:, 0],
                    r_target,
                    self.bond.beta,
                    self.bond.gamma,
                    all_reduce_sum=rendezvous.all_reduce_sum,
                    policy_weight=w_policy[0],
                    anchor_weight=w_target,
                )
            if algorithm is Algorithm.BOND:  # Best-of-n of the anchor (iterated BOND) or of the frozen reference
                logp_target = logp_anchor if self.bond.iterated else logp_ref
                return bond_jeffreys_loss(
                    logp,
                    logp_target,
                    logp_best,
                    r_policy[:, 0],
                    r_target,
                    self.bond.n,
                    self.bond.beta,
                    all_reduce_sum=rendezvous.all_reduce_sum,
                    policy_weight=w_policy[0],
                    target_weight=w_target,
                )
            return rloo_kl_loss(
                logp.view(-1, k),
                logp_ref.view(-1, k),
                r_policy,
                self.bond.beta_rl,
                policy_weight=w_policy[0].view(-1, k),
            )

        def split(logps: torch.Tensor, prompts: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            return (logps[: prompts * k], logps[prompts * k :]) if sft else (logps, None)

        if len(micro) == 1:
            logp, logp_best = split(self._logprobs(grad_packs[0]), mb)
            loss, terms = objective(logp, logp_best)
            self.engine.backward(loss)
        else:
            # The coefficients read the values of log pi(y) (through the [sg] log-ratio and baselines) but not those
            # of log pi(y'_best): J-BOND's forward term is linear in it (a constant coefficient; tested). So the
            # no-grad pre-pass scores the policy samples only, and the statistics use the grad passes' values.
            with torch.no_grad():
                logp = torch.cat([self._logprobs(p) for p in policy_packs]).requires_grad_()
            logp_best = (
                torch.zeros(len(share.policy), dtype=logp.dtype, device=logp.device).requires_grad_() if sft else None
            )
            loss, _ = objective(logp, logp_best)
            leaves = [logp] + ([logp_best] if sft else [])
            coefficients = torch.autograd.grad(loss, leaves)  # d loss / d log pi per sequence
            best_values = []
            for i, p in enumerate(grad_packs):
                lp, lb = split(self._logprobs(p), mb)
                surrogate = (coefficients[0][i * mb * k : (i + 1) * mb * k] * lp).sum()
                if sft:
                    surrogate = surrogate + (coefficients[1][i * mb : (i + 1) * mb] * lb).sum()
                    best_values.append(lb.detach())
                self.engine.backward(surrogate)
            with torch.no_grad():
                _, terms = objective(logp.detach(), torch.cat(best_values) if sft else None)

        lr = self.bond.lr_at(self._step)
        grad_norm = self.engine.step(lr)
        ema_update_(self._anchor.tensors, [self.engine.local(p) for p in self._params], self._anchor_rate(self._step))
        self._step += 1

        logp = logp.detach()
        means = self._rank_means(
            loss=terms.loss,
            loss_fw=terms.loss_fw,
            loss_bw=terms.loss_bw,
            loss_reg=terms.loss_reg,
            frac_penalised=terms.frac_penalised,
            kl_ref=(logp - logp_ref).mean().item(),
            kl_anchor=(logp - logp_anchor).mean().item(),
            importance_weight_policy=w_policy[0].mean().item(),
            importance_weight_anchor=1.0 if w_target is None else w_target.mean().item(),
        )
        tokens = sum(len(s.completion.token_ids) for s in batch.policy_samples)
        if sft:
            tokens += sum(len(c.token_ids) for c in _best_target(batch, self.bond.n))
        policy, target = batch.policy_samples, batch.target_samples
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

    def _rank_means(self, **values: float) -> dict[str, float]:
        """Each statistic's mean over the ranks (equal shares: the mean of the rank means is the global mean)."""
        local = torch.tensor(list(values.values()), dtype=torch.float64, device=self._device)
        return dict(zip(values, (rendezvous.all_reduce_sum(local) / self.world_size).tolist(), strict=True))

    def _target_weights(self, share: Batch) -> torch.Tensor | None:
        """[B] truncated importance weight of each prompt's target group under the current anchor (bond.off_policy);
        None when every target sample was drawn by the current anchor (sync mode: no extra forward). Called with
        the anchor swapped in."""
        stale = torch.tensor(
            [[a.completion.weights_version != self.anchor_version for a in g] for g in share.target],
            device=self._device,
        )
        # a global decision: under ZeRO-3 the forward below is a collective every rank must enter
        if rendezvous.all_reduce_sum(stale.sum().double().unsqueeze(0)).item() == 0:
            return None
        flat = [a.completion for g in share.target for a in g]
        chunk = 2 * self.config.micro_batch_prompts
        logp_now = torch.cat([self._logprobs(self._pack(flat[i : i + chunk])) for i in range(0, len(flat), chunk)])
        sampler = torch.tensor([c.sum_logprob for c in flat], dtype=logp_now.dtype, device=self._device)
        shape = stale.shape
        return importance_weights(logp_now.view(shape), sampler.view(shape), stale, self.bond.max_importance_weight)

    def _distill_step(self, batch: Batch) -> StepStats:
        """rest: SFT, loss = -mean over the batch of log pi(y). gkd: the mean over the policy samples' completion
        tokens of JSD(gkd_beta) between the frozen teacher and pi. Both batches are policy samples alone, one per
        row (bond.sampling_plan; a rest batch's rows may share a prompt). Both losses are sums over sequences
        (tokens) divided by a global count, so each micro-batch back-propagates its own part of the sum and the
        ranks' averaged gradients are the global loss's. The anchor is kept as in every step."""
        t0 = time.perf_counter()
        gkd = self._teacher is not None
        share = batch.slice(self.rank * self._share, (self.rank + 1) * self._share)
        mb = self.config.micro_batch_prompts
        packs = [
            self._pack([s.completion for s in share.slice(i, i + mb).policy_samples]) for i in range(0, self._share, mb)
        ]
        with torch.no_grad():
            with self._anchor.swapped_in():
                logp_anchor = torch.cat([self._logprobs(p) for p in packs])
            logp_ref = self._reference_logprobs(packs)
        if gkd:  # the token mean over the global batch: every rank needs the global token count
            tokens = torch.tensor(
                [float(sum(p.completion_tokens for p in packs))], dtype=torch.float64, device=self._device
            )
            scale = self.world_size / max(rendezvous.all_reduce_sum(tokens).item(), 1.0)
        else:
            scale = 1.0 / self._share
        loss, logps = 0.0, []
        for p in packs:
            keep = p.logit_positions
            logits = self.engine.forward(p.input_ids, p.attention_mask, keep)  # [S, K, V]
            targets, mask = p.targets[:, keep], p.target_mask[:, keep]
            if gkd:
                part = masked_jsd_sum(logits, self._teacher.logits(p, keep), mask, self.bond.gkd_beta)
                logps.append(sequence_logprobs(logits.detach(), targets, mask))
            else:
                logp = sequence_logprobs(logits, targets, mask)
                part = -logp.sum()
                logps.append(logp.detach())
            if not part.requires_grad:  # no completion token in this micro-batch: a zero that still back-propagates
                part = logits.sum() * 0.0  # (every rank's backward is a collective under ZeRO)
            self.engine.backward(part * scale)
            loss += part.item() * scale

        lr = self.bond.lr_at(self._step)
        grad_norm = self.engine.step(lr)
        ema_update_(self._anchor.tensors, [self.engine.local(p) for p in self._params], self._anchor_rate(self._step))
        self._step += 1
        logp = torch.cat(logps)
        g = self._rank_means(
            loss=loss, kl_ref=(logp - logp_ref).mean().item(), kl_anchor=(logp - logp_anchor).mean().item()
        )
        policy = batch.policy_samples
        return StepStats(
            step=self._step,
            loss=g["loss"],
            loss_fw=0.0 if gkd else g["loss"],
            loss_bw=0.0,
            loss_reg=0.0,
            frac_penalised=0.0,
            kl_ref=g["kl_ref"],
            kl_anchor=g["kl_anchor"],
            reward_policy=sum(s.reward for s in policy) / len(policy),
            reward_anchor=math.nan,  # no target samples
            grad_norm=grad_norm,
            lr=lr,
            policy_version=self.policy_version,
            anchor_version=self.anchor_version,
            sample_policy_version=sum(s.completion.weights_version for s in policy) / len(policy),
            sample_anchor_version=math.nan,
            tokens=sum(len(s.completion.token_ids) for s in policy),
            seconds=time.perf_counter() - t0,
        )

    def logprobs(self, completions: Sequence[Completion], role: Role = Role.POLICY) -> torch.Tensor:
        """[len] log pi_role(y | x) of each completion, fp32 on CPU (for verifying weight sync).

        A collective under ZeRO-3: every rank calls it with the same number of completions.
        """
        chunk = 2 * self.config.micro_batch_prompts
        packs = [self._pack(completions[i : i + chunk]) for i in range(0, len(completions), chunk)]
        swap = {Role.POLICY: None, Role.ANCHOR: self._anchor, Role.REFERENCE: self._reference}[role]
        with torch.no_grad():
            if swap is None:
                out = [self._logprobs(p) for p in packs]
            else:
                with swap.swapped_in():
                    out = [self._logprobs(p) for p in packs]
        return torch.cat(out).float().cpu()

    def kl_to_reference(self, completions: Sequence[Completion]) -> KlEstimates:
        """Per-completion estimates of KL(pi || pi_ref) (bond.divergence) from both models' full logits, fp32 CPU.

        The policy's logits for every chunk first, then the reference swapped in once (a swap copies the
        whole local model). A collective under ZeRO-3, like `logprobs`.
        """
        chunk = 2 * self.config.micro_batch_prompts
        packs = [self._pack(completions[i : i + chunk]) for i in range(0, len(completions), chunk)]
        with torch.no_grad():
            policy = [self.engine.forward(p.input_ids, p.attention_mask, p.logit_positions) for p in packs]
            with self._reference.swapped_in():
                reference = [self.engine.forward(p.input_ids, p.attention_mask, p.logit_positions) for p in packs]
        parts = [
            kl_estimates(lp, lr, p.targets[:, p.logit_positions], p.target_mask[:, p.logit_positions])
            for p, lp, lr in zip(packs, policy, reference, strict=True)
        ]
        return KlEstimates(
            *(torch.cat([getattr(e, f.name) for e in parts]).float().cpu() for f in dataclasses.fields(KlEstimates))
        )

    # ---- weights out ---------------------------------------------------------------------------------------
    def weights(self, role: Role) -> Iterator[WeightUpdate]:
        """The role's weights in buckets of at most bucket_bytes, with the checkpoint's parameter names.

        Every rank must drain the iterator (each bucket is a collective under ZeRO-3); every rank gets the
        full tensors, on the learner's device, in the model dtype. version = the role's version (policy_version,
        anchor_version, 0 for the reference); the last bucket has last_bucket=True.
        """
        version = {Role.POLICY: self.policy_version, Role.ANCHOR: self.anchor_version, Role.REFERENCE: 0}[role]
        return self._export.updates(role, version)

    def _check_names(self) -> None:
        """Exported names must be the checkpoint's, or a vLLM worker cannot load them."""
        try:
            on_disk = set(safetensors_shards.file_of_each(self._model_dir))
        except FileNotFoundError:
            return  # not a safetensors checkpoint (e.g. .bin): nothing to compare against
        ours = set(self._names)
        if not ours <= on_disk:
            raise ValueError(
                f"parameter names differ from the checkpoint in {self._model_dir}: "
                f"not on disk {sorted(ours - on_disk)[:5]}, only on disk {sorted(on_disk - ours)[:5]}"
            )

    # ---- files ---------------------------------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict | None = None, sha256: bool = True) -> None:
        """Checkpoint (collective; learner/checkpoints.py): policy, anchor, optimizer, step, RNG, reference id and
        the caller's `extra` (JSON-serialisable, e.g. the data cursor). Atomic: see checkpoint_dir.py. The
        manifest records the layout (world_size, zero_stage, dtype) that restore requires, and sha256 digests
        unless turned off."""
        meta = {
            "step": self._step,
            "policy_version": self.policy_version,
            "anchor_version": self.anchor_version,
            **self.layout,
        }
        self._checkpoints.save(directory, meta, extra, sha256)

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

    # ---- internals -----------------------------------------------------------------------------------------
    def _pack(self, completions: Sequence[Completion]) -> Packed:
        return pack(completions, self._pad_id, self._device)

    def _logprobs(self, packed: Packed) -> torch.Tensor:
        return completion_logprobs(self.engine.forward, packed)

    def _reference_logprobs(self, packs: Sequence[Packed]) -> torch.Tensor:
        """[S] log pi_ref(y), no grad: from the bf16 copy (learner.reference_dtype) or the policy's swapped storage."""
        if self._reference_bf16 is None:
            with self._reference.swapped_in():
                return torch.cat([self._logprobs(p) for p in packs])
        model = self._reference_bf16

        def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            return model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep
            ).logits

        with torch.no_grad():
            return torch.cat([completion_logprobs(forward, p) for p in packs]).float()


def _enable_gradient_checkpointing(module: torch.nn.Module) -> None:
    """HF checkpointing, but only `self.training` of the decoder layers turned on: HF checkpoints a layer only
    in training mode, and the layers' submodules (attention, MLP: where dropout lives) stay in eval mode."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not module.supports_gradient_checkpointing:
        raise ValueError(f"learner.gradient_checkpointing: {type(module).__name__} does not support it")
    module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(f"learner.gradient_checkpointing: {type(module).__name__} has no checkpointable layers")
    module.eval()  # gradient_checkpointing_enable may have switched the module to train mode
    for layer in layers:
        layer.training = True


def _best_target(batch: Batch, n: int) -> list[Completion]:
    """The Best-of-n sample per prompt: the highest-reward of the first n target samples (ties to the first).
    J-BOND draws exactly n = 2; BOND draws k_quantile >= n, all for the quantiles, the first n for this."""
    groups = [g[:n] for g in batch.target]
    rewards = torch.tensor([[a.reward for a in g] for g in groups])
    return [g[int(j)].completion for g, j in zip(groups, best_index(rewards), strict=True)]
