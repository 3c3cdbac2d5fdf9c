"""The learner with learner.lora (peft adapters) on the tiny model: only adapters train, under every ZeRO stage;
the anchor is the base plus an EMA of the adapters; pushes, checkpoints and exports are adapter-sized or merged.

Batches and tolerances as in test_learner.py (same synthetic Completion records over the tiny vocabulary).
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from bond.config import BondConfig
from bond.lora import merged_weight
from bond.records import Role
from learner.checkpoint_dir import CheckpointError
from learner.config import LoraConfig
from tests.component.test_learner import (
    _hf_logprobs,
    assert_close_states,
    completion,
    learner,
    make_batch,
    run_two_ranks,
    state,
)

# lr large enough that one step moves B visibly from zero; eta 0.1 as in test_learner.
BOND = BondConfig(prompts_per_step=8, lr=1e-2, warmup_steps=0, gamma=0.5, eta=0.1, max_grad_norm=1.0)
LORA = LoraConfig(r=4, alpha=8.0, target_modules=("q_proj", "v_proj", "down_proj"))


def probe() -> list:
    return [completion(i, Role.POLICY, random.Random(200 + i), 0) for i in range(6)]


def base_weights(lrn) -> dict[str, torch.Tensor]:
    layout = lrn._lora
    with lrn.engine.gathered(layout.base_params):
        return {n: p.data.detach().clone() for n, p in zip(layout.base_names, layout.base_params, strict=True)}


def test_lora_target_that_is_not_a_linear_layer_is_refused(tiny_dir):
    with pytest.raises(ValueError, match=r"target_modules: \['qkv'\]"):
        learner(tiny_dir, zero_stage=0, lora=LoraConfig(target_modules=("q_proj", "qkv")))


def test_one_step_trains_only_the_adapters_under_every_zero_stage(tiny_dir):
    """ZeRO 1/2/3 with two micro-batches == plain torch; the base is untouched bit for bit; the pushed weights are
    the adapters only; the anchor is the literal EMA of the adapters; the reference is the base model itself."""
    full = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy", dtype=torch.float32)
    full_bytes = sum(p.numel() * 4 for p in full.parameters())
    runs = {}
    for stage, micro in ((0, 8), (1, 4), (2, 4), (3, 4)):
        lrn = learner(tiny_dir, bond=BOND, zero_stage=stage, micro_batch_prompts=micro, lora=LORA)
        before, adapters0 = base_weights(lrn), state(lrn)
        assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in adapters0)
        assert len(adapters0) == 2 * 3 * 2  # A and B, 3 target layers, 2 decoder layers
        assert all(not v.any() for k, v in adapters0.items() if "lora_B" in k)  # B = 0: starts as the base
        assert lrn.model_bytes == sum(v.numel() * 4 for v in adapters0.values()) < full_bytes / 20
        stats = lrn.step(make_batch(0))
        after = base_weights(lrn)
        assert all(torch.equal(before[k], after[k]) for k in before), f"zero{stage}: a base weight moved"
        policy = state(lrn)
        assert all(not torch.equal(policy[k], adapters0[k]) for k in policy if "lora_B" in k)
        expected = {k: (1 - BOND.eta) * adapters0[k] + BOND.eta * policy[k] for k in policy}
        anchor = state(lrn, Role.ANCHOR)
        assert max((anchor[k] - expected[k]).abs().max().item() for k in anchor) < 1e-7
        assert all(torch.equal(v, adapters0[k]) for k, v in state(lrn, Role.REFERENCE).items())
        ref = lrn.logprobs(probe(), Role.REFERENCE)
        runs[stage] = (stats, policy, lrn.logprobs(probe()), ref)
    torch.testing.assert_close(runs[0][3], _hf_logprobs(full, probe()), rtol=0, atol=1e-4)  # reference = base
    ref_stats, ref_policy, ref_logp, _ = runs.pop(0)
    assert (ref_logp - runs[1][3]).abs().max() > 1e-3  # the step moved the policy away from the reference
    for stage, (stats, policy, logp, _) in runs.items():
        for field in ("loss", "loss_fw", "loss_bw", "loss_reg", "kl_ref", "kl_anchor", "grad_norm"):
            assert getattr(stats, field) == pytest.approx(getattr(ref_stats, field), rel=1e-5, abs=1e-6), (stage, field)
        assert_close_states(policy, ref_policy, 10)  # lr 1e-2 here: 10x test_learner's per-step bound
        torch.testing.assert_close(logp, ref_logp, rtol=0, atol=1e-4)


def test_lora_resume_and_exports(tiny_dir, tmp_path):
    """Resume (adapters, their EMA, Adam state) equals the uninterrupted run; the checkpoint holds no base weights;
    the export is a merged HF model plus a peft adapter, both computing the learner's log-probabilities."""
    first = learner(tiny_dir, bond=BOND, zero_stage=2, micro_batch_prompts=4, lora=LORA)
    for s in range(2):
        first.step(make_batch(s))
    first.save(tmp_path / "ckpt", extra={"cursor": 16})
    want = first.step(make_batch(2))
    want_policy, want_anchor, want_logp = state(first), state(first, Role.ANCHOR), first.logprobs(probe())
    first.export_hf(tmp_path / "hf")
    del first

    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert manifest["lora"] == LORA.layout
    full_bytes = (tiny_dir / "policy" / "model.safetensors").stat().st_size
    engine_bytes = sum(n for f, n in manifest["sizes"].items() if f.startswith("engine/"))
    assert engine_bytes < full_bytes / 4, engine_bytes  # adapters + their Adam moments, no frozen base
    for sub in ("policy", "anchor"):
        assert {p.name for p in (tmp_path / "ckpt" / sub).iterdir()} == {
            "adapter_model.safetensors",
            "adapter_config.json",
        }
    second = learner(tiny_dir, bond=BOND, zero_stage=2, micro_batch_prompts=4, lora=LORA)
    assert second.restore(tmp_path / "ckpt") == {"cursor": 16}
    got = second.step(make_batch(2))
    assert (got.loss, got.grad_norm, got.step) == (want.loss, want.grad_norm, want.step)
    assert all(torch.equal(v, want_policy[k]) for k, v in state(second).items())
    assert all(torch.equal(v, want_anchor[k]) for k, v in state(second, Role.ANCHOR).items())

    full = learner(tiny_dir, bond=BOND, zero_stage=2, micro_batch_prompts=4)
    with pytest.raises(CheckpointError, match="lora=None"):  # a LoRA checkpoint never resumes a full run
        full.restore(tmp_path / "ckpt")

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    torch.testing.assert_close(_hf_logprobs(merged, probe()), want_logp, rtol=0, atol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy", dtype=torch.float32)
    with safe_open(str(tmp_path / "hf" / "adapter" / "adapter_model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(want_policy)
        layer = "model.layers.1.self_attn.q_proj"
        a, b = (f.get_tensor(f"base_model.model.{layer}.lora_{x}.weight") for x in "AB")
    torch.testing.assert_close(
        dict(merged.named_parameters())[f"{layer}.weight"].detach(),
        merged_weight(dict(base.named_parameters())[f"{layer}.weight"].detach(), a, b, LORA.scaling),
        rtol=0,
        atol=1e-6,
    )
    adapted = PeftModel.from_pretrained(base, tmp_path / "hf" / "adapter")
    torch.testing.assert_close(_hf_logprobs(adapted, probe()), want_logp, rtol=0, atol=1e-4)


def _zero3_rank(rank: int, tiny_dir, master_port: int, out_dir) -> None:
    """One of two ZeRO-3 ranks with LoRA: 2 steps, save, a third step, restore, the third step again."""
    torch.set_num_threads(1)
    lrn = learner(
        tiny_dir,
        bond=BOND,
        rank=rank,
        world_size=2,
        master_port=master_port,
        zero_stage=3,
        micro_batch_prompts=2,
        lora=LORA,
    )
    partitioned = all(p.ds_tensor.numel() < p.ds_numel for p in lrn._lora.adapter_params)
    stats = [lrn.step(make_batch(s)) for s in range(2)]
    lrn.save(out_dir / "ckpt")
    stats.append(lrn.step(make_batch(2)))
    policy = state(lrn)
    lrn.restore(out_dir / "ckpt")
    again = lrn.step(make_batch(2))
    again_policy, logp = state(lrn), lrn.logprobs(probe())
    if rank == 0:
        torch.save(
            {
                "partitioned": partitioned,
                "loss": [s.loss for s in stats],
                "policy": policy,
                "again_loss": again.loss,
                "again_policy": again_policy,
                "logp": logp,
            },
            out_dir / "rank0.pt",
        )


@pytest.mark.timeout(300)
def test_two_zero3_ranks_train_partitioned_adapters_like_one_rank(tiny_dir, tmp_path):
    """ZeRO-3 over 2 gloo ranks partitions the adapters too, trains like one plain-torch rank, and resumes exactly."""
    two = run_two_ranks(_zero3_rank, tiny_dir, tmp_path)
    assert two["partitioned"]
    one = learner(tiny_dir, bond=BOND, zero_stage=0, micro_batch_prompts=8, lora=LORA)
    stats = [one.step(make_batch(s)) for s in range(3)]
    assert two["loss"] == pytest.approx([s.loss for s in stats], rel=1e-4)
    assert_close_states(two["policy"], state(one), 30)
    torch.testing.assert_close(two["logp"], one.logprobs(probe()), rtol=0, atol=1e-3)
    assert two["again_loss"] == two["loss"][2]
    assert all(torch.equal(two["again_policy"][k], v) for k, v in two["policy"].items())
